"""Dataset builders for tallrec: raw recommendation logs -> TALLRec-style instruction records.

Later stages read records with :func:`load_split` / :func:`read_records` and draw few-shot subsets
with :func:`sample_records`; every record has ``instruction``, ``input``, ``output``, ``label`` and ``id``.
"""

from data_builders.dataset import load_split, read_records, write_tallrec_json
from data_builders.sampling import sample_records

__all__ = ["load_split", "read_records", "sample_records", "write_tallrec_json"]
