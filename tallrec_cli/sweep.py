"""Few-shot sweeps: TALLRec's Table 1 (AUC at 16 / 64 / 256 samples per domain) as one resumable run.

A sweep is a grid of cells: (domain, extra-axis values, shots, seed). A trained cell is a normal train
run folder (SWEEP/cells/<id>/, manifest written last by `tallrec_cli.train`) plus its evaluations
(RUN/eval/<test>/ written by `tallrec_cli.evaluate`) and ``sweep-eval.json``, the cell's summary,
written last. A zero-shot cell (shots 0) evaluates the base model and holds a ``zero-shot-cell``
manifest instead of a training run. Classic baselines (`tallrec_cli.baselines`) are fitted on the same
few-shot samples and stored in SWEEP/baselines/.

Folder layout::

    SWEEP/sweep.yaml       resolved sweep config + fingerprint (recipe and test hashes) + its hash
    SWEEP/index.json       every cell with its status (pending/running/done/failed/interrupted), atomic
    SWEEP/cells/<id>/      train run folder + eval/ + sweep-eval.json
    SWEEP/baselines/*.json baseline AUCs per (domain, train data, shots, seed)
    SWEEP/logs/<id>.log    output of cells run as subprocesses (--devices); <id>.failure.json why one failed
    SWEEP/results.json, results.csv, sweep.png   rebuilt from the folders above alone

Resume: a cell is finished when its manifest holds the cell's training config and ``sweep-eval.json``
the cell's evaluation fingerprint; a trained cell without ``sweep-eval.json`` is only re-evaluated; a
folder without a manifest is deleted and redone.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import yaml

from tallrec_cli.config import deep_merge, from_dict, option, parse_overrides, to_dict
from tallrec_cli.errors import ArtifactError, ConfigError, ResourceError, TallrecError, TrainingInterrupted, problem_count
from tallrec_cli.io import MANIFEST_NAME, is_disk_full, sha256_file, write_json_atomic, write_text_atomic
from tallrec_cli.manifests import PromptRecord, TrainRunManifest, ZeroShotCellManifest
from tallrec_cli.manifests import load as load_manifest

SPEC_NAME = "sweep.yaml"
INDEX_NAME = "index.json"
CELL_RESULT_NAME = "sweep-eval.json"
RESULT_FILES = ("results.json", "results.csv", "sweep.png")
# Axis keys under these prefixes change what a zero-shot evaluation sees; other axes (lora.*, data.*,
# most of training.*) share one zero-shot cell.
ZERO_SHOT_KEYS = ("recipe", "model", "prompt", "labels", "training.score_mode")
AXIS_ALIASES = {"model": "model.name"}


# ------------------------------------------------------------------------------------------ spec

@dataclasses.dataclass
class SweepSpec:
    recipe: str | None = option(None, help="Train recipe YAML every cell starts from (null = the train defaults).")
    shots: list[int] = option([16, 64, 256], help="Training-set sizes; 0 adds a zero-shot column (the base model untuned).")
    seeds: list[int] = option([0, 1, 2], help="Seeds per shots value: each picks the sample (data.sample_seed) and the training seed.")
    tests: dict = option({}, help="Test files or dataset folders, as {label: path}.")
    axes: dict = option({}, help="Extra grid axes {key: [values]}: any train config key, `recipe` or `model`.")
    overrides: dict = option({}, help="Train config overrides applied to every cell (nested or dotted keys).")
    domains: dict = option({}, help="Optional {domain: {overrides: {...}, tests: {label: path}}}: one grid per domain.")
    test_limit: int | None = option(None, help="Evaluate only the first N records of each test (a fixed slice).")
    baselines: bool = option(True, help="Fit popularity and logistic-regression baselines on every few-shot sample.")

    def check(self) -> list[str]:
        problems = []
        for key, values in (("shots", self.shots), ("seeds", self.seeds)):
            if not values:
                problems.append(f"{key}: give at least one value")
            repeated = sorted({value for value in values if values.count(value) > 1})
            if repeated:
                problems.append(f"{key}: {', '.join(map(str, repeated))} repeated; each value may appear once")
        problems.extend(f"shots: {value} is negative" for value in self.shots if value < 0)
        if self.test_limit is not None and self.test_limit < 1:
            problems.append(f"test_limit: must be >= 1 or null, got {self.test_limit}")
        for key, values in self.axes.items():
            if not isinstance(values, list) or not values:
                problems.append(f"axes.{key}: expected a non-empty list of values, got {values!r}")
            elif len({json.dumps(value, sort_keys=True) for value in values}) != len(values):
                problems.append(f"axes.{key}: values repeated")
            if key in ("data.shots", "data.sample_seed", "training.seed", "output.dir"):
                problems.append(f"axes.{key}: set by the sweep itself (use shots / seeds)")
        for name, domain in self.domains.items():
            if not isinstance(domain, dict) or set(domain) - {"overrides", "tests"}:
                problems.append(f"domains.{name}: expected a mapping with overrides and/or tests")
        for name, tests in self.tests_by_domain().items():
            where = f"domains.{name}.tests" if name else "tests"
            if not tests:
                problems.append(f"{where}: give at least one test file (--test FILE)")
            problems.extend(f"{where}.{label}: {path} does not exist" for label, path in tests.items()
                            if not Path(path).exists())
            folders = [default_test_label(path) for path in tests.values()]
            clashes = sorted({name for name in folders if folders.count(name) > 1})
            if clashes:  # each cell writes RUN/eval/<name>/ per test
                problems.append(f"{where}: several tests would share the results folder {', '.join(clashes)}; rename the files")
        return problems

    def tests_by_domain(self) -> dict[str | None, dict[str, str]]:
        if not self.domains:
            return {None: dict(self.tests)}
        return {name: dict((domain or {}).get("tests") or self.tests) for name, domain in self.domains.items()}


def default_test_label(path: str) -> str:
    """The table's name for a test: `tallrec eval`'s result name (``ml-100k-test``, ``movie_test``)."""
    from tallrec_cli.evaluate import result_name

    return result_name(path)


def parse_tests(values: Sequence[str]) -> dict[str, str]:
    """``["movies=a/test.jsonl", "b/test.json"]`` -> {label: path}; unlabelled paths are named by default_test_label."""
    tests: dict[str, str] = {}
    for value in values:
        label, _, path = value.partition("=") if "=" in value and "/" not in value.split("=", 1)[0] else ("", "", value)
        label = label or default_test_label(path)
        if label in tests:
            raise ConfigError(f"two tests are both called {label!r}", "name them: --test movies=PATH --test books=PATH")
        tests[label] = path
    return tests


def parse_axes(values: Sequence[str]) -> dict[str, list]:
    """``["lora.r=8,16"]`` -> {"lora.r": [8, 16]} (values parsed like --set values)."""
    axes = {}
    for value in values:
        key, sep, raw = value.partition("=")
        if not sep or not key.strip() or not raw.strip():
            raise ConfigError(f"axis {value!r} is not of the form key=v1,v2", "e.g. --axis lora.r=8,16")
        key = key.strip()
        axes[key] = [_leaf(parse_overrides([f"{key}={part.strip()}"])) for part in raw.split(",") if part.strip()]
    return axes


def _leaf(nested: Any) -> Any:
    while isinstance(nested, dict):
        (nested,) = nested.values()
    return nested


def _nest(flat_or_nested: dict) -> dict:
    """Dotted keys to nested dicts, merged with any nested parts."""
    nested: dict = {}
    for key, value in flat_or_nested.items():
        value = _nest(value) if isinstance(value, dict) else value
        for part in reversed(str(key).split(".")[1:]):
            value = {part: value}
        nested = deep_merge(nested, {str(key).split(".")[0]: value})
    return nested


def load_sweep_spec(source: str | Path | None, shots: Sequence[int] | None = None, seeds: Sequence[int] | None = None,
                    tests: Sequence[str] = (), axes: Sequence[str] = (), overrides: Sequence[str] = (),
                    test_limit: int | None = None, baselines: bool | None = None) -> SweepSpec:
    """A sweep YAML (top-level ``recipe`` key) or a train recipe, plus command-line values (which win)."""
    from tallrec_cli.config import read_yaml

    data: dict[str, Any] = {}
    if source is not None:
        loaded = read_yaml(source)
        data = loaded if "recipe" in loaded else {"recipe": str(source)}
    if isinstance(data.get("tests"), list):
        data["tests"] = parse_tests([str(item) for item in data["tests"]])
    for name, domain in (data.get("domains") or {}).items():
        if isinstance(domain, dict) and isinstance(domain.get("tests"), list):
            domain["tests"] = parse_tests([str(item) for item in domain["tests"]])
    if shots is not None:
        data["shots"] = list(shots)
    if seeds is not None:
        data["seeds"] = list(seeds)
    if tests:
        data["tests"] = parse_tests(tests)
    if axes:
        data["axes"] = {**(data.get("axes") or {}), **parse_axes(axes)}
    if overrides:
        data["overrides"] = deep_merge(_nest(data.get("overrides") or {}), parse_overrides(list(overrides)))
    if test_limit is not None:
        data["test_limit"] = test_limit
    if baselines is not None:
        data["baselines"] = baselines
    return from_dict(SweepSpec, data, source=str(source or "sweep"))


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def resolve_spec(spec: SweepSpec) -> SweepSpec:
    """The same spec with absolute paths, so cells and resumes work from any directory."""
    def absolute_tests(tests: dict) -> dict:
        return {label: _absolute(path) for label, path in tests.items()}

    axes = dict(spec.axes)
    if "recipe" in axes:
        axes["recipe"] = [_absolute(value) for value in axes["recipe"]]
    domains = {}
    for name, domain in spec.domains.items():
        domain = dict(domain or {})
        if domain.get("tests"):
            domain["tests"] = absolute_tests(domain["tests"])
        domains[name] = domain
    return dataclasses.replace(spec, recipe=_absolute(spec.recipe), tests=absolute_tests(spec.tests), axes=axes,
                               overrides=_nest(spec.overrides), domains=domains)


def _fingerprint(spec: SweepSpec) -> dict[str, str]:
    """sha256 of every recipe and test file the sweep reads: editing one makes it a different sweep."""
    files = [spec.recipe, *spec.axes.get("recipe", [])]
    files += [path for tests in spec.tests_by_domain().values() for path in tests.values()]
    return {path: _file_sha256(path) for path in sorted(set(filter(None, files))) if Path(path).is_file()}


def _file_sha256(path: str) -> str:
    stat = Path(path).stat()
    return _cached_sha256(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _cached_sha256(path: str, mtime_ns: int, size: int) -> str:
    # keyed on mtime and size too: every cell's fingerprint hashes the test files, once per process
    return sha256_file(path)


def _json_hash(payload: Any) -> str:
    """sha256 of a JSON payload in canonical form (sorted keys), for fingerprints of configs and inputs."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def spec_hash(spec: SweepSpec) -> str:
    payload = {"spec": to_dict(spec), "files": _fingerprint(spec)}
    return _json_hash(payload)


