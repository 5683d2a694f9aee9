"""A finished train run opened for export: its manifest, its adapter checked intact, and the base model
it was trained on, found again and checked unchanged."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tallrec_cli.core.errors import ArtifactError, ModelError
from tallrec_cli.core.files import (
    MANIFEST_NAME,
    check_output_folder,
    refuse_overlap,
)
from tallrec_cli.core.integrity import check_adapter_intact
from tallrec_cli.core.manifests import (
    SourceRun,
    TrainRunManifest,
)
from tallrec_cli.core.manifests import load as load_manifest
from tallrec_cli.model.loading import (
    EMBEDDED_MODELS,
    ModelSource,
    check_adapter_matches_base,
    model_identity,
    resolve_model_source,
)


@dataclass(frozen=True)
class TrainRun:
    """A finished train run folder, with its adapter checked to be intact."""
    path: Path
    manifest: TrainRunManifest
    adapter_dir: Path
    adapter_config: dict[str, Any]
    tensor_names: tuple[str, ...]

    @property
    def has_tokenizer(self) -> bool:
        return (self.adapter_dir / "tokenizer_config.json").exists()


def load_train_run(run_dir: str | Path) -> TrainRun:
    """Open a run folder for export; refuse an unfinished run or a damaged adapter."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ArtifactError(f"run folder {run_dir} does not exist", "pass the folder `tallrec train` wrote")
    if not (run_dir / MANIFEST_NAME).exists():
        raise ArtifactError(
            f"{run_dir} has no {MANIFEST_NAME}: the training run never finished (the manifest is written last), "
            "so there is no final adapter to export",
            "let `tallrec train` finish, or resume it with --resume",
        )
    manifest = load_manifest(run_dir, TrainRunManifest)
    adapter_dir = run_dir / manifest.adapter_dir
    adapter_config, names = check_adapter_intact(run_dir, manifest.files or {}, adapter_dir)
    return TrainRun(run_dir, manifest, adapter_dir, adapter_config, tuple(names))


def resolve_base(run: TrainRun, base_model: str | None = None) -> ModelSource:
    """The base model to export against: the run's own (checked unchanged since training) or ``base_model``
    (checked to have the architecture and size the adapter was trained on)."""
    from transformers import AutoConfig

    recorded = run.manifest.base_model
    name = base_model or recorded.get("name")
    if not name:
        raise ArtifactError(f"{run.path}/{MANIFEST_NAME} names no base model", "pass --base-model")
    try:
        source = resolve_model_source(name)
    except ModelError as exc:
        raise ModelError(f"the run's base model is not available here: {exc.message}",
                         "pass --base-model with a copy of the model the run was trained on") from None
    if base_model is None:
        current = model_identity(source)
        changed = sorted(key for key in recorded if key.endswith("_sha256") and key in current
                         and current[key] != recorded[key])
        if changed:
            raise ModelError(f"base model {name} changed since the run was trained ({', '.join(changed)} differ)",
                             "pass --base-model with the exact model the run was trained on")
    try:
        config = AutoConfig.from_pretrained(source.path, gguf_file=source.gguf_file)
    except OSError as exc:
        raise ModelError(f"cannot read the config of {name}: {str(exc).splitlines()[0]}", "check --base-model") from None
    check_adapter_matches_base(run.path, config, option="--base-model")
    return source


def serving_name(source: ModelSource) -> str:
    """What other tools should load as the base: the hub id when there is one, else the local path."""
    if source.kind == "embedded":
        return EMBEDDED_MODELS[source.name][2]
    if source.kind == "hub":
        return source.name
    if source.kind == "gguf":
        return str(Path(source.path) / source.gguf_file)
    return source.path


def tokenizer_differs(run: TrainRun, source: ModelSource) -> bool:
    """True when the run's tokenizer is not the base's (added tokens, other vocabulary or chat template)."""
    from transformers import AutoTokenizer

    if not run.has_tokenizer:
        return False
    mine = AutoTokenizer.from_pretrained(run.adapter_dir)
    base = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)

    def signature(tokenizer):
        added = {index: str(token) for index, token in tokenizer.added_tokens_decoder.items()}
        return tokenizer.get_vocab(), added, getattr(tokenizer, "chat_template", None)

    return signature(mine) != signature(base)


EXPORT_KINDS = ("adapter-export", "merged-export")  # what --overwrite may replace: an export of either kind


def check_output(output: Path, run_dir: str | Path, base_model: str | None, overwrite: bool) -> None:
    """Before any work: the output must not be (or hold, or sit in) the run or the base model, and must be free
    (or, with ``overwrite``, hold an export)."""
    refuse_overlap(output, [run_dir, base_model if base_model and Path(base_model).exists() else None])
    check_output_folder(output, EXPORT_KINDS, overwrite)


def run_payload(run: TrainRun) -> dict[str, Any]:
    """What an export carries over from its run manifest (recognising the base, prompting, provenance)."""
    return {**run.manifest.carried(), "source_run": SourceRun(str(run.path.resolve()), run.manifest.created)}
