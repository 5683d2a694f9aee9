"""The sweep's cells: the grid expanded (zero-shot cells shared across axes that do not change scoring), and
every cell's train config loaded and checked before the first one starts."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from data_builders import load_split
from tallrec_cli.core.config import deep_merge, read_yaml, to_dict
from tallrec_cli.core.errors import ConfigError, TallrecError, problem_count
from tallrec_cli.sweep.spec import AXIS_ALIASES, ZERO_SHOT_KEYS, SweepSpec, file_sha256, json_hash, nest, resolve_spec
from tallrec_cli.train.config import load_train_config, preflight


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
        tests = {label: [path, file_sha256(path) if Path(path).is_file() else None] for label, path in self.tests.items()}
        payload = {"config": self.config, "tests": tests, "test_limit": self.test_limit}
        return json_hash(payload)

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "methods": self.methods, "domain": self.domain, "shots": self.shots, "seed": self.seed,
                "axes": self.axes}


def slug(value: Any) -> str:
    text = Path(value).stem if isinstance(value, str) and ("/" in value or value.endswith((".yaml", ".yml"))) else str(value)
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x"


def _axis_label(key: str, value: Any) -> str:
    return f"{key}={slug(value)}"


def _method_label(model_name: str, axes: dict[str, Any]) -> str:
    extra = [_axis_label(key, value) for key, value in axes.items() if AXIS_ALIASES.get(key, key) != "model.name"]
    return " ".join([f"LoRA {slug(model_name)}", *extra])


def _zero_shot_axes(axes: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in axes.items()
            if any(AXIS_ALIASES.get(key, key) == prefix or AXIS_ALIASES.get(key, key).startswith(prefix + ".")
                   for prefix in ZERO_SHOT_KEYS)}


def _cell_id(domain: str | None, axes: dict[str, Any], tail: str) -> str:
    parts = [slug(domain)] if domain else []
    parts += [_axis_label(key, value) for key, value in axes.items()]
    cell_id = "_".join([*parts, tail])
    if len(cell_id) > 120:  # keep folder names usable; the hash keeps them distinct
        digest = hashlib.sha256(cell_id.encode()).hexdigest()[:10]
        cell_id = f"{cell_id[:100]}-{digest}"
    return cell_id


def _cell_overrides(spec: SweepSpec, domain: str | None, axes: dict[str, Any]) -> dict:
    overrides = nest(spec.overrides)
    if domain is not None:
        overrides = deep_merge(overrides, nest((spec.domains[domain] or {}).get("overrides") or {}))
    for key, value in axes.items():
        if key != "recipe":
            overrides = deep_merge(overrides, nest({AXIS_ALIASES.get(key, key): value}))
    return overrides


def expand_grid(spec: SweepSpec) -> list[Cell]:
    """Every cell of the sweep, zero-shot cells first, then by shots and seed (small, cheap cells first)."""

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
        cell.config = comparable_config(to_dict(config), cell.zero_shot)
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

    if train not in cache:
        cache[train] = len(load_split(train, "train"))
    return cache[train]


def comparable_config(config: dict, zero_shot: bool) -> dict:
    """The config as JSON sees it, without output.* (where a cell lives is not what it computes); for a
    zero-shot cell only what scoring the base model reads, so changing e.g. epochs keeps it."""
    plain = json.loads(json.dumps(config, default=str))
    plain.pop("output", None)
    data = plain.get("data") or {}
    for key in ("train", "valid"):  # a run records them absolute: a relative one is the same data from here
        if data.get(key):
            data[key] = str(Path(data[key]).expanduser().absolute())
    if zero_shot:
        training = plain.get("training", {})
        plain = {key: plain.get(key) for key in ("model", "prompt", "labels")}
        plain["training"] = {key: training.get(key) for key in ("score_mode", "eval_batch_size")}
    return plain


def prepare_sweep(spec: SweepSpec) -> tuple[SweepSpec, list[Cell], dict[str, Any]]:
    """Resolve paths, expand the grid and validate every cell: (spec, cells, {cell id: TrainConfig})."""
    spec = resolve_spec(spec)
    cells = expand_grid(spec)
    configs = resolve_cells(cells)
    return spec, cells, configs