# ------------------------------------------------------------------------------------------ cells

@dataclasses.dataclass
class Cell:
    """One grid point. ``config`` is the resolved train config as a plain dict (output.dir excluded)."""
    id: str
    methods: list[str]  # table rows it reports for (a zero-shot cell can serve several)
    domain: str | None
    shots: int
    seed: int | None
    axes: dict[str, Any]
    recipe: str | None
    overrides: dict
    tests: dict[str, str]
    test_limit: int | None
    config: dict = dataclasses.field(default_factory=dict)

    @property
    def zero_shot(self) -> bool:
        return self.shots == 0

    def eval_fingerprint(self) -> str:
        """What the cell's evaluation depends on: its config, the tests (paths and content), the slice."""
        tests = {label: [path, _file_sha256(path) if Path(path).is_file() else None] for label, path in self.tests.items()}
        payload = {"config": self.config, "tests": tests, "test_limit": self.test_limit}
        return _json_hash(payload)

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "methods": self.methods, "domain": self.domain, "shots": self.shots, "seed": self.seed,
                "axes": self.axes}


def _slug(value: Any) -> str:
    text = Path(value).stem if isinstance(value, str) and ("/" in value or value.endswith((".yaml", ".yml"))) else str(value)
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x"


def _axis_label(key: str, value: Any) -> str:
    return f"{key}={_slug(value)}"


def _method_label(model_name: str, axes: dict[str, Any]) -> str:
    extra = [_axis_label(key, value) for key, value in axes.items() if AXIS_ALIASES.get(key, key) != "model.name"]
    return " ".join([f"LoRA {_slug(model_name)}", *extra])


def _zero_shot_axes(axes: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in axes.items()
            if any(AXIS_ALIASES.get(key, key) == prefix or AXIS_ALIASES.get(key, key).startswith(prefix + ".")
                   for prefix in ZERO_SHOT_KEYS)}


def _cell_id(domain: str | None, axes: dict[str, Any], tail: str) -> str:
    parts = [_slug(domain)] if domain else []
    parts += [_axis_label(key, value) for key, value in axes.items()]
    cell_id = "_".join([*parts, tail])
    if len(cell_id) > 120:  # keep folder names usable; the hash keeps them distinct
        digest = hashlib.sha256(cell_id.encode()).hexdigest()[:10]
        cell_id = f"{cell_id[:100]}-{digest}"
    return cell_id


def _cell_overrides(spec: SweepSpec, domain: str | None, axes: dict[str, Any]) -> dict:
    overrides = _nest(spec.overrides)
    if domain is not None:
        overrides = deep_merge(overrides, _nest((spec.domains[domain] or {}).get("overrides") or {}))
    for key, value in axes.items():
        if key != "recipe":
            overrides = deep_merge(overrides, _nest({AXIS_ALIASES.get(key, key): value}))
    return overrides


