"""`tallrec predict`: P(yes) for new histories and candidates (CSV or JSON lines), ranked per user when asked."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from data_builders.templates import load_record_template
from tallrec_cli.core.errors import ConfigError, DataError
from tallrec_cli.core.files import atomic_path, read_jsonl, write_jsonl_atomic
from tallrec_cli.core.metrics import ranking_metrics
from tallrec_cli.eval.calibration import Calibration, calibrated_scores
from tallrec_cli.model.scoring import ScoringSpec

DEFAULT_RANK_KS = (1, 3, 5, 10)
DOMAINS = ("movie", "book")


def _history(value: Any, where: str) -> list[str]:
    """Titles from a JSON list, a JSON-list string, or a `|`-separated string."""
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return [str(item) for item in value]
    if not isinstance(value, str):
        raise DataError(f"{where}: expected a list of titles, got {value!r}", "use a JSON list or titles separated by |")
    text = value.strip()
    if text.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError:
            raise DataError(f"{where}: {text[:60]!r} is not a valid JSON list", "use a JSON list or titles separated by |") from None
        return [str(item) for item in items]
    return [part.strip() for part in text.split("|") if part.strip()]


def read_candidates(path: str | Path) -> list[dict]:
    """Rows of a .jsonl or .csv file: liked, disliked, candidate (optional user, label), or TALLRec records."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist", "pass a .jsonl or .csv file of candidates")
    if path.suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    elif path.suffix in (".jsonl", ".json"):
        rows = read_jsonl(path)
    else:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}", "use .jsonl or .csv")
    if not rows:
        raise DataError(f"{path} holds no rows", "pass a file with at least one candidate")
    for number, row in enumerate(rows, start=1):
        if not (row.get("candidate") or (row.get("instruction") and "input" in row)):
            raise DataError(f"{path}: row {number} has neither a candidate nor instruction/input",
                            "give each row liked, disliked and candidate columns (or TALLRec instruction/input)")
        if row.get("label") not in (None, ""):
            try:
                row["label"] = int(float(row["label"]))
            except ValueError:
                row["label"] = None
            if row["label"] not in (0, 1):
                raise DataError(f"{path}: row {number} has label {row.get('label')!r}", "labels are 1 (liked) or 0")
        else:
            row["label"] = None
    return rows


def candidate_prompt_parts(row: dict, domain: str = "movie", where: str = "row") -> dict[str, str]:
    """instruction/input for a row, worded like the data stage's TALLRec template of ``domain``."""
    if row.get("instruction"):
        return {"instruction": row["instruction"], "input": row.get("input") or ""}
    if domain not in DOMAINS:
        raise ConfigError(f"domain {domain!r} is not one of {', '.join(DOMAINS)}")
    wording = load_record_template(f"tallrec-{domain}")
    variant = wording.variants[0]
    join = wording.separator.join
    return {"instruction": variant["instruction"], "input": variant["input"].format(
        liked=join(wording.history_item.format(item=item) for item in _history(row.get("liked"), f"{where} liked")),
        disliked=join(wording.history_item.format(item=item)
                      for item in _history(row.get("disliked"), f"{where} disliked")),
        target=wording.target_item.format(item=str(row["candidate"]).strip()))}


def predict_rows(inference, rows: Sequence[dict], spec: ScoringSpec, *, domain: str = "movie", rank: bool = False,
                 ks: Sequence[int] = DEFAULT_RANK_KS,
                 on_batch: Callable[[int], None] | None = None,
                 calibration: Calibration | None = None, blend=None) -> tuple[list[dict], dict]:
    """P(yes) per row (``p_yes`` added, calibrated when ``calibration`` is given; ``rank`` within the user
    with ``rank=True``) and a summary (score mode, HR@K / NDCG@K when ranking rows that carry labels).
    With ``blend`` (an ``ensemble.FittedBlend``) ``p_yes`` is the ensemble's and ``p_yes_model`` the model's."""
    parts = [candidate_prompt_parts(row, domain, f"row {number}") for number, row in enumerate(rows, start=1)]
    result = spec.score(inference.model, inference.tokenizer, spec.render(parts, inference.tokenizer), on_batch)
    scores, calibration_note = calibrated_scores(calibration, result.scores, spec.mode)
    output = [{**row, "p_yes": float(score)} for row, score in zip(rows, scores)]
    if blend is not None:
        model_scores, (scores, _) = scores, blend.score(rows, scores)
        output = [{**row, "p_yes": float(score), "p_yes_model": float(model_score)}
                  for row, score, model_score in zip(rows, scores, model_scores)]
    summary: dict[str, Any] = {"rows": len(output), **spec.describe(), "scoring": result.describe(),
                               "calibration_note": calibration_note,
                               "ensemble": blend.blend.as_dict() if blend is not None else None}
    if rank:
        users = [row.get("user") for row in rows]
        if any(user in (None, "") for user in users):
            raise DataError("--rank needs a user column on every row", "add a user column naming whose candidates they are")
        _add_ranks(output, users)
        if all(row["label"] is not None for row in rows):
            summary["ranking"] = ranking_metrics(users, scores, [row["label"] for row in rows], ks)
        else:
            summary["ranking_note"] = "HR@K / NDCG@K need a label on every row"
    return output, summary


def _add_ranks(rows: list[dict], users: Sequence) -> None:
    by_user: dict[str, list[int]] = {}
    for index, user in enumerate(users):
        by_user.setdefault(str(user), []).append(index)
    for indices in by_user.values():
        for position, index in enumerate(sorted(indices, key=lambda i: -rows[i]["p_yes"]), start=1):
            rows[index]["rank"] = position


def write_predictions(path: str | Path, rows: Sequence[dict]) -> Path:
    """JSON lines, or CSV (lists written as JSON) when ``path`` ends in .csv."""
    path = Path(path)
    if path.suffix != ".csv":
        write_jsonl_atomic(path, rows)
        return path
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: json.dumps(value) if isinstance(value, (list, dict)) else value
                             for key, value in row.items()})
    return path
