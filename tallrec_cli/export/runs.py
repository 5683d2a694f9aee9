"""A finished train run opened for export: its manifest, its adapter checked intact, and the base model
it was trained on, found again and checked unchanged."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

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
from tallrec_cli.export.cards import EMBEDDED_LICENSES, BaseRef, Example
from tallrec_cli.model.loading import (
    EMBEDDED_MODELS,
    ModelSource,
    check_adapter_matches_base,
    load_tokenizer,
    model_identity,
    resolve_model_source,
)
from tallrec_cli.model.prompts import load_template

# Built-in records: a merge is verified on them when the run's validation data is gone (labels make AUC
# computable), and a card's snippets score the first (no user's data in a public card).
SAMPLE_RECORDS = [
    {"instruction": "Given the user's preference and unpreference, identify whether the user will like the "
                    'target movie by answering "Yes." or "No.".',
     "input": f'User Preference: {liked}\nUser Unpreference: {disliked}\n'
              f'Whether the user will like the target movie "{target}"?',
     "label": label}
    for liked, disliked, target, label in [
        ('"Toy Story (1995)", "Star Wars (1977)"', '"Heat (1995)"', "Fargo (1996)", 1),
        ('"Heat (1995)"', '"Toy Story (1995)"', "Babe (1995)", 0),
        ('"Fargo (1996)", "Heat (1995)"', "", "Casino (1995)", 1),
        ('"Babe (1995)"', '"Star Wars (1977)", "Fargo (1996)"', "Twister (1996)", 0),
        ('"Star Wars (1977)"', '"Babe (1995)"', "Return of the Jedi (1983)", 1),
        ("", '"Casino (1995)", "Heat (1995)"', "Copycat (1995)", 0),
        ('"Toy Story (1995)"', '"Twister (1996)"', "Aladdin (1992)", 1),
        ('"Copycat (1995)"', '"Aladdin (1992)"', "Pocahontas (1995)", 0),
    ]
]


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


# A folder inside a Hugging Face hub cache: .../models--OWNER--NAME/snapshots/REVISION
HUB_SNAPSHOT = re.compile(r"models--([^/]+)--([^/]+)/snapshots/([0-9a-f]{40})$")


def hub_origin(source: ModelSource) -> tuple[str | None, str | None]:
    """(hub id, revision) of a base where they are known: a hub id (with the revision of its cached snapshot)
    or a local folder that is a hub cache snapshot; (None, None) otherwise."""
    if source.kind == "hub":
        return source.name, _cached_revision(source.name)
    if source.kind == "local":
        match = HUB_SNAPSHOT.search(Path(source.path).as_posix())
        if match:
            return f"{match[1]}/{match[2]}", match[3]
    return None, None


def _cached_revision(repo_id: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache  # heavy import, only where a hub base is exported

    found = try_to_load_from_cache(repo_id, "config.json")
    return Path(found).parent.name if isinstance(found, str) else None


def serving_name(source: ModelSource) -> str:
    """What other tools should load as the base, the same on any machine: the hub id when there is one, else
    the local folder's (or GGUF file's) own name, for the user to point at their copy."""
    hub_id, _ = hub_origin(source)
    if source.kind == "embedded":
        return EMBEDDED_MODELS[source.name][2]
    if hub_id:
        return hub_id
    if source.kind == "gguf":
        return source.gguf_file
    return Path(source.path).name


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


def base_identity(source: ModelSource, recorded: dict[str, Any]) -> dict[str, Any]:
    """The base model as an export records it: portable fields (``name`` that tallrec resolves, hub id and
    revision where known, the content hashes of ``recorded``, its `model_identity`) and, under ``provenance``
    only, where it lay on this machine."""
    hub_id, revision = hub_origin(source)
    portable_name = source.name if source.kind in ("embedded", "random") else serving_name(source)
    hashes = {key: value for key, value in recorded.items() if key.endswith("_sha256") or key == "seed"}
    return {"kind": source.kind, "name": portable_name,
            **({"hub_id": hub_id, "revision": revision} if hub_id else {}),
            **({"gguf_file": source.gguf_file} if source.gguf_file else {}), **hashes,
            "provenance": {"name": source.name, "path": source.path}}


EXPORT_KINDS = ("adapter-export", "merged-export", "gguf-export")  # what --overwrite may replace: any export
# Where an export's manifest may name paths of the machine that made it: provenance, never identity.
PROVENANCE_FIELDS = ("command", "source_run", "data.train", "data.valid", "base_model.provenance",
                     "calibration.selected.fitted_on.source", "calibration.fits.*.fitted_on.source")


def check_output(output: Path, run_dir: str | Path, base_model: str | None, overwrite: bool) -> None:
    """Before any work: the output must not be (or hold, or sit in) the run or the base model, and must be free
    (or, with ``overwrite``, hold an export)."""
    refuse_overlap(output, [run_dir, base_model if base_model and Path(base_model).exists() else None])
    check_output_folder(output, EXPORT_KINDS, overwrite)


def run_payload(run: TrainRun, source: ModelSource | None = None) -> dict[str, Any]:
    """What an export carries over from its run manifest (recognising the base, prompting, provenance), with
    the base identified portably (`base_identity`): ``source`` is the base exported against (default: the
    run's own, as its manifest recorded it). Local paths stay only in ``PROVENANCE_FIELDS``."""
    recorded = run.manifest.base_model if source is None else model_identity(source)
    source = source or ModelSource(recorded["kind"], recorded["name"], recorded["path"], recorded.get("gguf_file"))
    carried = run.manifest.carried()
    summary = carried.get("base_model_config")
    if summary and "name_or_path" in summary:  # the folder the config was read from on this machine
        summary = {**summary, "name_or_path": serving_name(source)}
    return {**carried, "base_model": base_identity(source, recorded), "base_model_config": summary,
            "source_run": SourceRun(str(run.path.resolve()), run.manifest.created)}


def base_ref(source: ModelSource, identity: dict[str, Any]) -> BaseRef:
    """The base as cards name it, from `base_identity`: hub id (the embedded model's original), revision,
    license and the content hashes."""
    embedded = source.kind == "embedded"
    hub_id = EMBEDDED_MODELS[source.name][2] if embedded else identity.get("hub_id")
    hashes = {key: value for key, value in identity.items() if key.endswith("_sha256")}
    return BaseRef(serving_name(source), hub_id, identity.get("revision"), _base_license(source, hub_id), embedded,
                   hashes)


def _base_license(source: ModelSource, hub_id: str | None) -> str | None:
    """The base's license: the embedded model's original's, else the ``license`` of the base's own model card
    (its folder's README.md, or the hub cache's copy)."""
    if hub_id in EMBEDDED_LICENSES:
        return EMBEDDED_LICENSES[hub_id]
    readme = Path(source.path) / "README.md"
    if source.kind == "hub":
        from huggingface_hub import try_to_load_from_cache  # heavy import, only where a hub base is exported

        found = try_to_load_from_cache(source.name, "README.md")
        readme = Path(found) if isinstance(found, str) else readme
    if not readme.is_file():
        return None
    text = readme.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---\n") or "\n---" not in text[4:]:
        return None
    try:
        meta = yaml.safe_load(text[4:text.index("\n---", 4)])
    except yaml.YAMLError:
        return None
    license_name = meta.get("license") if isinstance(meta, dict) else None
    return license_name if isinstance(license_name, str) else None


def card_example(run: TrainRun, source: ModelSource) -> Example:
    """The first built-in record rendered with the run's template and tokenizer, and its label token ids."""
    tokenizer_source = ModelSource("local", str(run.adapter_dir), str(run.adapter_dir)) if run.has_tokenizer else source
    prompt = load_template(run.manifest.prompt.template).render(SAMPLE_RECORDS[0], load_tokenizer(tokenizer_source))
    labels = run.manifest.labels
    return Example(prompt, int(labels["positive_id"]), int(labels["negative_id"]))