def expand_grid(spec: SweepSpec) -> list[Cell]:
    """Every cell of the sweep, zero-shot cells first, then by shots and seed (small, cheap cells first)."""
    from tallrec_cli.config import read_yaml

    cells: list[Cell] = []
    zero_shot: dict[str, Cell] = {}
    keys = list(spec.axes)
    for domain, tests in spec.tests_by_domain().items():
        for combo in itertools.product(*(spec.axes[key] for key in keys)):
            axes = dict(zip(keys, combo))
            recipe = axes.get("recipe", spec.recipe)
            overrides = _cell_overrides(spec, domain, axes)
            merged = deep_merge(read_yaml(recipe) if recipe and Path(recipe).is_file() else {}, overrides)
            method = _method_label((merged.get("model") or {}).get("name", "smollm2-135m"), axes)
            common = dict(domain=domain, recipe=recipe, overrides=overrides, tests=tests, test_limit=spec.test_limit)
            if 0 in spec.shots:
                reduced = _zero_shot_axes(axes)
                cell_id = _cell_id(domain, reduced, "zero-shot")
                if cell_id in zero_shot:
                    zero_shot[cell_id].methods.append(method)
                else:
                    zero_shot[cell_id] = Cell(cell_id, [method], shots=0, seed=None, axes=reduced, **common)
            for shots in sorted(value for value in spec.shots if value > 0):
                for seed in spec.seeds:
                    trained = deep_merge(overrides, {"data": {"shots": shots, "sample_seed": seed},
                                                     "training": {"seed": seed}})
                    cells.append(Cell(_cell_id(domain, axes, f"k{shots}-s{seed}"), [method], shots=shots, seed=seed,
                                      axes=axes, **{**common, "overrides": trained}))
    order = {shots: rank for rank, shots in enumerate(sorted(spec.shots))}
    cells.sort(key=lambda cell: order[cell.shots])  # stable: domains and axes keep their order per shots
    return list(zero_shot.values()) + cells


def resolve_cells(cells: list[Cell]) -> dict[str, Any]:
    """Load and check every cell's train config up front (TrainConfig per cell); fill ``cell.config``.

    Returns {cell id: TrainConfig}. Raises one ConfigError listing every problem of every cell, and
    shots larger than the training pool, before any cell starts.
    """
    from tallrec_cli.train import load_train_config, preflight

    problems: dict[str, list[str]] = defaultdict(list)  # problem -> cell ids
    configs = {}
    for cell in cells:
        try:
            config = load_train_config(cell.recipe, cell.overrides)
            preflight(config, check_output=False)
        except TallrecError as exc:
            for problem in exc.problems if isinstance(exc, ConfigError) else [exc.message]:
                problems[problem].append(cell.id)
            continue
        configs[cell.id] = config
        cell.config = _comparable_config(to_dict(config), cell.zero_shot)
    pools: dict[tuple, int] = {}
    for cell in cells:
        config = configs.get(cell.id)
        if config is None or cell.zero_shot:
            continue
        pool = _pool_size(config.data.train, pools)
        if cell.shots > pool:
            problems[f"shots {cell.shots}: the training pool {config.data.train} holds only {pool} records"].append(cell.id)
    if problems:
        total = len(cells)
        lines = [f"{problem}  [{'all cells' if len(ids) == total else ', '.join(ids)}]"
                 for problem, ids in problems.items()]
        raise ConfigError(hint="fix the recipe, --set / --axis values or --shots; every cell is checked before the "
                               "first starts", problems=lines,
                          heading=f"the sweep has {problem_count(lines)} (nothing was run)")
    return configs


def _pool_size(train: str, cache: dict) -> int:
    from data_builders import load_split

    if train not in cache:
        cache[train] = len(load_split(train, "train"))
    return cache[train]


def _comparable_config(config: dict, zero_shot: bool) -> dict:
    """The config as JSON sees it, without output.* (where a cell lives is not what it computes); for a
    zero-shot cell only what scoring the base model reads, so changing e.g. epochs keeps it."""
    plain = json.loads(json.dumps(config, default=str))
    plain.pop("output", None)
    if zero_shot:
        training = plain.get("training", {})
        plain = {key: plain.get(key) for key in ("model", "prompt", "labels")}
        plain["training"] = {key: training.get(key) for key in ("score_mode", "eval_batch_size")}
    return plain


# --------------------------------------------------------------------------------------- running

class CellRunner(Protocol):
    """Does one cell's work; injectable so tests (and other backends) need not train."""

    def train(self, cell: Cell, cell_dir: Path, config: Any) -> None:
        """Leave a finished run (manifest.json last) in ``cell_dir``; zero-shot cells write a zero-shot manifest."""

    def evaluate(self, cell: Cell, cell_dir: Path, config: Any) -> dict[str, dict]:
        """Metrics per test label (at least ``auc`` and ``records``)."""


