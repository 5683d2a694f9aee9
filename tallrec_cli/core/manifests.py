"""Typed manifests: one dataclass per artifact kind that later stages read.

Each is built through one constructor (``Manifest.new``, and `train_run_manifest` for a train run), used by
the code that writes the artifact and by tests that fake one, and validated on read with the config loader
(`tallrec_cli.core.config.from_dict`): a missing or mistyped field is an `ArtifactError` naming it. The JSON on
disk is the dataclass as a dict (``kind``, ``created``, ``versions``, ``command`` first), written last and
atomically. Kinds without a type here (dataset, samples, model caches) go through `write_manifest`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
from collections.abc import Iterable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import tallrec_cli
from tallrec_cli.core.config import from_dict, to_dict
from tallrec_cli.core.errors import ArtifactError, ConfigError
from tallrec_cli.core.files import MANIFEST_NAME, sha256_file, write_json_atomic

M = TypeVar("M", bound="Manifest")
_TRACKED_PACKAGES = (
    "torch", "transformers", "peft", "trl", "datasets", "bitsandbytes", "accelerate",
    "safetensors", "scikit-learn", "numpy", "pandas",
)


def package_versions() -> dict[str, str]:
    versions = {"tallrec-cli": tallrec_cli.__version__, "python": platform.python_version()}
    for name in _TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def manifest_header(kind: str) -> dict[str, Any]:
    """What every manifest starts with: kind, creation time, package versions, command line."""
    return {"kind": kind, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": package_versions(), "command": list(sys.argv)}


def write_manifest(folder: str | os.PathLike, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Write ``manifest.json`` last: the header and ``payload``. Kinds with a type go through
    this module (``TYPE.new(...).write(folder)``), which validates them."""
    if kind in TYPES:
        raise TypeError(f"a {kind} manifest is written with {TYPES[kind].__name__}.new(...).write(folder)")
    manifest = {**manifest_header(kind), **payload}
    write_json_atomic(Path(folder) / MANIFEST_NAME, manifest)
    return manifest


