"""Test sets as evaluation reads them: a dataset folder's split or a records file, checked before any model
work, and the folder name each one's results go to."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from data_builders import load_split
from tallrec_cli.core.errors import ConfigError, DataError

SPLIT_NAMES = ("train", "valid", "test")


def load_test_records(path: str | Path, split: str = "test", limit: int | None = None) -> list[dict]:
    """Validated records (label and id filled) of a dataset folder's split or a .jsonl / TALLRec .json file."""
    if limit is not None and limit < 1:  # [:0] would be none of them and [:-1] all but the last
        raise ConfigError(f"limit must be at least 1, got {limit}", "leave it out to use every record")
    records = load_split(path, split)
    if not records:
        raise DataError(f"{path} holds no records", "pass a non-empty test file")
    return records[:limit] if limit else records


def result_name(path: str | Path, split: str = "test") -> str:
    """Folder name for a test's results: ``ml-100k-test`` for a dataset folder or ``.../ml-100k/test.jsonl``,
    the file stem otherwise (``movie_test.jsonl`` -> ``movie_test``)."""
    path = Path(path)
    if path.is_dir():
        return f"{path.resolve().name}-{split}"
    if path.stem in SPLIT_NAMES:
        return f"{path.resolve().parent.name}-{path.stem}"
    return path.stem


@dataclass
class TestSet:
    name: str  # results folder name
    path: Path
    split: str
    limit: int | None
    records: list[dict]


def load_tests(tests: Sequence[str | Path], split: str = "test", limit: int | None = None) -> list[TestSet]:
    """Read and check every test before any model work, so a bad last file fails fast."""
    names = [result_name(path, split) for path in tests]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"several tests would be written to the same folder: {', '.join(duplicates)}",
                          "rename the files so their names differ")
    return [TestSet(name, Path(path), split, limit, load_test_records(path, split, limit))
            for name, path in zip(names, tests)]
