"""An evaluation's folder: metrics.json, predictions.jsonl, optional ROC and reliability plots, then its
manifest, written atomically; and where results go when no folder is named."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tallrec_cli.core.errors import ConfigError
from tallrec_cli.core.files import staged_dir, write_json_atomic, write_jsonl_atomic
from tallrec_cli.core.manifests import EvalManifest, TrainedAdapter, TrainRunManifest
from tallrec_cli.core.metrics import reliability_curve, safe_auc
from tallrec_cli.eval.timing import PhaseTimes


def eval_output_root(adapter: str | None, run: TrainedAdapter | None, output: str | None) -> Path:
    """``--output`` when given, else the run's ``eval/`` folder (only a train run has one; ``run`` is the
    adapter folder's manifest, read once by the caller)."""
    if output:
        return Path(output)
    if adapter and isinstance(run, TrainRunManifest):
        return Path(adapter) / "eval"
    raise ConfigError("no place to write the results", "pass --output DIR (or --adapter RUN_DIR to write into the run)")


def write_eval_folder(folder: Path, records: Sequence[dict], scores: np.ndarray, metrics: dict,
                      inputs: dict[str, Any], plots: bool = False, overwrite: bool = False,
                      write_more: Callable[[Path], None] | None = None, timing: PhaseTimes | None = None) -> Path:
    """predictions.jsonl, optional roc.png / reliability.png, whatever ``write_more(staging)`` writes,
    metrics.json, then manifest.json, atomically. With ``timing``, metrics (and metrics.json) get ``timing``:
    its phases and ``write``, the seconds spent writing everything before metrics.json."""
    with staged_dir(folder, EvalManifest.KIND, overwrite=overwrite) as staging:
        with (timing or PhaseTimes()).phase("write"):
            if write_more:
                write_more(staging)
            write_jsonl_atomic(staging / "predictions.jsonl", (
                {"id": record.get("id"), "user_id": record.get("user_id"), "item_id": record.get("item_id"),
                 "p_yes": float(score), "label": record.get("label")}
                for record, score in zip(records, scores)))
            if plots:
                write_plots(staging, [record["label"] for record in records], scores,
                            f"{folder.name} ({metrics['score_mode']})")
        if timing is not None:
            metrics["timing"] = timing.as_dict()
        write_json_atomic(staging / "metrics.json", metrics)
        EvalManifest.new(**inputs, metrics={key: metrics[key] for key in (
            "score_mode", "records", "positives", "auc", "auc_ci95", "gauc", "gauc_ci95", "users", "gauc_users",
            "log_loss", "accuracy", "brier", "ece")}, files=sorted(path.name for path in staging.iterdir())).write(staging)
    return folder


def write_plots(folder: Path, labels: Sequence[int], scores: Sequence[float], title: str) -> list[Path]:
    """ROC curve (when both classes are present) and reliability diagram as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    written = []
    auc = safe_auc(labels, scores)
    if auc is not None:
        fpr, tpr, _ = roc_curve(labels, scores)
        figure, axis = plt.subplots(figsize=(4.5, 4.5))
        axis.plot(fpr, tpr, label=f"AUC {auc:.4f}")
        axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
        axis.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC: {title}")
        axis.legend(loc="lower right")
        written.append(folder / "roc.png")
        figure.savefig(written[-1], dpi=120, bbox_inches="tight")
        plt.close(figure)
    mean_score, positive_rate, counts = reliability_curve(labels, scores)
    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    axis.scatter(mean_score, positive_rate, s=12 + 60 * counts / counts.max())
    axis.plot(mean_score, positive_rate)
    axis.set(xlabel="mean P(yes) in bin", ylabel="share of positives", xlim=(0, 1), ylim=(0, 1),
             title=f"Reliability: {title}")
    written.append(folder / "reliability.png")
    figure.savefig(written[-1], dpi=120, bbox_inches="tight")
    plt.close(figure)
    return written
