"""A model's P(yes) for records and every metric of them, as eval, calibration, audit and sweeps report them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_builders.structure import label_of, users_of
from tallrec_cli.core.errors import DataError
from tallrec_cli.core.metrics import BOOTSTRAP_RESAMPLES, compute_metrics
from tallrec_cli.core.reporting import reporter
from tallrec_cli.eval.calibration import Calibration, calibrated_scores, calibration_metrics
from tallrec_cli.eval.timing import PhaseTimes
from tallrec_cli.model.loading import InferenceModel, load_for_inference, model_identity
from tallrec_cli.model.scoring import ScoringSpec, resolve_scoring


def evaluate_records(inference, records: Sequence[dict], spec: ScoringSpec, resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = 0, on_batch: Callable[[int], None] | None = None,
                     calibration: Calibration | None = None,
                     phases: PhaseTimes | None = None) -> tuple[np.ndarray, dict]:
    """Score ``records`` (each with instruction, input, label; user_id enables GAUC) with ``inference``
    (a ``models.InferenceModel``) as ``spec`` says and compute every metric.

    Returns (P(yes) per record in input order, metrics dict with ``score_mode``, ``template``, ``labels``
    and ``scoring`` details).
    With ``calibration`` (see `tallrec calibrate`) the scores and metrics are the calibrated ones and
    ``uncalibrated`` keeps log-loss, Brier and ECE of the raw scores. ``phases`` gets the seconds spent
    rendering and tokenising (``tokenise``), in the model (``score``) and computing metrics (``metrics``).
    """
    if not records:
        raise DataError("no records to evaluate", "pass a non-empty test file")
    phases = phases or PhaseTimes()
    truth = [label_of(record, index) for index, record in enumerate(records)]
    with phases.phase("tokenise"):
        prompts = spec.render(records, inference.tokenizer)
    result = spec.score(inference.model, inference.tokenizer, prompts, on_batch)
    phases.add("tokenise", result.tokenize_seconds)
    phases.add("score", result.seconds - result.tokenize_seconds)
    with phases.phase("metrics"):
        return _metrics(truth, result, records, spec, resamples, seed, calibration)


def _metrics(truth: list[int], result, records: Sequence[dict], spec: ScoringSpec, resamples: int, seed: int,
             calibration: Calibration | None) -> tuple[np.ndarray, dict]:
    users = users_of(records)
    scores, calibration_note = calibrated_scores(calibration, result.scores, spec.mode)
    metrics = compute_metrics(truth, scores, users, resamples, seed)
    if users is None:
        metrics["notes"].append("GAUC not computed: the records carry no user_id")
    if calibration_note:
        metrics["notes"].append(calibration_note)
    if calibration is not None and scores is not result.scores:
        metrics.update(calibration=calibration.as_dict(), uncalibrated=calibration_metrics(truth, result.scores))
    metrics.update(**spec.describe(), scoring=result.describe())
    return scores, metrics


def model_scorer(inference, spec: ScoringSpec, calibration: Calibration | None = None,
                 on_start: Callable[[str, int], Callable[[int], None] | None] | None = None):
    """``score(records, name)`` -> the P(yes) eval would report for them (e.g. validation records to fit
    an ensemble on), with the same spec and calibration."""
    def score(records: Sequence[dict], name: str = "validation") -> np.ndarray:
        progress = on_start(name, len(records)) if on_start else None
        return evaluate_records(inference, records, spec, resamples=0, on_batch=progress, calibration=calibration)[0]
    return score


def model_description(inference) -> dict[str, Any]:
    return {"base_model": model_identity(inference.base), "adapter": inference.adapter,
            "dtype": inference.dtype, "quantization": inference.quantization}


def local_path(model: str | None) -> str | None:
    """``model`` when it is a local path (an input to protect), not a hub id or the embedded model's name."""
    return model if model and Path(model).exists() else None


def load_scoring_model(model: str | None, adapter: str | None, dtype: str = "auto", quantization: str | None = None,
                       trust_remote_code: bool = False, template: str | None = None,
                       label_words: Sequence[str] | None = None, merge_adapter: bool = True,
                       phases: PhaseTimes | None = None) -> InferenceModel:
    """The model, after the template and label words were checked against its tokenizer (no weights yet).
    ``phases`` gets the seconds spent importing the frameworks, loading, and folding the adapter in."""
    phases = phases or PhaseTimes()
    with reporter().status("loading the model"):
        with phases.phase("imports"):
            import_frameworks(adapter is not None)
        with phases.phase("model load"):
            inference = load_for_inference(model, adapter, dtype, quantization, trust_remote_code,
                                           merge_adapter=False,
                                           before_weights=lambda partial: resolve_scoring(partial, template,
                                                                                          label_words))
        if merge_adapter:
            with phases.phase("adapter fold"):
                fold_adapter(inference)
    return inference


def import_frameworks(adapter: bool) -> None:
    """Import torch and transformers (and peft for an adapter) up front, so that their seconds of import time
    show as a phase of their own instead of inside the model load."""
    # heavy: imported here on purpose (see the docstring), never at module level
    import torch  # noqa: F401
    import transformers  # noqa: F401

    if adapter:
        import peft  # noqa: F401


def fold_adapter(inference: InferenceModel) -> None:
    """Fold a LoRA adapter into the 16/32-bit base weights in place (a quantized base keeps it apart): scoring
    never needs it separate, and left apart its side path made a bf16 forward ~25-35% slower on CPU."""
    if inference.adapter is not None and inference.quantization == "none":
        inference.model = inference.model.merge_and_unload()