def cell_state(cell: Cell, cell_dir: Path) -> str:
    """``done``, ``evaluate`` (trained with this config, evaluation missing or stale) or ``train``."""
    if not (cell_dir / MANIFEST_NAME).is_file():
        return "train"
    try:
        manifest = load_manifest(cell_dir, ZeroShotCellManifest if cell.zero_shot else TrainRunManifest)
    except ArtifactError:  # damaged, or written by another kind of cell: redo it
        return "train"
    if _comparable_config(manifest.config, cell.zero_shot) != cell.config:
        return "train"
    result_path = cell_dir / CELL_RESULT_NAME
    if result_path.is_file():
        try:
            result = json.loads(result_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return "evaluate"
        if result.get("eval_fingerprint") == cell.eval_fingerprint():
            return "done"
    return "evaluate"


def execute_cell(cell: Cell, cell_dir: Path, config: Any, runner: CellRunner) -> dict[str, Any]:
    """Train (unless a run with this config is there) and evaluate; ``sweep-eval.json`` last, atomically."""
    started = time.monotonic()
    state = cell_state(cell, cell_dir)
    if state == "train":
        if cell_dir.exists():
            shutil.rmtree(cell_dir)
        runner.train(cell, cell_dir, dataclasses.replace(
            config, output=dataclasses.replace(config.output, dir=str(cell_dir), overwrite=False)))
        if not (cell_dir / MANIFEST_NAME).is_file():
            raise ArtifactError(f"cell {cell.id}: training ended without a manifest in {cell_dir}",
                                "see the training output above; re-run to retry the cell")
    elif state == "done":
        return json.loads((cell_dir / CELL_RESULT_NAME).read_text(encoding="utf-8"))
    tests = runner.evaluate(cell, cell_dir, config)
    run = None if cell.zero_shot else load_manifest(cell_dir, TrainRunManifest)
    result = {**cell.describe(), "eval_fingerprint": cell.eval_fingerprint(), "tests": tests,
              "best": dataclasses.asdict(run.best) if run else None, "train_wall_seconds": run and run.wall_seconds,
              "sweep_wall_seconds": round(time.monotonic() - started, 2)}
    write_json_atomic(cell_dir / CELL_RESULT_NAME, result)
    return result


class LocalCellRunner:
    """Train with `tallrec_cli.train.run_training`, evaluate with `tallrec_cli.evaluate.evaluate_tests`."""

    def train(self, cell: Cell, cell_dir: Path, config: Any) -> None:
        if cell.zero_shot:
            self._zero_shot_manifest(cell_dir, config)
            return
        from tallrec_cli.train import run_training

        run_training(config)

    @staticmethod
    def _zero_shot_manifest(cell_dir: Path, config: Any) -> None:
        from tallrec_cli.models import model_identity, resolve_model_source

        cell_dir.mkdir(parents=True, exist_ok=True)
        ZeroShotCellManifest.new(
            base_model=model_identity(resolve_model_source(config.model.name)),
            prompt=PromptRecord(config.prompt.template),
            labels={"positive_word": config.labels.positive, "negative_word": config.labels.negative},
            config=to_dict(config)).write(cell_dir)

    def evaluate(self, cell: Cell, cell_dir: Path, config: Any) -> dict[str, dict]:
        from tallrec_cli.console import progress
        from tallrec_cli.evaluate import evaluate_tests, load_tests, resolve_scoring
        from tallrec_cli.models import load_for_inference

        labels, paths = list(cell.tests), list(cell.tests.values())
        tests = load_tests(paths, limit=cell.test_limit)
        model = config.model
        inference = load_for_inference(model=model.name if cell.zero_shot else None,
                                       adapter=None if cell.zero_shot else str(cell_dir), dtype=model.dtype,
                                       quantization=model.quantization, trust_remote_code=model.trust_remote_code)
        with progress(transient=True) as bars:
            def on_start(name: str, total: int) -> Callable[[int], None]:
                task = bars.add_task(f"evaluating {cell.id} on {name}", total=total)
                return lambda count: bars.advance(task, count)

            spec = resolve_scoring(inference, config.prompt.template, (config.labels.positive, config.labels.negative),
                                   config.training.score_mode, config.training.eval_batch_size)
            results = evaluate_tests(inference, tests, cell_dir / "eval", spec, seed=cell.seed or 0, overwrite=True,
                                     on_start=on_start)
        keep = ("records", "positives", "auc", "auc_ci95", "gauc", "gauc_ci95", "users", "gauc_users", "log_loss",
                "accuracy")
        return {label: {"path": path, "folder": str(Path(result["folder"]).relative_to(cell_dir)),
                        **{key: result["metrics"].get(key) for key in keep}}
                for label, path, result in zip(labels, paths, results)}


def _is_interruption(exc: BaseException) -> bool:
    # `run_training` turns Ctrl-C into a checkpoint and a TrainingInterrupted.
    return isinstance(exc, TrainingInterrupted)


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, TallrecError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


class SweepIndex:
    """index.json: the cells and their status, rewritten atomically on every change.

    Safe for concurrent writers, threads and processes alike (cluster array tasks each running one cell):
    an update takes a file lock, re-reads the file, changes its own cell's entry and writes it back.
    """

    def __init__(self, sweep_dir: Path, config_hash: str, cells: list[Cell]):
        from filelock import FileLock

        self.path = sweep_dir / INDEX_NAME
        self.config_hash = config_hash
        self.lock = threading.Lock()
        self.file_lock = FileLock(str(self.path) + ".lock")
        self.started_here: set[str] = set()
        self.entries = {cell.id: {**cell.describe(), "dir": f"cells/{cell.id}", "status": "pending", "error": None}
                        for cell in cells}

    def update(self, cell_id: str, **fields: Any) -> None:
        with self.lock, self.file_lock:
            self._read_others()
            self.entries[cell_id].update(fields)
            if fields.get("status") == "running":
                self.started_here.add(cell_id)
            self._write()

    def save(self) -> None:
        """Write this process's view of every cell (the start of a run: statuses just checked on disk)."""
        with self.lock, self.file_lock:
            self._write()

    def mark_running_as(self, status: str) -> None:
        """Cells this process started and left running get ``status`` (other writers' cells are theirs)."""
        with self.lock, self.file_lock:
            self._read_others()
            for cell_id in self.started_here:
                if self.entries[cell_id]["status"] == "running":
                    self.entries[cell_id]["status"] = status
            self._write()

    def _read_others(self) -> None:
        try:
            stored = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return
        if stored.get("config_hash") != self.config_hash:
            return
        for entry in stored.get("cells", []):
            if entry.get("id") in self.entries:
                self.entries[entry["id"]] = entry

    def _write(self) -> None:
        write_json_atomic(self.path, {"config_hash": self.config_hash, "cells": list(self.entries.values())})


@dataclasses.dataclass
class Failure:
    cell: Cell
    error: BaseException


def schedule(cells: Sequence[Cell], work: Callable[[Cell, str | None], None], workers: Sequence[str | None] = (None,),
             keep_going: bool = False, notify: Callable[[Cell, str, str | None, str | None], None] | None = None,
             poll_seconds: float = 0.2) -> list[Failure]:
    """Run ``work(cell, worker)`` for every cell, one cell per worker at a time.

    One worker: in this thread (Ctrl-C reaches the cell directly). Several (GPUs): one thread per worker
    pulling from a shared queue. A failure stops new cells unless ``keep_going``; a full disk always
    stops them. ``notify(cell, status, error, worker)`` sees running / done / failed.
    """
    queue = deque(cells)
    failures: list[Failure] = []
    lock = threading.Lock()
    stop = threading.Event()
    notify = notify or (lambda *args: None)

    def next_cell() -> Cell | None:
        with lock:
            return None if stop.is_set() or not queue else queue.popleft()

    def loop(worker: str | None) -> None:
        while (cell := next_cell()) is not None:
            notify(cell, "running", None, worker)
            try:
                work(cell, worker)
            except Exception as exc:
                if _is_interruption(exc):
                    stop.set()
                    raise KeyboardInterrupt from exc
                notify(cell, "failed", _describe_error(exc), worker)
                with lock:
                    failures.append(Failure(cell, exc))
                if is_disk_full(exc) or not keep_going:
                    stop.set()
            else:
                notify(cell, "done", None, worker)

    if len(workers) == 1:
        loop(workers[0])
        return failures
    threads = [threading.Thread(target=loop, args=(worker,), name=f"sweep-{worker}", daemon=True) for worker in workers]
    for thread in threads:
        thread.start()
    try:
        while any(thread.is_alive() for thread in threads):
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        stop.set()
        raise
    return failures


@dataclasses.dataclass(frozen=True)
class CellFailure:
    """Why a cell's worker process stopped, as it recorded it in SWEEP/logs/<cell>.failure.json: the launcher
    reads this, not the worker's log."""
    type: str  # the exception's class name
    message: str
    hint: str | None = None
    step: int | None = None  # the optimizer step training was interrupted at

    @classmethod
    def of(cls, exc: BaseException) -> CellFailure:
        if isinstance(exc, TallrecError):
            return cls(type(exc).__name__, exc.message, exc.hint, exc.step if isinstance(exc, TrainingInterrupted) else None)
        return cls(type(exc).__name__, str(exc) or type(exc).__name__)

    @property
    def interrupted(self) -> bool:
        return self.type in (TrainingInterrupted.__name__, KeyboardInterrupt.__name__)

    def error(self, where: str) -> TallrecError:
        """The exception to raise in the launcher; ``where`` (exit code, log) is added to the message."""
        if self.interrupted:
            return TrainingInterrupted(self.step or 0, f"{self.message} ({where})", self.hint)
        return TallrecError(f"{self.message} ({where})", self.hint)


def failure_path(sweep_dir: Path, cell_id: str) -> Path:
    return sweep_dir / "logs" / f"{cell_id}.failure.json"


def read_failure(path: Path) -> CellFailure | None:
    """The failure a worker recorded, or None (it crashed before it could, or the file is damaged)."""
    try:
        return from_dict(CellFailure, json.loads(path.read_text(encoding="utf-8")), source=str(path))
    except (OSError, json.JSONDecodeError, ConfigError):
        return None


class SubprocessLauncher:
    """Runs a cell as ``python -m tallrec_cli.cli sweep run-cell SWEEP CELL`` pinned to one GPU."""

    def __init__(self, sweep_dir: Path):
        self.sweep_dir = sweep_dir
        self.processes: dict[str, subprocess.Popen] = {}
        self.lock = threading.Lock()

    def __call__(self, cell: Cell, device: str | None) -> None:
        log_path = self.sweep_dir / "logs" / f"{cell.id}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        failure_path(self.sweep_dir, cell.id).unlink(missing_ok=True)
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(device)}
        command = [sys.executable, "-m", "tallrec_cli.cli", "sweep", "run-cell", str(self.sweep_dir), cell.id]
        with open(log_path, "w", encoding="utf-8") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            with self.lock:
                self.processes[cell.id] = process
            code = process.wait()
        with self.lock:
            self.processes.pop(cell.id, None)
        if code == errno.ENOSPC:
            raise OSError(errno.ENOSPC, f"No space left on device (cell {cell.id}, see {log_path})")
        if code != 0:
            where = f"exit code {code}; log: {log_path}"
            failure = read_failure(failure_path(self.sweep_dir, cell.id))
            if failure is None:
                raise TallrecError(f"cell {cell.id}'s worker stopped without recording why ({where})",
                                   "read the log; TALLREC_DEBUG=1 in the environment keeps tracebacks")
            raise failure.error(where)

    def terminate_all(self) -> None:
        with self.lock:
            for process in self.processes.values():
                process.terminate()


