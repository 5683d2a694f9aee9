"""Domain exceptions: each carries a one-line message and a suggested fix.

The CLI maps every `TallrecError` to ``error: <message>`` + ``hint: <hint>`` and exit code 2;
anything else is a bug and exits 1 (traceback only with TALLREC_DEBUG=1).
"""

from __future__ import annotations


class TallrecError(Exception):
    """Base class for errors a user can act on."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


class ConfigError(TallrecError):
    """A recipe, option or override is invalid.

    ``problems`` (one line each) are the data. Given a list, the message is rendered from it: ``heading``
    (e.g. "recipe.yaml has 2 problems", see `problem_count`) and one bullet per problem. Callers that
    regroup problems (a sweep naming the cells each one affects) read the list, never the text.
    """

    def __init__(self, message: str | None = None, hint: str | None = None, problems: list[str] | None = None,
                 heading: str | None = None):
        self.problems = list(problems) if problems else [message or ""]
        if problems:
            bullet = "\n  - "
            message = f"{heading or problem_count(self.problems)}:{bullet}{bullet.join(self.problems)}"
        super().__init__(message or "", hint)


def problem_count(problems: list) -> str:
    """``1 problem`` / ``3 problems``."""
    return f"{len(problems)} problem{'s' * (len(problems) > 1)}"


class DataError(TallrecError):
    """Input data is missing, malformed or unusable."""


class ModelError(TallrecError):
    """A model, tokenizer or adapter cannot be used as asked."""


class ArtifactError(TallrecError):
    """A run folder, export or manifest is missing, incomplete or tampered with."""


class ResourceError(TallrecError):
    """Not enough memory or disk for what was asked."""


class TrainingInterrupted(TallrecError):
    """Ctrl-C stopped a run after ``step`` optimizer steps (a checkpoint was saved, so it can resume).

    Callers tell an interruption from a failure by this type and read ``step``, never the message. It exits
    130, the shell's code for SIGINT, like a Ctrl-C anywhere else.
    """

    exit_code = 130

    def __init__(self, step: int, message: str, hint: str | None = None):
        super().__init__(message, hint)
        self.step = step
