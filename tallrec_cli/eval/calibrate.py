"""`tallrec calibrate RUN`: score the run's validation split, fit temperature and Platt scaling, keep the
chosen map in the run's manifest (the maps themselves: `tallrec_cli.eval.calibration`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_builders.dataset import is_training_file
from data_builders.structure import labels_of
from tallrec_cli.core.errors import ArtifactError, ConfigError
from tallrec_cli.core.files import sha256_file, staged_dir, write_json_atomic
from tallrec_cli.core.manifests import read_manifest, write_manifest
from tallrec_cli.eval.calibration import (
    METHODS,
    calibration_metrics,
    fit,
    require_both_classes,
    write_reliability_plot,
)
from tallrec_cli.eval.records import load_test_records
from tallrec_cli.eval.score import evaluate_records
from tallrec_cli.model.loading import load_for_inference
from tallrec_cli.model.scoring import resolve_scoring


def calibrate_run(run_dir: str | Path, method: str = "temperature", valid: str | Path | None = None,
                  score_mode: str = "pair", limit: int | None = None, batch_size: int | None = None,
                  dtype: str = "auto", on_start=None) -> dict[str, Any]:
    """Score the run's validation split, fit both maps, store ``method``'s in the run manifest.

    Returns the report (also RUN/calibration/calibration.json). Everything is checked before the model
    loads; the manifest is rewritten last, atomically.
    """
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}")
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir, "train-run")
    data = manifest.get("data", {})
    source = valid or data.get("valid") or data.get("train")
    if not source:
        raise ArtifactError(f"{run_dir}/manifest.json names no validation data", "pass --valid FILE")
    if valid and is_training_file(valid, data.get("train")):
        raise ConfigError(f"--valid {valid} is the training data of {run_dir}: a map fitted on records the model "
                          "learned from is fitted to scores it will not give new records",
                          "pass held-out records, or leave --valid out (the run's validation split)")
    records = load_test_records(source, "valid", limit)
    labels = labels_of(records)
    require_both_classes(labels)
    inference = load_for_inference(adapter=str(run_dir), dtype=dtype)
    progress = on_start("validation", len(records)) if on_start else None
    spec = resolve_scoring(inference, mode=score_mode, batch_size=batch_size)
    scores, _ = evaluate_records(inference, records, spec, resamples=0, on_batch=progress)
    path = Path(source)
    fitted_on = {"source": str(source), "split": "valid", "records": len(records), "limit": limit,
                 "sha256": sha256_file(path) if path.is_file() else data.get("valid_sha256")}
    fits = {name: fit(labels, scores, name, score_mode, fitted_on) for name in METHODS}
    report = {
        "selected": fits[method].as_dict(),
        "fits": {name: calibration.as_dict() for name, calibration in fits.items()},
        "validation": {"raw": calibration_metrics(labels, scores),
                       **{name: calibration_metrics(labels, c.apply(scores)) for name, c in fits.items()}},
    }
    with staged_dir(run_dir / "calibration", "calibration", overwrite=True) as staging:
        write_json_atomic(staging / "calibration.json", report)
        write_reliability_plot(staging / "reliability.png", labels,
                               {"raw": scores, **{name: c.apply(scores) for name, c in fits.items()}},
                               f"Reliability on validation ({run_dir.name})")
        write_manifest(staging, "calibration", {"run": str(run_dir.resolve()), "selected": report["selected"]})
    write_json_atomic(run_dir / "manifest.json", {**manifest, "calibration": report})
    return report