@dataclasses.dataclass
class SweepRun:
    sweep_dir: Path
    cells: list[Cell]
    ran: list[str]
    skipped: list[str]
    failures: list[Failure]
    summary: list[dict]
    wall_seconds: float


def _prepare_folder(sweep_dir: Path, spec: SweepSpec, config_hash: str, cells: list[Cell], overwrite: bool) -> None:
    spec_path = sweep_dir / SPEC_NAME
    if spec_path.is_file():
        recorded = (yaml.safe_load(spec_path.read_text(encoding="utf-8")) or {}).get("config_hash")
        if recorded != config_hash and not overwrite:
            raise ArtifactError(
                f"{sweep_dir} holds a sweep with a different config (hash {str(recorded)[:12]} vs {config_hash[:12]}: "
                "grid, recipe, overrides or test files changed)",
                "re-run with the same config to resume, pass --overwrite to replace it (cells whose config is "
                "unchanged are kept), or choose another --output")
    elif sweep_dir.exists() and any(sweep_dir.iterdir()):
        raise ArtifactError(f"{sweep_dir} is not empty and is not a sweep folder (no {SPEC_NAME})",
                            "choose another --output")
    wanted = {cell.id for cell in cells}
    for folder in sorted((sweep_dir / "cells").glob("*")) if overwrite else []:
        if folder.name not in wanted:
            shutil.rmtree(folder)  # not part of the new grid: it would show up in reports
    if overwrite:
        shutil.rmtree(sweep_dir / "baselines", ignore_errors=True)
        for name in RESULT_FILES:
            (sweep_dir / name).unlink(missing_ok=True)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(spec_path, yaml.safe_dump({"config_hash": config_hash, "spec": to_dict(spec),
                                                 "files": _fingerprint(spec)}, sort_keys=False))


def load_sweep_folder(sweep_dir: str | Path) -> SweepSpec:
    """The resolved spec recorded in ``SWEEP/sweep.yaml``."""
    path = Path(sweep_dir) / SPEC_NAME
    if not path.is_file():
        raise ArtifactError(f"{sweep_dir} has no {SPEC_NAME}: it is not a sweep folder", "pass the --output of `tallrec sweep`")
    return from_dict(SweepSpec, yaml.safe_load(path.read_text(encoding="utf-8"))["spec"], source=str(path))


def prepare_sweep(spec: SweepSpec) -> tuple[SweepSpec, list[Cell], dict[str, Any]]:
    """Resolve paths, expand the grid and validate every cell: (spec, cells, {cell id: TrainConfig})."""
    spec = resolve_spec(spec)
    cells = expand_grid(spec)
    configs = resolve_cells(cells)
    return spec, cells, configs


def run_sweep(spec: SweepSpec, sweep_dir: str | Path, overwrite: bool = False, keep_going: bool = False,
              devices: Sequence[str] | None = None, runner: CellRunner | None = None,
              launcher: Callable[[Cell, str | None], None] | None = None,
              log: Callable[[str], None] | None = None) -> SweepRun:
    """Run (or resume) a sweep into ``sweep_dir``; return what ran and the results summary.

    Every cell's config is validated before the first starts. ``devices``: one cell per device in a
    subprocess (``launcher`` replaces that, for tests); otherwise cells run here one at a time with
    ``runner`` (default: train + eval libraries). Finished cells are never touched again.
    """
    started = time.monotonic()
    log = log or (lambda message: None)
    sweep_dir = Path(sweep_dir).resolve()
    spec, cells, configs = prepare_sweep(spec)
    config_hash = spec_hash(spec)
    _prepare_folder(sweep_dir, spec, config_hash, cells, overwrite)
    try:
        return _run_grid(spec, sweep_dir, cells, configs, config_hash, keep_going, devices, runner, launcher, log,
                         started)
    except OSError as exc:  # e.g. index.json or a baseline file could not be written
        if not is_disk_full(exc):
            raise
        raise ResourceError(f"the disk filled up while writing to {sweep_dir}; finished cells are kept",
                            "free disk space, then re-run the same command: finished cells are skipped") from exc


def start_grid(spec: SweepSpec, sweep_dir: Path, cells: list[Cell], configs: dict[str, Any], config_hash: str,
               log: Callable[[str], None]) -> tuple[SweepIndex, dict[str, dict], list[Cell], list[dict]]:
    """Baselines, then the index with every cell's state on disk: (index, finished results, pending cells,
    baseline observations)."""
    index = SweepIndex(sweep_dir, config_hash, cells)
    baselines = compute_baselines(spec, cells, configs, sweep_dir, log) if spec.baselines else []
    results: dict[str, dict] = {}
    pending = []
    for cell in cells:
        if cell_state(cell, sweep_dir / "cells" / cell.id) == "done":
            results[cell.id] = json.loads((sweep_dir / "cells" / cell.id / CELL_RESULT_NAME).read_text(encoding="utf-8"))
            index.entries[cell.id]["status"] = "done"
        else:
            pending.append(cell)
    index.save()
    return index, results, pending, baselines