def read_manifest(folder: str | os.PathLike, kind: str | Iterable[str] | None = None,
                  typed: bool = True) -> dict[str, Any]:
    """Read a folder's manifest; a missing one means the artifact never finished. A kind with a type in
    `tallrec_cli.core.manifests` is validated against it (``typed``), so a missing field fails here, by name."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not folder.exists():
        raise ArtifactError(f"{folder} does not exist", "check the path")
    if not path.exists():
        raise ArtifactError(
            f"{folder} has no {MANIFEST_NAME}: it is not a tallrec artifact or it never finished",
            "re-run the command that creates it",
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc.msg})", "re-create the artifact") from None
    if kind is not None:
        kinds = {kind} if isinstance(kind, str) else set(kind)
        if manifest.get("kind") not in kinds:
            raise ArtifactError(
                f"{folder} holds a '{manifest.get('kind')}' artifact, expected {' or '.join(sorted(kinds))}",
                "pass the right folder",
            )
    if typed:
        parse(manifest, path)
    return manifest


@dataclasses.dataclass(kw_only=True)
class Manifest:
    """What every manifest starts with."""
    KIND: ClassVar[str] = ""
    kind: str
    created: str
    versions: dict[str, str]
    command: list[str]

    @classmethod
    def new(cls: type[M], **payload: Any) -> M:
        """The one constructor: ``payload`` (fields as dataclasses or plain mappings) plus kind, creation time,
        package versions and command line, validated as a read would be."""
        plain = {key: dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
                 for key, value in payload.items()}
        return _validated(cls, {**manifest_header(cls.KIND), **plain}, f"new {cls.KIND} manifest")

    def write(self: M, folder: str | Path) -> M:
        """``folder/manifest.json``, atomically: call it last, once everything it describes is written."""
        write_json_atomic(Path(folder) / MANIFEST_NAME, self.as_dict())
        return self

    def as_dict(self) -> dict[str, Any]:
        return to_dict(self)


# ---------------------------------------------------------------------------------- a trained adapter

@dataclasses.dataclass
class PromptRecord:
    template: str = "alpaca"


@dataclasses.dataclass
class RunData:
    """The records a run was trained and validated on, with the hashes that identify them."""
    train: str | None
    valid: str | None
    shots: int | None
    sample_seed: int
    train_records: int
    valid_records: int
    truncated_records: int = 0
    train_sha256: str | None = None
    valid_sha256: str | None = None
    dataset_manifest_sha256: str | None = None
    name: str | None = None  # the dataset's name where its path does not tell it

    @property
    def dataset_name(self) -> str:
        """The dataset by name: its own ``name``, else the dataset folder (or the file's folder)."""
        if self.name:
            return self.name
        if not self.train:
            return "unknown"
        train = Path(self.train)
        return (train.parent.name or train.stem) if train.suffix in (".json", ".jsonl") else train.name


@dataclasses.dataclass
class BestStep:
    """The evaluation whose adapter was kept."""
    step: int | None
    val_auc: float | None = None
    val_loss: float | None = None
    selected_on: str | None = None  # val_auc, or val_loss when validation holds one class


@dataclasses.dataclass
class RunMetrics:
    val_auc: float | None
    train_loss: float | None = None
    start_val_auc: float | None = None  # step 0: the untrained adapter, i.e. the base model


@dataclasses.dataclass(kw_only=True)
class TrainedAdapter(Manifest):
    """What a train run records about its adapter, and what its exports carry over."""
    base_model: dict[str, Any]
    base_model_config: dict[str, Any] | None = None
    prompt: PromptRecord
    labels: dict[str, Any]  # prompts.LabelTokens.as_dict()
    quantization: str = "none"
    dtype: str
    lora: dict[str, Any]
    data: RunData
    seed: int
    best: BestStep
    metrics: RunMetrics
    calibration: dict[str, Any] | None = None  # added by `tallrec calibrate`

    @property
    def val_auc(self) -> float | None:
        """The kept adapter's validation AUC."""
        return self.metrics.val_auc if self.metrics.val_auc is not None else self.best.val_auc

    def carried(self) -> dict[str, Any]:
        """The fields an export copies from its run (recognising the base, prompting, provenance)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(TrainedAdapter)
                if field.name not in {each.name for each in dataclasses.fields(Manifest)}}


@dataclasses.dataclass(kw_only=True)
class TrainRunManifest(TrainedAdapter):
    KIND: ClassVar[str] = "train-run"
    adapter_dir: str = "adapter"
    processes: int = 1
    wall_seconds: float
    config: dict[str, Any]
    # relative path -> sha256 of the adapter files training wrote (None: a run from before runs recorded them)
    files: dict[str, str] | None = None


def train_run_manifest(config, *, base_model: dict[str, Any], base_model_config: dict[str, Any] | None,
                       labels: dict[str, Any], dtype: str, data: RunData, best: BestStep, metrics: RunMetrics,
                       wall_seconds: float, files: dict[str, str], processes: int = 1) -> TrainRunManifest:
    """A train run's manifest from its `TrainConfig`, what the run measured and the hashes of the adapter
    files it wrote (``files``)."""
    return TrainRunManifest.new(
        base_model=base_model, base_model_config=base_model_config, prompt=PromptRecord(config.prompt.template),
        labels=labels, quantization=config.model.quantization, dtype=dtype, lora=to_dict(config.lora), data=data,
        seed=config.training.seed, processes=processes, best=best, metrics=metrics,
        wall_seconds=round(wall_seconds, 2), config=to_dict(config), files=files)


def data_hashes(train: str | None, valid: str | None) -> dict[str, str | None]:
    """The hashes that identify a run's data (`RunData`'s ``*_sha256``), taken when the run starts."""
    return {"train_sha256": split_sha256(train, "train"), "valid_sha256": split_sha256(valid or train, "valid"),
            "dataset_manifest_sha256": dataset_manifest_sha256(train)}


def run_data(config, train_records: int, valid_records: int, truncated_records: int,
             hashes: dict[str, str | None]) -> RunData:
    """The `RunData` of a run of ``config``: its paths, sample, record counts and ``hashes`` (`data_hashes`
    when the run started: the files may have changed since, and the run learned from what they were then)."""
    data = config.data
    return RunData(train=data.train, valid=data.valid or data.train, shots=data.shots, sample_seed=data.sample_seed,
                   train_records=train_records, valid_records=valid_records, truncated_records=truncated_records,
                   **hashes)


def split_sha256(path: str | None, split: str) -> str | None:
    """sha256 of the file that holds ``split`` (a folder's split file when ``path`` is a folder)."""
    if not path:
        return None
    target: Path | None = Path(path)
    if target.is_dir():
        target = next((target / f"{split}{suffix}" for suffix in (".jsonl", ".json")
                       if (target / f"{split}{suffix}").exists()), None)
    return sha256_file(target) if target and target.is_file() else None


def dataset_manifest_sha256(path: str | None) -> str | None:
    """sha256 of the manifest of the dataset folder ``path`` is (or lies in), when it has one."""
    if not path:
        return None
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    manifest = folder / MANIFEST_NAME
    return sha256_file(manifest) if manifest.exists() else None


@dataclasses.dataclass
class SourceRun:
    path: str
    created: str | None = None


@dataclasses.dataclass(kw_only=True)
class ExportManifest(TrainedAdapter):
    """What both export kinds add to their run's fields."""
    source_run: SourceRun
    name: str
    base_model_name_or_path: str
    files: dict[str, str]  # relative path -> sha256, every file but the manifest


@dataclasses.dataclass(kw_only=True)
class AdapterExportManifest(ExportManifest):
    KIND: ClassVar[str] = "adapter-export"
    adapter_dir: str = "."
    tokenizer_included: bool
    vllm: dict[str, Any]


@dataclasses.dataclass(kw_only=True)
class MergedExportManifest(ExportManifest):
    KIND: ClassVar[str] = "merged-export"
    merge: dict[str, Any]
    verification: dict[str, Any]


@dataclasses.dataclass(kw_only=True)
class GgufExportManifest(ExportManifest):
    """A GGUF for llama.cpp / Ollama: the LoRA alone (gguf-lora) or merged into its base (gguf)."""
    KIND: ClassVar[str] = "gguf-export"
    gguf: dict[str, Any]  # format, dtype, architecture, file names, base GGUF (file, sha256), modelfile


# ---------------------------------------------------------------------------------- evaluations

@dataclasses.dataclass
class EvaluatedTest:
    name: str
    path: str
    split: str
    limit: int | None = None
    sha256: str | None = None


@dataclasses.dataclass(kw_only=True)
class EvalManifest(Manifest):
    """One test's results (RUN/eval/<test>/): of a model (base_model ...) or of a baseline (baseline, train)."""
    KIND: ClassVar[str] = "eval"
    test: EvaluatedTest
    metrics: dict[str, Any]
    files: list[str]
    base_model: dict[str, Any] | None = None
    adapter: str | None = None
    dtype: str | None = None
    quantization: str | None = None
    prompt: PromptRecord | None = None
    labels: dict[str, Any] | None = None
    score_mode: str | None = None
    calibration: dict[str, Any] | None = None
    compare: list[str] | None = None
    ensembles: list[dict[str, Any]] | None = None
    baseline: str | None = None
    train: str | None = None


@dataclasses.dataclass(kw_only=True)
class ZeroShotCellManifest(Manifest):
    """A sweep's zero-shot cell: the base model scored untuned."""
    KIND: ClassVar[str] = "zero-shot-cell"
    base_model: dict[str, Any]
    prompt: PromptRecord
    labels: dict[str, Any]  # positive_word, negative_word
    config: dict[str, Any]


TYPES: dict[str, type[Manifest]] = {cls.KIND: cls for cls in (
    TrainRunManifest, AdapterExportManifest, MergedExportManifest, GgufExportManifest, EvalManifest,
    ZeroShotCellManifest)}


def parse(raw: dict[str, Any], where: str | Path) -> Manifest | None:
    """The typed manifest of ``raw`` (None for a kind without a type); a missing or mistyped field is an
    ArtifactError naming it."""
    cls = TYPES.get(raw.get("kind"))
    return None if cls is None else _validated(cls, raw, where)


def _validated(cls: type[M], raw: dict[str, Any], where: str | Path) -> M:
    try:
        return from_dict(cls, raw, source=str(where))
    except ConfigError as exc:
        raise ArtifactError(f"{where} is not a valid {cls.KIND} manifest: {'; '.join(exc.problems)}",
                            "re-create the artifact (re-run the command that wrote it)") from None


def load(folder: str | Path, cls: type[M] | tuple[type[Manifest], ...]) -> M:
    """The manifest of ``folder``, of kind ``cls`` (or one of several), typed and validated."""
    kinds = [each.KIND for each in (cls if isinstance(cls, tuple) else (cls,))]
    raw = read_manifest(folder, kinds, typed=False)
    return parse(raw, Path(folder) / MANIFEST_NAME)  # type: ignore[return-value]
