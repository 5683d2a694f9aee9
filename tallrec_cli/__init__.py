"""tallrec-cli: TALLRec-style parameter-efficient tuning of LLMs as recommenders."""

__version__ = "0.1.0"