def _run_grid(spec: SweepSpec, sweep_dir: Path, cells: list[Cell], configs: dict[str, Any], config_hash: str,
              keep_going: bool, devices: Sequence[str] | None, runner: CellRunner | None,
              launcher: Callable[[Cell, str | None], None] | None, log: Callable[[str], None],
              started: float) -> SweepRun:
    index, results, pending, baselines = start_grid(spec, sweep_dir, cells, configs, config_hash, log)
    skipped = [cell.id for cell in cells if cell.id in results]
    if skipped:
        log(f"resuming: {len(skipped)} finished cell(s) kept, {len(pending)} to run")
    runner = runner or LocalCellRunner()
    workers: Sequence[str | None] = list(devices) if devices else [None]
    if devices:
        launcher = launcher or SubprocessLauncher(sweep_dir)
        work = launcher
    else:
        def work(cell: Cell, worker: str | None) -> None:
            results[cell.id] = execute_cell(cell, sweep_dir / "cells" / cell.id, configs[cell.id], runner)
    position = {cell.id: number for number, cell in enumerate(pending, start=1)}
    timers: dict[str, float] = {}

    def notify(cell: Cell, status: str, error: str | None, worker: str | None) -> None:
        where = f" on device {worker}" if worker is not None else ""
        if status == "running":
            timers[cell.id] = time.monotonic()
            log(f"[{position[cell.id]}/{len(pending)}] cell {cell.id}{where}")
            index.update(cell.id, status="running", error=None, device=worker)
            return
        seconds = round(time.monotonic() - timers[cell.id], 1)
        if status == "done" and cell.id not in results:  # ran in a subprocess: its result is on disk
            results[cell.id] = json.loads((sweep_dir / "cells" / cell.id / CELL_RESULT_NAME).read_text(encoding="utf-8"))
        if status == "done":
            aucs = ", ".join(f"{label} AUC {_fmt(test.get('auc'))}" for label, test in results[cell.id]["tests"].items())
            log(f"    done in {seconds:.0f} s: {aucs}")
        else:
            log(f"    failed after {seconds:.0f} s: {error}")
        index.update(cell.id, status=status, error=error, wall_seconds=seconds)

    try:
        failures = schedule(pending, work, workers, keep_going, notify)
    except KeyboardInterrupt:
        if isinstance(launcher, SubprocessLauncher):
            launcher.terminate_all()
        index.mark_running_as("interrupted")
        log(f"interrupted: {len(results)} finished cell(s) kept in {sweep_dir}; re-run the same command to resume")
        raise
    fatal = next((failure for failure in failures if is_disk_full(failure.error)), None)
    if fatal is not None:
        cell_dir = sweep_dir / "cells" / fatal.cell.id
        if not (cell_dir / MANIFEST_NAME).exists():
            shutil.rmtree(cell_dir, ignore_errors=True)  # give the space back; it is redone on the next run
        raise ResourceError(
            f"the disk filled up during cell {fatal.cell.id}; {len(results)} finished cell(s) are kept in {sweep_dir}",
            "free disk space, then re-run the same command: finished cells are skipped") from fatal.error
    if failures and not keep_going:
        failure = failures[0]
        if not isinstance(failure.error, TallrecError):
            raise failure.error
        raise TallrecError(
            f"cell {failure.cell.id} failed: {failure.error.message}",
            (failure.error.hint + "; " if failure.error.hint else "")
            + "re-run the same command to resume (finished cells are skipped), or pass --keep-going") from failure.error
    observations = cell_observations(results.values()) + baselines
    summary = summarize(observations)
    write_report(sweep_dir, summary, observations, config_hash)
    return SweepRun(sweep_dir, cells, [cell.id for cell in pending if cell.id in results], skipped, failures, summary,
                    round(time.monotonic() - started, 1))


def run_single_cell(sweep_dir: str | Path, cell_id: str, runner: CellRunner | None = None,
                    record: bool = False) -> dict[str, Any]:
    """Run one cell of a prepared sweep folder: the worker side of ``--devices`` (its parent keeps the
    index) or, with ``record``, a cluster array task that records its own status in the index. Why it
    failed goes to SWEEP/logs/<cell>.failure.json (`CellFailure`), which the launcher reads."""
    sweep_dir = Path(sweep_dir).resolve()
    try:
        return _run_single_cell(sweep_dir, cell_id, runner, record)
    except BaseException as exc:
        if not isinstance(exc, SystemExit):
            write_json_atomic(failure_path(sweep_dir, cell_id), dataclasses.asdict(CellFailure.of(exc)))
        raise


def _run_single_cell(sweep_dir: Path, cell_id: str, runner: CellRunner | None, record: bool) -> dict[str, Any]:
    spec, cells, configs = prepare_sweep(load_sweep_folder(sweep_dir))
    cell = next((cell for cell in cells if cell.id == cell_id), None)
    if cell is None:
        raise ConfigError(f"{sweep_dir} has no cell {cell_id!r}", f"cells: {', '.join(c.id for c in cells)}")
    run = functools.partial(execute_cell, cell, sweep_dir / "cells" / cell.id, configs[cell.id],
                            runner or LocalCellRunner())
    if not record:
        return run()
    index = SweepIndex(sweep_dir, spec_hash(spec), cells)
    started = time.monotonic()
    job = os.environ.get("SLURM_JOB_ID")
    index.update(cell.id, status="running", error=None, job=job)
    try:
        result = run()
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) or _is_interruption(exc) else "failed"
        index.update(cell.id, status=status, error=_describe_error(exc),
                     wall_seconds=round(time.monotonic() - started, 1))
        raise
    index.update(cell.id, status="done", error=None, wall_seconds=round(time.monotonic() - started, 1))
    return result


# ------------------------------------------------------------------------------------- baselines

