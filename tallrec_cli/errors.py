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
    """A recipe, option or override is invalid."""


class DataError(TallrecError):
    """Input data is missing, malformed or unusable."""


class ModelError(TallrecError):
    """A model, tokenizer or adapter cannot be used as asked."""


class ArtifactError(TallrecError):
    """A run folder, export or manifest is missing, incomplete or tampered with."""


class ResourceError(TallrecError):
    """Not enough memory or disk for what was asked."""
