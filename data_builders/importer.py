"""`tallrec data import`: TALLRec's released JSON files -> a dataset folder (validated)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from data_builders.dataset import read_records, write_tallrec_json
from data_builders.structure import has_structure, parse_input
from data_builders.templates import Template, load_record_template, template_names
from tallrec_cli.core.errors import ConfigError, DataError
from tallrec_cli.core.files import refuse_overlap, sha256_file, staged_dir, write_jsonl_atomic
from tallrec_cli.core.integrity import RECORDED_FILES, record_files
from tallrec_cli.core.manifests import write_manifest


def import_tallrec(paths: list[str | os.PathLike], output: str | os.PathLike, fmt: str = "jsonl",
                   overwrite: bool = False) -> dict[str, Any]:
    """Each file becomes split ``<file stem>`` (e.g. valid.json -> valid.jsonl); ids are ``<stem>-<index>``."""
    files = [Path(p) for p in paths]
    refuse_overlap(output, files)
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
    splits, names = {}, {}
    # TALLRec's own templates first: paraphrase sets repeat their wording as variant 0
    templates = [load_record_template(name) for name in sorted(template_names(), key=lambda n: not n.startswith("tallrec-"))]
    with staged_dir(output, "dataset", overwrite=overwrite) as staging:
        for path in files:
            records = [_with_structure(record, templates) for record in read_records(path)]
            parsed = sum(has_structure(record) for record in records)
            name = names[path.stem] = f"{path.stem}.jsonl" if fmt == "jsonl" else f"{path.stem}.json"
            if fmt == "jsonl":
                write_jsonl_atomic(staging / name, records)
            else:
                write_tallrec_json(staging / name, records)
            positives = sum(r["label"] for r in records)
            splits[path.stem] = {"records": len(records), "positives": positives, "structured": parsed,
                                 "negatives": len(records) - positives,
                                 "positive_rate": round(positives / len(records), 6) if records else None}
        payload = {
            "source": "tallrec-json",
            "structure": "history, target_title and template parsed from each input at import and checked by "
                         "re-rendering (liked then disliked, as TALLRec printed them: time order lost); "
                         "records that did not re-render exactly carry none (counted per split as "
                         "records - structured)",
            "source_files": [{"path": str(p.resolve()), "sha256": sha256_file(p), "bytes": p.stat().st_size}
                             for p in files],
            "format": fmt,
            "files": names,
            RECORDED_FILES: record_files(staging, list(names.values())),
            "splits": splits,
            "records": sum(s["records"] for s in splits.values()),
        }
        write_manifest(staging, "dataset", payload)
    return payload


def _with_structure(record: dict, templates: list[Template]) -> dict:
    if has_structure(record):
        return record
    return {**record, **(parse_input(record, templates) or {})}
