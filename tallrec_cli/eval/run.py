"""`tallrec eval` and a sweep cell's evaluation: each test scored, compared with its references and blends,
and written to its folder. The one module that joins scoring with comparisons and ensembles."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_builders import load_split
from tallrec_cli.core.errors import ConfigError, DataError
from tallrec_cli.core.files import MANIFEST_NAME, check_output_folder, refuse_overlap, sha256_file
from tallrec_cli.core.manifests import (
    AdapterExportManifest,
    EvalManifest,
    TrainedAdapter,
    TrainRunManifest,
    load,
    split_sha256,
)
from tallrec_cli.core.metrics import BOOTSTRAP_RESAMPLES
from tallrec_cli.eval.baselines import BASELINES
from tallrec_cli.eval.calibration import Calibration, calibration_for
from tallrec_cli.eval.compare import (
    BASE_MODEL,
    Scored,
    check_references,
    compare,
    evaluate_baseline_tests,
    score_baselines,
    write_comparison,
)
from tallrec_cli.eval.ensemble import FittedBlend, check_ensemble_request, fit_blends, write_blends
from tallrec_cli.eval.records import TestSet, load_tests
from tallrec_cli.eval.results import eval_output_root, write_eval_folder
from tallrec_cli.eval.score import evaluate_records, load_scoring_model, local_path, model_description, model_scorer
from tallrec_cli.eval.timing import PhaseTimes, process_age
from tallrec_cli.model.scoring import ScoringSpec, resolve_scoring


def evaluate_tests(inference, tests: Sequence[TestSet], output_root: str | Path, spec: ScoringSpec, *,
                   resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0, plots: bool = False, overwrite: bool = False,
                   on_start: Callable[[str, int], Callable[[int], None] | None] | None = None,
                   references: Sequence[str] = (), train_records: Sequence[dict] | None = None,
                   calibration: Calibration | None = None, ensembles: Sequence = (),
                   phases: PhaseTimes | None = None) -> list[dict]:
    """Evaluate each test into ``output_root/<test-name>/``; returns one {test, source, folder, metrics} each
    (and ``comparison`` when ``references`` are given: baselines fitted on ``train_records``, or ``base``,
    the model with its adapter off; see ``tallrec_cli.eval.compare``).

    ``on_start(name, records)`` may return a per-batch progress callback. ``calibration`` applies to the
    model's scores (not to the zero-shot ``base`` reference). ``ensembles`` (``ensemble.FittedBlend``, fitted
    on validation) add ``ensembles``: each blend compared with the model and its baseline.

    Each test's metrics (and metrics.json) carry ``timing``: the seconds of ``phases`` (what came before, such as
    the model load) followed by this test's own phases (tokenise, score, metrics, references, blends, write).
    """
    model = model_description(inference)
    results = []
    for test in tests:
        progress = on_start(test.name, len(test.records)) if on_start else None
        timing = PhaseTimes(phases)
        scores, metrics = evaluate_records(inference, test.records, spec, resamples, seed, progress, calibration,
                                           timing)
        metrics = {"test": test.name, "source": str(test.path), **metrics}
        inputs = {**model, "test": {"name": test.name, "path": str(test.path.resolve()), "split": test.split,
                                    "limit": test.limit,
                                    "sha256": sha256_file(test.path) if test.path.is_file() else None},
                  "prompt": {"template": spec.template.name}, "labels": spec.labels.as_dict(), "score_mode": spec.mode,
                  "calibration": metrics.get("calibration")}
        comparison, model_label = None, "tuned model" if inference.adapter else "model"
        writers = []
        if references:
            with timing.phase("references"):
                scorers = [Scored("model", model_label, scores)]
                if BASE_MODEL in references:
                    progress = on_start(f"{test.name} without adapter", len(test.records)) if on_start else None
                    with inference.model.disable_adapter():
                        base_scores, _ = evaluate_records(inference, test.records, spec, 0, seed, progress)
                    scorers.append(Scored(BASE_MODEL, "zero-shot base", base_scores))
                scorers += score_baselines([name for name in references if name != BASE_MODEL], train_records,
                                           test.records, seed)
                comparison = compare(test.records, scorers[0], scorers[1:], resamples, seed)
            inputs["compare"] = list(references)
            writers.append(lambda staging, comparison=comparison, scorers=scorers, test=test:
                           write_comparison(staging, test.records, comparison, scorers))
        blends = []
        if ensembles:
            with timing.phase("blends"):
                blends = compare_blends(ensembles, test.records, scores, model_label, resamples, seed)
        if blends:
            inputs["ensembles"] = [blend["blend"] for blend in blends]
            writers.append(lambda staging, blends=blends, test=test: write_blends(staging, test.records, blends))

        def write_more(staging: Path, writers=writers) -> None:
            for write in writers:
                write(staging)
        folder = write_eval_folder(Path(output_root) / test.name, test.records, scores, metrics, inputs, plots,
                                   overwrite, write_more, timing)
        results.append({"test": test.name, "source": str(test.path), "folder": str(folder), "metrics": metrics,
                        "comparison": comparison, "ensembles": [blend["comparison"] for blend in blends]})
    return results


def compare_blends(blends: Sequence[FittedBlend], records: Sequence[dict], model_scores: np.ndarray,
                   model_label: str, resamples: int, seed: int) -> list[dict[str, Any]]:
    """Per blend: its fitted weights and a comparison of the blend (primary) with the model and the
    baseline alone on ``records`` (paired bootstrap, `tallrec_cli.eval.compare`)."""
    results = []
    for fitted in blends:
        blended, baseline_scores = fitted.score(records, model_scores)
        comparison = compare(records, Scored(fitted.blend.name, fitted.blend.label, blended),
                             [Scored("model", model_label, model_scores),
                              Scored(fitted.blend.baseline, BASELINES[fitted.blend.baseline].label, baseline_scores,
                                     fitted.baseline.info())], resamples, seed)
        results.append({"blend": fitted.blend.as_dict(), "comparison": comparison,
                        "scores": blended})
    return results


@dataclass
class EvalRequest:
    """What `tallrec eval` was asked: a model (``model`` and/or ``adapter``) or ``baselines``, on ``tests``."""
    tests: Sequence[str]
    model: str | None = None
    adapter: str | None = None
    output: str | None = None
    split: str = "test"
    score: str = "pair"
    template: str | None = None
    label_words: Sequence[str] | None = None
    batch_size: int | None = None
    prefix_cache: str = "auto"
    dtype: str = "auto"
    quantization: str | None = None
    limit: int | None = None
    bootstrap: int = BOOTSTRAP_RESAMPLES
    seed: int = 0
    plots: bool = False
    overwrite: bool = False
    trust_remote_code: bool = False
    baselines: Sequence[str] = ()
    references: Sequence[str] = ()
    train: str | None = None
    calibrated: bool = True
    ensembles: Sequence[str] = ()


@dataclass
class EvalOutcome:
    kind: str  # "model" or "baselines"
    results: list[dict]


def read_adapter_manifest(adapter: str | None) -> TrainedAdapter | None:
    """The run's or adapter export's manifest, read once, typed; None without an adapter folder."""
    if not adapter or not (Path(adapter) / MANIFEST_NAME).is_file():
        return None
    return load(adapter, (TrainRunManifest, AdapterExportManifest))


def training_records(train: str | None, run: TrainedAdapter | None,
                     run_dir: str | None = None) -> tuple[list[dict] | None, str | None]:
    """Training records for references that learn: ``train``, else the train split the run ``run_dir`` was
    trained on, found where the run recorded it and refused when its sha256 is no longer the recorded one."""
    if train is None and isinstance(run, TrainRunManifest) and run.data.train:
        train = _run_training_data(run, run_dir)
    return (load_split(train, "train"), train) if train else (None, None)


def _run_training_data(run: TrainRunManifest, run_dir: str | None) -> str:
    path, recorded = run.data.train, run.data.train_sha256
    hint = f"pass --train with the data run {run_dir} was trained on" + (
        f" (its train split has sha256 {recorded})" if recorded else "")
    if not Path(path).exists():
        where = "" if Path(path).is_absolute() else " (recorded relative to the folder `tallrec train` ran in)"
        raise DataError(f"the training data of run {run_dir}, {path}, does not exist here{where}", hint)
    if recorded and split_sha256(path, "train") != recorded:
        raise DataError(f"the training data of run {run_dir}, {path}, changed since the run was trained "
                        "(its sha256 is not the one the run recorded)", hint)
    return path


def run_eval(request: EvalRequest, on_start: Callable[[str, int], Callable[[int], None] | None] | None = None,
             on_baseline: Callable[[str], None] | None = None) -> EvalOutcome:
    """`tallrec eval`: every input checked before the model loads, then the model (or the baselines) on each
    test with its references and blends, one result folder per test. Each test's metrics carry ``timing``
    (`evaluate_tests`), starting with ``process start``: the process's age when the eval began (for the command
    line: interpreter start-up and its imports)."""
    phases, entered = PhaseTimes(), time.perf_counter()
    age = process_age()
    if age is not None:
        phases.add("process start", age)
    has_model = bool(request.model or request.adapter)
    if not has_model and not request.baselines:
        raise ConfigError("nothing to evaluate", "pass --model and/or --adapter, or --baseline NAME")
    if has_model and request.baselines:
        raise ConfigError("--baseline scores without a model; with a model use --compare",
                          f"e.g. --compare {','.join(request.baselines)}")
    run = read_adapter_manifest(request.adapter)
    root = eval_output_root(request.adapter, run, request.output)
    tests = load_tests(request.tests, request.split, request.limit)
    # the run's training split (thousands of records, hashed against the run) only when something learns from it
    learners = request.baselines or request.ensembles or [name for name in request.references if name != BASE_MODEL]
    train_records, train_source = (training_records(request.train, run, request.adapter) if learners or request.train
                                   else (None, None))
    problems = check_references(request.baselines or request.references, train_records is not None,
                                has_model=bool(request.adapter))
    problems += check_ensemble_request(request.ensembles, run, train_source)
    if problems:
        raise ConfigError("; ".join(problems))
    if request.baselines:
        for name in request.baselines:  # before any baseline is fitted
            for each in tests:
                check_output_folder(root / name / each.name, EvalManifest.KIND, request.overwrite)
        return EvalOutcome("baselines", evaluate_baseline_tests(
            request.baselines, train_records, train_source, tests, root, request.bootstrap, request.seed,
            request.plots, request.overwrite, on_baseline))
    for each in tests:  # before the model loads: an existing result or an input in the way ends it now
        refuse_overlap(root / each.name, [each.path, request.adapter, local_path(request.model)],
                       inside_ok=[request.adapter])
        check_output_folder(root / each.name, EvalManifest.KIND, request.overwrite)
    phases.add("inputs", time.perf_counter() - entered)  # reading and checking the tests, run and outputs
    # `--compare base` scores with the adapter switched off, so it must stay apart from the weights
    inference = load_scoring_model(request.model, request.adapter, request.dtype, request.quantization,
                                   request.trust_remote_code, request.template, request.label_words,
                                   merge_adapter=BASE_MODEL not in request.references, phases=phases)
    spec = resolve_scoring(inference, request.template, request.label_words, request.score, request.batch_size,
                           request.prefix_cache)
    stored = run.calibration if run is not None else calibration_for(request.model)
    calibration = Calibration.from_dict(stored["selected"]) if request.calibrated and stored else None
    blends = []
    if request.ensembles:
        with phases.phase("blend fit"):
            blends = fit_blends(request.ensembles, run, train_records, train_source,
                                model_scorer(inference, spec, calibration, on_start), request.seed, request.limit)
    return EvalOutcome("model", evaluate_tests(
        inference, tests, root, spec, resamples=request.bootstrap, seed=request.seed, plots=request.plots,
        overwrite=request.overwrite, on_start=on_start, references=request.references,
        train_records=train_records, calibration=calibration, ensembles=blends, phases=phases))
