"""`tallrec data import`: TALLRec's released JSON files -> a dataset folder (validated)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from data_builders.dataset import read_records, write_tallrec_json
from tallrec_cli.errors import ConfigError, DataError
from tallrec_cli.io import sha256_file, staged_dir, write_jsonl_atomic, write_manifest


def import_tallrec(paths: list[str | os.PathLike], output: str | os.PathLike, fmt: str = "jsonl",
                   overwrite: bool = False) -> dict[str, Any]:
    """Each file becomes split ``<file stem>`` (e.g. valid.json -> valid.jsonl); ids are ``<stem>-<index>``."""
    files = [Path(p) for p in paths]
    stems = [f.stem for f in files]
    repeated = sorted({s for s in stems if stems.count(s) > 1})
    if repeated:
        raise ConfigError(f"two input files would both become split '{repeated[0]}'",
                          "rename them so each file stem (train, valid, test) is used once")
    if fmt not in ("jsonl", "tallrec-json"):
        raise ConfigError(f"unknown format '{fmt}'", "use jsonl or tallrec-json")
    for path in files:
        if path.suffix != ".json":
            raise DataError(f"{path} is not a TALLRec .json file", "pass TALLRec's JSON arrays, e.g. valid.json")
    splits = {}
    with staged_dir(output, overwrite=overwrite) as staging:
        for path in files:
            records = read_records(path)
            name = f"{path.stem}.jsonl" if fmt == "jsonl" else f"{path.stem}.json"
            if fmt == "jsonl":
                write_jsonl_atomic(staging / name, records)
            else:
                write_tallrec_json(staging / name, records)
            positives = sum(r["label"] for r in records)
            splits[path.stem] = {"records": len(records), "positives": positives,
                                 "negatives": len(records) - positives,
                                 "positive_rate": round(positives / len(records), 6) if records else None}
        payload = {
            "source": "tallrec-json",
            "source_files": [{"path": str(p.resolve()), "sha256": sha256_file(p), "bytes": p.stat().st_size}
                             for p in files],
            "format": fmt,
            "files": {stem: f"{stem}.jsonl" if fmt == "jsonl" else f"{stem}.json" for stem in splits},
            "splits": splits,
            "records": sum(s["records"] for s in splits.values()),
        }
        write_manifest(staging, "dataset", payload)
    return payload