def compute_baselines(spec: SweepSpec, cells: list[Cell], configs: dict[str, Any], sweep_dir: Path,
                      log: Callable[[str], None]) -> list[dict]:
    """Baselines on every distinct few-shot sample of the grid (same records `run_training` draws), kept
    in SWEEP/baselines/ and reused on resume. Returns their observations."""
    from data_builders import load_split, sample_records

    from tallrec_cli.baselines import FULL_DATA_REFERENCES, evaluate_baselines
    from tallrec_cli.evaluate import load_test_records

    samples = {}
    for cell in cells:
        if cell.zero_shot:
            continue
        data = configs[cell.id].data
        key = (cell.domain, _absolute(data.train), cell.shots, cell.seed, data.stratify)
        samples.setdefault(key, cell)
    observations = []
    pools: dict[str, list[dict]] = {}
    tests: dict[str, list[dict]] = {}
    for (domain, train, shots, seed, stratify), cell in samples.items():
        digest = hashlib.sha256(f"{train}|{stratify}".encode()).hexdigest()[:8]
        path = sweep_dir / "baselines" / f"{_slug(domain) + '_' if domain else ''}k{shots}-s{seed}-{digest}.json"
        fingerprint = _json_hash([train, shots, seed, stratify, cell.eval_fingerprint()])
        stored = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        if stored is None or stored.get("fingerprint") != fingerprint:
            if train not in pools:
                pools[train] = load_split(train, "train")
            # `run_training` draws its shots this way (data_builders.sample_records, sample_seed = seed)
            sample = sample_records(pools[train], shots, seed, stratify=stratify)
            results = {}
            for label, test_path in cell.tests.items():
                if test_path not in tests:
                    tests[test_path] = load_test_records(test_path, limit=spec.test_limit)
                results[label] = evaluate_baselines(sample, tests[test_path], seed)
            stored = {"fingerprint": fingerprint, "domain": domain, "train": train, "shots": shots, "seed": seed,
                      "stratify": stratify, "train_ids": [record["id"] for record in sample], "tests": results}
            write_json_atomic(path, stored)
            log(f"baselines k={shots} seed={seed}{f' ({domain})' if domain else ''}: " + ", ".join(
                f"{label} {name} {_fmt(metrics['auc'])}" for label, by_name in results.items()
                for name, metrics in by_name.items()))
        observations.extend(baseline_observations(stored))
    # full-data references: fitted once per training pool on all of it, shown beside every shots column
    shots_columns = sorted({cell.shots for cell in cells if not cell.zero_shot})
    references = {(cell.domain, _absolute(configs[cell.id].data.train)): cell for cell in cells}
    for (domain, train), cell in references.items():
        digest = hashlib.sha256(f"{train}".encode()).hexdigest()[:8]
        path = sweep_dir / "baselines" / f"{_slug(domain) + '_' if domain else ''}reference-{digest}.json"
        fingerprint = _json_hash([train, list(FULL_DATA_REFERENCES), cell.eval_fingerprint()])
        stored = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        if stored is None or stored.get("fingerprint") != fingerprint:
            if train not in pools:
                pools[train] = load_split(train, "train")
            results = {}
            for label, test_path in cell.tests.items():
                if test_path not in tests:
                    tests[test_path] = load_test_records(test_path, limit=spec.test_limit)
                results[label] = evaluate_baselines(pools[train], tests[test_path], 0, FULL_DATA_REFERENCES)
            stored = {"fingerprint": fingerprint, "kind": "reference", "domain": domain, "train": train,
                      "train_records": len(pools[train]), "tests": results}
            write_json_atomic(path, stored)
            log(f"full-data references{f' ({domain})' if domain else ''}: " + ", ".join(
                f"{label} {name} {_fmt(metrics['auc'])}" for label, by_name in results.items()
                for name, metrics in by_name.items()))
        observations.extend(reference_observations(stored, shots_columns))
    return observations


# --------------------------------------------------------------------------------------- report

def cell_observations(results) -> list[dict]:
    """One row per (method, test) of each cell result (sweep-eval.json contents)."""
    rows = []
    for result in results:
        for method in result["methods"]:
            for label, metrics in result["tests"].items():
                rows.append({"method": method, "kind": "zero-shot" if result["shots"] == 0 else "lora",
                             "domain": result["domain"], "test": label, "shots": result["shots"], "seed": result["seed"],
                             "auc": metrics.get("auc"), "gauc": metrics.get("gauc"), "records": metrics.get("records"),
                             "users": metrics.get("users"), "gauc_users": metrics.get("gauc_users"),
                             "cell": result["id"]})
    return rows


def baseline_observations(stored: dict) -> list[dict]:
    return [{"method": name, "kind": "baseline", "domain": stored["domain"], "test": label, "shots": stored["shots"],
             "seed": stored["seed"], "auc": metrics.get("auc"), "gauc": metrics.get("gauc"),
             "records": metrics.get("n"), "cell": None}
            for label, by_name in stored["tests"].items() for name, metrics in by_name.items()]


def reference_observations(stored: dict, shots_columns: list[int]) -> list[dict]:
    """A full-data reference's result repeated in every shots column (it does not depend on shots)."""
    return [{"method": f"{name} (full data)" if name != "History share" else name, "kind": "reference",
             "domain": stored["domain"], "test": label, "shots": shots, "seed": None, "auc": metrics.get("auc"),
             "gauc": metrics.get("gauc"), "records": metrics.get("n"), "cell": None}
            for label, by_name in stored["tests"].items() for name, metrics in by_name.items()
            for shots in shots_columns]


def collect_observations(sweep_dir: str | Path) -> list[dict]:
    """Every observation, read from the cell folders and baseline files alone."""
    sweep_dir = Path(sweep_dir)
    results = [json.loads(path.read_text(encoding="utf-8"))
               for path in sorted((sweep_dir / "cells").glob(f"*/{CELL_RESULT_NAME}"))
               if (path.parent / MANIFEST_NAME).is_file()]
    results = list(results)
    shots_columns = sorted({result["shots"] for result in results if result["shots"] > 0})
    stored = [json.loads(path.read_text(encoding="utf-8")) for path in sorted((sweep_dir / "baselines").glob("*.json"))]
    baselines = [reference_observations(item, shots_columns) if item.get("kind") == "reference"
                 else baseline_observations(item) for item in stored]
    return cell_observations(results) + [row for rows in baselines for row in rows]


def missing_cells(sweep_dir: str | Path) -> list[dict]:
    """Cells of the sweep's index without a finished result (killed, failed or never run): id and status."""
    sweep_dir = Path(sweep_dir)
    index_path = sweep_dir / INDEX_NAME
    if not index_path.is_file():
        return []
    entries = json.loads(index_path.read_text(encoding="utf-8")).get("cells") or []
    return [{"id": entry["id"], "status": entry.get("status"), "error": entry.get("error")} for entry in entries
            if not ((sweep_dir / entry["dir"] / CELL_RESULT_NAME).is_file()
                    and (sweep_dir / entry["dir"] / MANIFEST_NAME).is_file())]


_KIND_ORDER = {"lora": 0, "zero-shot": 0, "baseline": 1, "reference": 2}


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    mean = sum(values) / len(values) if values else None
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return mean, std


