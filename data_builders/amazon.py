"""Amazon reviews (McAuley 2014/2018): reviews and meta as JSON lines, optionally gzipped.

The 2014 meta files hold Python dict literals rather than JSON, hence the ``ast.literal_eval`` fallback.
"""

from __future__ import annotations

import ast
import gzip
import json
from pathlib import Path

import pandas as pd

from data_builders.interactions import Interactions, assemble
from data_builders.readers import Report, resolve_encoding
from tallrec_cli.core.errors import DataError

_PATTERNS = ("*.json", "*.json.gz", "*.jsonl", "*.jsonl.gz")
_HINT = "pass --path REVIEWS.json[.gz] and --items META.json[.gz], or a folder holding one reviews file and one meta_*"


def locate(path: Path | None, items_path: Path | None) -> tuple[Path, Path]:
    """Reviews and meta files: given directly, or found in a folder (meta files start with ``meta``)."""
    if path is None or not path.exists():
        raise DataError(f"Amazon reviews not found at {path}" if path else "the amazon source needs --path", _HINT)
    if path.is_file():
        if items_path is None:
            raise DataError("the amazon source needs the meta file for titles", _HINT)
        reviews = path
    else:
        found = sorted({file for pattern in _PATTERNS for file in path.glob(pattern)})
        candidates = [file for file in found if not file.name.startswith("meta")]
        if len(candidates) != 1:
            raise DataError(f"{path} must hold exactly one reviews file ({', '.join(_PATTERNS)}); "
                            f"found {', '.join(f.name for f in candidates) or 'none'}", _HINT)
        reviews = candidates[0]
        if items_path is None:
            metas = [file for file in found if file.name.startswith("meta")]
            if len(metas) != 1:
                raise DataError(f"{path} must hold exactly one meta* file; found "
                                f"{', '.join(f.name for f in metas) or 'none'}", _HINT)
            items_path = metas[0]
    if not items_path.is_file():
        raise DataError(f"Amazon meta file {items_path} does not exist", _HINT)
    return reviews, items_path


def _objects(path: Path, encoding: str, report: Report):
    """(line number, dict) for each line that is a JSON object or a Python dict literal."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding=encoding) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                try:
                    row = ast.literal_eval(line.strip())
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    report.bad_row(f"{path}:{number}", "neither JSON nor a Python dict literal", path)
                    continue
            if isinstance(row, dict):
                yield number, row
            else:
                report.bad_row(f"{path}:{number}", "expected one object per line", path)


def read(path: Path | None, items_path: Path | None, encoding: str, report: Report) -> Interactions:
    reviews, meta = locate(path, items_path)
    fields = {"reviewerID": str, "asin": str, "overall": float, "unixReviewTime": int}
    rows = []
    for number, row in _objects(reviews, resolve_encoding(reviews, encoding, report), report):
        missing = [name for name in fields if row.get(name) in (None, "")]
        if missing:
            report.bad_row(f"{reviews}:{number}", f"missing {', '.join(missing)}", reviews)
            continue
        try:
            rows.append([kind(row[name]) for name, kind in fields.items()])
        except (TypeError, ValueError):
            report.bad_row(f"{reviews}:{number}", "overall must be a number and unixReviewTime an integer", reviews)
    ratings = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    # many 2014 meta lines have no title; the ratings of those items are dropped (and noted) in assemble
    meta_rows = _objects(meta, resolve_encoding(meta, encoding, report), report)
    titles = {str(row["asin"]): str(row["title"]) for _, row in meta_rows if row.get("asin") and row.get("title")}
    return assemble(ratings, pd.Series(titles, dtype=object), [reviews, meta], report, meta.name)
