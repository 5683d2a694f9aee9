"""A sweep's spec (`SweepSpec`: grid, tests, overrides) from a sweep YAML or a train recipe plus command-line
values, resolved to absolute paths and fingerprinted (recipe and test hashes); the folder's file names."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tallrec_cli.core.config import deep_merge, from_dict, option, parse_overrides, read_yaml, to_dict
from tallrec_cli.core.errors import ArtifactError, ConfigError
from tallrec_cli.core.files import sha256_file, write_text_atomic
from tallrec_cli.eval.records import result_name

SPEC_NAME = "sweep.yaml"


INDEX_NAME = "index.json"


CELL_RESULT_NAME = "sweep-eval.json"


RESULT_FILES = ("results.json", "results.csv", "sweep.png")


# Axis keys under these prefixes change what a zero-shot evaluation sees; other axes (lora.*, data.*,
# most of training.*) share one zero-shot cell.
ZERO_SHOT_KEYS = ("recipe", "model", "prompt", "labels", "training.score_mode")


AXIS_ALIASES = {"model": "model.name"}


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
    baselines: bool = option(True, help="Fit the equal-data references (popularity, logreg, bias, GBDT, MF) on every "
                                        "cell's records and their histories, and the full-data references on the "
                                        "training split; compare the tuned model with each at every N.")

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


def nest(flat_or_nested: dict) -> dict:
    """Dotted keys to nested dicts, merged with any nested parts."""
    nested: dict = {}
    for key, value in flat_or_nested.items():
        value = nest(value) if isinstance(value, dict) else value
        for part in reversed(str(key).split(".")[1:]):
            value = {part: value}
        nested = deep_merge(nested, {str(key).split(".")[0]: value})
    return nested


def load_sweep_spec(source: str | Path | None, shots: Sequence[int] | None = None, seeds: Sequence[int] | None = None,
                    tests: Sequence[str] = (), axes: Sequence[str] = (), overrides: Sequence[str] = (),
                    test_limit: int | None = None, baselines: bool | None = None) -> SweepSpec:
    """A sweep YAML (top-level ``recipe`` key) or a train recipe, plus command-line values (which win)."""

    data: dict[str, Any] = {}
    if source is not None:
        loaded = read_yaml(source)
        data = loaded if "recipe" in loaded else {"recipe": str(source)}
    if isinstance(data.get("tests"), list):
        data["tests"] = parse_tests([str(item) for item in data["tests"]])
    for domain in (data.get("domains") or {}).values():
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
        data["overrides"] = deep_merge(nest(data.get("overrides") or {}), parse_overrides(list(overrides)))
    if test_limit is not None:
        data["test_limit"] = test_limit
    if baselines is not None:
        data["baselines"] = baselines
    return from_dict(SweepSpec, data, source=str(source or "sweep"))


def absolute_path(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def resolve_spec(spec: SweepSpec) -> SweepSpec:
    """The same spec with absolute paths, so cells and resumes work from any directory."""
    def absolute_tests(tests: dict) -> dict:
        return {label: absolute_path(path) for label, path in tests.items()}

    axes = dict(spec.axes)
    if "recipe" in axes:
        axes["recipe"] = [absolute_path(value) for value in axes["recipe"]]
    domains = {}
    for name, domain in spec.domains.items():
        domain = dict(domain or {})
        if domain.get("tests"):
            domain["tests"] = absolute_tests(domain["tests"])
        domains[name] = domain
    return dataclasses.replace(spec, recipe=absolute_path(spec.recipe), tests=absolute_tests(spec.tests), axes=axes,
                               overrides=nest(spec.overrides), domains=domains)


def input_hashes(spec: SweepSpec) -> dict[str, str]:
    """sha256 of every recipe and test file the sweep reads: editing one makes it a different sweep."""
    files = [spec.recipe, *spec.axes.get("recipe", [])]
    files += [path for tests in spec.tests_by_domain().values() for path in tests.values()]
    return {path: file_sha256(path) for path in sorted(set(filter(None, files))) if Path(path).is_file()}


def file_sha256(path: str) -> str:
    stat = Path(path).stat()
    return _cached_sha256(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _cached_sha256(path: str, mtime_ns: int, size: int) -> str:
    # keyed on mtime and size too: every cell's fingerprint hashes the test files, once per process
    return sha256_file(path)


def json_hash(payload: Any) -> str:
    """sha256 of a JSON payload in canonical form (sorted keys), for fingerprints of configs and inputs."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@dataclasses.dataclass
class SweepRecord:
    """SWEEP/sweep.yaml: the resolved spec, the sha256 of every file it reads, and the hash of both, which tells
    a resume of this sweep from another sweep in the same folder."""
    config_hash: str
    spec: dict[str, Any]  # a resolved SweepSpec as a mapping (`sweep_spec` checks it)
    files: dict[str, str]

    @classmethod
    def of(cls, spec: SweepSpec) -> SweepRecord:
        files, plain = input_hashes(spec), to_dict(spec)
        return cls(json_hash({"spec": plain, "files": files}), plain, files)

    def write(self, sweep_dir: Path) -> None:
        write_text_atomic(sweep_dir / SPEC_NAME, yaml.safe_dump(to_dict(self), sort_keys=False))

    def sweep_spec(self, source: str = SPEC_NAME) -> SweepSpec:
        return from_dict(SweepSpec, self.spec, source=source)


def spec_hash(spec: SweepSpec) -> str:
    return SweepRecord.of(spec).config_hash


def read_sweep_record(sweep_dir: str | Path) -> SweepRecord:
    """``SWEEP/sweep.yaml``, validated; a missing or damaged one is an ArtifactError."""
    path = Path(sweep_dir) / SPEC_NAME
    if not path.is_file():
        raise ArtifactError(f"{sweep_dir} has no {SPEC_NAME}: it is not a sweep folder", "pass the --output of `tallrec sweep`")
    try:
        return from_dict(SweepRecord, yaml.safe_load(path.read_text(encoding="utf-8")) or {}, source=str(path))
    except (yaml.YAMLError, ConfigError) as exc:
        raise ArtifactError(f"{path} is damaged: {'; '.join(getattr(exc, 'problems', [str(exc)]))}",
                            "re-run the sweep with --overwrite (finished cells whose config is unchanged are kept)") from None


def load_sweep_folder(sweep_dir: str | Path) -> SweepSpec:
    """The resolved spec recorded in ``SWEEP/sweep.yaml``."""
    return read_sweep_record(sweep_dir).sweep_spec(str(Path(sweep_dir) / SPEC_NAME))