def summarize(observations: list[dict]) -> list[dict]:
    """Mean / sample std / n of AUC over seeds per (method, test, shots); ``best`` marks each column's top mean."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in observations:
        groups[(row["method"], row["test"], row["shots"])].append(row)
    summary = []
    for (method, test, shots), rows in groups.items():
        rows = sorted(rows, key=lambda row: (row["seed"] is None, row["seed"] or 0))
        aucs = [row["auc"] for row in rows if row["auc"] is not None]
        mean, std = _mean_std(aucs)
        gauc_mean, gauc_std = _mean_std([row["gauc"] for row in rows if row.get("gauc") is not None])
        kind = rows[0]["kind"] if rows[0]["kind"] in ("baseline", "reference") else "lora"
        summary.append({"method": method, "kind": kind, "test": test, "shots": shots, "auc_mean": mean, "auc_std": std,
                        "gauc_mean": gauc_mean, "gauc_std": gauc_std,
                        "n": len(aucs), "seeds": [row["seed"] for row in rows], "aucs": [row["auc"] for row in rows],
                        "records": rows[0]["records"], "users": rows[0].get("users"),
                        "gauc_users": rows[0].get("gauc_users"), "best": False})
    columns: dict[tuple, list[dict]] = defaultdict(list)
    for row in summary:
        if row["auc_mean"] is not None:
            columns[(row["test"], row["shots"])].append(row)
    for rows in columns.values():
        top = max(row["auc_mean"] for row in rows)
        for row in rows:
            row["best"] = row["auc_mean"] == top
    summary.sort(key=lambda row: (row["test"], row["shots"], _KIND_ORDER[row["kind"]], row["method"]))
    return summary


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _methods(summary: list[dict]) -> list[str]:
    ordered = sorted({(_KIND_ORDER[row["kind"]], row["method"]) for row in summary})
    return [method for _, method in ordered]


def _columns(summary: list[dict]) -> list[tuple[str, int]]:
    return sorted({(row["test"], row["shots"]) for row in summary})


def test_users_line(summary: list[dict]) -> str:
    """Per test: records, users, users carrying a per-user AUC, and a warning under MIN_GAUC_USERS."""
    from tallrec_cli.metrics import MIN_GAUC_USERS

    parts = []
    for test in sorted({row["test"] for row in summary}):
        row = next((r for r in summary if r["test"] == test and r.get("users") is not None), None)
        if row is None:
            parts.append(f"{test}: users unknown (records without user_id: no GAUC)")
            continue
        text = f"{test}: {row['records']} records, {row['users']} users ({row['gauc_users']} with both labels)"
        if row["gauc_users"] < MIN_GAUC_USERS:
            text += f" - under {MIN_GAUC_USERS}: GAUC mostly reflects a few users"
        parts.append(text)
    return "; ".join(parts)


def results_table(summary: list[dict],
                  title: str = "AUC (GAUC under it) by training samples (mean ± std over seeds, n)"):
    """A rich table shaped like TALLRec's Table 1: methods x (test, shots), per-user AUC under each AUC;
    * marks each column's best AUC."""
    from rich.table import Table

    table = Table(title=title, title_justify="left", caption="shots 0 = zero-shot base model; * = best AUC in column; "
                  "full-data references are fitted on the whole training split\n" + test_users_line(summary),
                  caption_justify="left", show_lines=True)
    table.add_column("method")
    columns = _columns(summary)
    for test, shots in columns:
        table.add_column(f"{test}\n{'zero-shot' if shots == 0 else shots}", justify="right")
    cells = {(row["method"], row["test"], row["shots"]): row for row in summary}
    for method in _methods(summary):
        line = [method]
        for test, shots in columns:
            row = cells.get((method, test, shots))
            if row is None or row["auc_mean"] is None:
                line.append("")
                continue
            text = _fmt(row["auc_mean"]) + (f" ± {row['auc_std']:.4f}" if row["auc_std"] is not None else "")
            text += f" ({row['n']})"
            text = f"[bold]{text} *[/]" if row["best"] else text
            if row.get("gauc_mean") is not None:
                text += "\ng " + _fmt(row["gauc_mean"]) + (f" ± {row['gauc_std']:.4f}" if row["gauc_std"] is not None else "")
            line.append(text)
        table.add_row(*line)
    return table


def write_report(sweep_dir: str | Path, summary: list[dict], observations: list[dict], config_hash: str | None) -> dict:
    """results.json, results.csv (one line per method x test x shots) and sweep.png, each atomically."""
    import csv
    import io

    from tallrec_cli.io import atomic_path

    sweep_dir = Path(sweep_dir)
    ordered = sorted(observations, key=lambda row: (row["test"], row["shots"], row["method"],
                                                    row["seed"] is None, row["seed"] or 0))
    payload = {"config_hash": config_hash, "methods": _methods(summary),
               "columns": [{"test": test, "shots": shots} for test, shots in _columns(summary)],
               "summary": summary, "observations": ordered, "missing_cells": missing_cells(sweep_dir)}
    write_json_atomic(sweep_dir / "results.json", payload)
    buffer = io.StringIO()
    fields = ["method", "kind", "test", "shots", "auc_mean", "auc_std", "gauc_mean", "gauc_std", "n", "best"]
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(summary)
    write_text_atomic(sweep_dir / "results.csv", buffer.getvalue())
    with atomic_path(sweep_dir / "sweep.png") as tmp:
        plot_results(summary, tmp)
    return payload


def plot_results(summary: list[dict], path: str | Path) -> None:
    """AUC (top) and per-user AUC (bottom) vs training samples (log2 x), one column per test: mean ± std
    per method, zero-shot as a dotted line in its method's colour, few-shot baselines dashed, full-data
    references as dash-dot lines, chance at 0.5."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tests = sorted({row["test"] for row in summary}) or ["(no results)"]
    methods = _methods(summary)
    colours = {method: plt.get_cmap("tab10")(number % 10) for number, method in enumerate(methods)}
    figure, axes = plt.subplots(2, len(tests), figsize=(5.5 * len(tests), 8.0), squeeze=False)
    for metric, axis_row in zip(("auc", "gauc"), axes):
        for axis, test in zip(axis_row, tests):
            _plot_panel(axis, [row for row in summary if row["test"] == test], methods, colours, metric)
            axis.set(title=f"{test}: {'AUC' if metric == 'auc' else 'per-user AUC (GAUC)'}",
                     ylabel="AUC" if metric == "auc" else "GAUC")
    figure.tight_layout()
    figure.savefig(path, dpi=120, format="png")
    plt.close(figure)


def _plot_panel(axis, summary: list[dict], methods: list[str], colours: dict, metric: str) -> None:
    mean, std = f"{metric}_mean", f"{metric}_std"
    shots_seen = sorted({row["shots"] for row in summary if row["shots"] > 0})
    for method in methods:
        rows = sorted((row for row in summary if row["method"] == method and row.get(mean) is not None),
                      key=lambda row: row["shots"])
        if not rows:
            continue
        kind = rows[0]["kind"]
        if kind == "reference":
            axis.axhline(rows[0][mean], color=colours[method], linestyle="-.", linewidth=1.4, label=method)
            continue
        trained = [row for row in rows if row["shots"] > 0]
        baseline = kind == "baseline"
        if trained:
            axis.errorbar([row["shots"] for row in trained], [row[mean] for row in trained],
                          yerr=[row[std] or 0.0 for row in trained], label=method, color=colours[method],
                          marker="s" if baseline else "o", linestyle="--" if baseline else "-", capsize=3,
                          linewidth=1.0 if baseline else 1.8)
        for row in rows:
            if row["shots"] == 0:
                axis.axhline(row[mean], color=colours[method], linestyle=":", linewidth=1.5,
                             label=f"{method} zero-shot")
    axis.axhline(0.5, color="grey", linewidth=0.8, linestyle="-", alpha=0.6, label="chance (0.5)")
    if shots_seen:
        axis.set_xscale("log", base=2)
        axis.set_xticks(shots_seen, [str(value) for value in shots_seen])
        axis.minorticks_off()
    axis.set(xlabel="training samples (log2)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="best")


def build_report(sweep_dir: str | Path) -> list[dict]:
    """Rebuild results.json / results.csv / sweep.png from the cell folders and baseline files alone."""
    sweep_dir = Path(sweep_dir)
    spec_path = sweep_dir / SPEC_NAME
    if not spec_path.is_file():
        raise ArtifactError(f"{sweep_dir} has no {SPEC_NAME}: it is not a sweep folder", "pass the --output of `tallrec sweep`")
    config_hash = (yaml.safe_load(spec_path.read_text(encoding="utf-8")) or {}).get("config_hash")
    observations = collect_observations(sweep_dir)
    if not observations:
        raise ArtifactError(f"{sweep_dir} holds no finished cells yet", "run the sweep (re-running resumes it)")
    summary = summarize(observations)
    write_report(sweep_dir, summary, observations, config_hash)
    return summary
