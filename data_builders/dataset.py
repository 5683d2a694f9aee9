"""Reading records for later stages: a dataset folder's split, or one JSONL / TALLRec JSON file."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from tallrec_cli.core.errors import DataError
from tallrec_cli.core.files import atomic_path, read_jsonl
from tallrec_cli.core.integrity import check_recorded_file

REQUIRED_KEYS = ("instruction", "input", "output")


def label_of(output: str) -> int | None:
    """1 for a "Yes." answer, 0 for "No.", None for anything else (case and final period ignored)."""
    word = output.strip().rstrip(".").strip().lower()
    return {"yes": 1, "no": 0}.get(word)


def normalize_records(rows: list, source: str | os.PathLike, id_prefix: str) -> list[dict]:
    """Check the three TALLRec parts; fill ``label`` from the output and ``id`` from the position."""
    if not rows:
        raise DataError(f"{source} holds no records", "pass a file with at least one record")
    records = []
    for index, row in enumerate(rows):
        where = f"{source}: record {index + 1}"  # counted from 1, like the lines of a file
        if not isinstance(row, dict):
            raise DataError(f"{where} is not an object", "each record must be a JSON object")
        missing = [key for key in REQUIRED_KEYS if not isinstance(row.get(key), str)]
        if missing:
            raise DataError(f"{where} lacks text field(s) {', '.join(missing)}",
                            "every record needs instruction, input and output strings")
        record = dict(row)
        if "label" not in record:
            label = label_of(record["output"])
            if label is None:
                raise DataError(f"{where}: output {record['output']!r} is neither a yes nor a no answer",
                                'outputs must be "Yes." or "No." (or add a "label" of 1/0)')
            record["label"] = label
        elif record["label"] not in (0, 1):
            raise DataError(f"{where}: label {record['label']!r} is not 0 or 1", "labels are 1 (liked) or 0")
        record.setdefault("id", f"{id_prefix}-{index}")
        records.append(record)
    return records


def read_records(path: str | os.PathLike) -> list[dict]:
    """Validated records of one ``.jsonl`` file or TALLRec ``.json`` array (with ``label`` and ``id``); a file
    of a dataset or sample folder must still have the size and sha256 its manifest recorded."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist", "pass a .jsonl or TALLRec .json file, or a dataset folder")
    check_recorded_file(path)
    if path.suffix == ".jsonl":
        rows = read_jsonl(path)
    else:
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})",
                            "a TALLRec file is one JSON array of records") from None
        except UnicodeDecodeError:
            raise DataError(f"{path} is not UTF-8 text", "save the file as UTF-8 JSON") from None
        if not isinstance(rows, list):
            raise DataError(f"{path} does not hold a JSON array", "a TALLRec file is one JSON array of records")
    return normalize_records(rows, path, path.stem)


def split_path(dir_or_file: str | os.PathLike, split: str) -> Path | None:
    """The file ``split`` is read from: a dataset folder's ``split.jsonl`` / ``split.json``, or the file
    itself; None when there is none."""
    path = Path(dir_or_file).expanduser()
    if not path.is_dir():
        return path if path.is_file() else None
    return next((path / name for name in (f"{split}.jsonl", f"{split}.json") if (path / name).is_file()), None)


def is_training_file(valid: str | os.PathLike | None, train: str | os.PathLike | None) -> bool:
    """Whether validation records would be read from the very file training reads (``valid``'s valid split
    is ``train``'s train split): selecting or calibrating on the records the model learned from."""
    found = [split_path(path, split) if path else None for path, split in ((valid, "valid"), (train, "train"))]
    return None not in found and found[0].resolve() == found[1].resolve()


def split_file(dataset_dir: str | os.PathLike, split: str) -> Path:
    found = split_path(dataset_dir, split) if Path(dataset_dir).is_dir() else None
    if found is None:
        raise DataError(f"{dataset_dir} has no {split}.jsonl or {split}.json",
                        "pass a folder made by `tallrec data build` or `tallrec data import`, or a single file")
    return found


def load_split(dataset_dir_or_file: str | os.PathLike, split: str) -> list[dict]:
    """Records of ``split`` from a dataset folder (JSONL or TALLRec JSON), or of a single file as given."""
    path = Path(dataset_dir_or_file)
    if path.is_dir():
        path = split_file(path, split)
    return read_records(path)


def write_tallrec_json(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """TALLRec's layout byte for byte: ``json.dump`` of the three parts, indent 4, ASCII, no final newline."""
    rows = [{"instruction": r["instruction"], "input": r["input"], "output": r["output"]} for r in records]
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        json.dump(rows, handle, indent=4)
    return len(rows)
