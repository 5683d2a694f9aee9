"""A folder of adapter exports, one sub-folder per adapter, its name the folder name.

Every entry is a complete ``adapter-export`` (PEFT files, card, manifest with the sha256 of every file),
so plain PEFT or vLLM can load an entry straight from the store, and ``verify`` can tell exactly which
file changed, went missing or appeared.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from tallrec_cli.core.errors import ArtifactError, ConfigError
from tallrec_cli.core.files import MANIFEST_NAME, refuse_overlap, staged_dir, tallrec_home
from tallrec_cli.core.integrity import FileCheck, check_files
from tallrec_cli.core.manifests import AdapterExportManifest
from tallrec_cli.core.manifests import load as load_manifest

STORE_ENV = "TALLREC_ADAPTERS"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def default_store() -> Path:
    """``$TALLREC_ADAPTERS``, else ``tallrec_home()/adapters``."""
    return Path(os.environ[STORE_ENV]) if os.environ.get(STORE_ENV) else tallrec_home() / "adapters"


def resolve_store(store: str | Path | None = None) -> Path:
    """The store folder; a path that is a file is an error (it can hold no adapters)."""
    root = Path(store).expanduser() if store else default_store()
    if root.exists() and not root.is_dir():
        raise ConfigError(f"the adapter store {root} is a file, not a folder",
                          "pass --store (or set TALLREC_ADAPTERS to) a folder")
    return root


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ConfigError(f"adapter name {name!r} is not allowed",
                          "use letters, digits, '.', '_' or '-' (starting with a letter or digit)")
    return name


def adapter_path(name: str, store: str | Path | None = None) -> Path:
    """The folder of adapter ``name``; an unknown name lists the known ones."""
    root = resolve_store(store)
    path = root / check_name(name)
    if not path.is_dir():
        known = ", ".join(entry.name for entry in list_adapters(root)) or "none"
        raise ArtifactError(f"no adapter named {name!r} in {root} (known: {known})",
                            "`tallrec adapters list` shows the store; --store or TALLREC_ADAPTERS picks another")
    return path


@dataclass(frozen=True)
class AdapterEntry:
    name: str
    path: Path
    base_model: str | None = None
    dataset: str | None = None
    shots: int | None = None
    seed: int | None = None
    auc: float | None = None
    size_bytes: int = 0
    created: str | None = None
    problem: str | None = None  # why the folder is not a readable export


def _entry(path: Path) -> AdapterEntry:
    size = sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
    try:
        manifest = load_manifest(path, AdapterExportManifest)
    except ArtifactError as exc:
        return AdapterEntry(path.name, path, size_bytes=size, problem=exc.message)
    return AdapterEntry(
        name=path.name, path=path, base_model=manifest.base_model_name_or_path, dataset=manifest.data.dataset_name,
        shots=manifest.data.shots, seed=manifest.data.sample_seed, auc=manifest.val_auc, size_bytes=size,
        created=manifest.created,
    )


def list_adapters(store: str | Path | None = None) -> list[AdapterEntry]:
    """Every adapter folder in the store, by name; staging folders of unfinished exports are hidden."""
    root = resolve_store(store)
    if not root.is_dir():
        return []
    return [_entry(path) for path in sorted(root.iterdir()) if path.is_dir() and not path.name.startswith(".")]


def check_free(name: str, store: str | Path | None = None, overwrite: bool = False) -> Path:
    """The store folder for ``name``, refused when taken (unless ``overwrite``): checked before any export work."""
    target = resolve_store(store) / check_name(name)
    if target.exists() and not overwrite:
        raise ArtifactError(f"the store already holds an adapter named {target.name!r}",
                            "pass --overwrite to replace it, or choose another --name")
    return target


def add_adapter(export_dir: str | Path, name: str | None = None, store: str | Path | None = None,
                overwrite: bool = False) -> Path:
    """Copy an intact adapter export into the store under ``name`` (default: its folder name)."""
    export_dir = Path(export_dir)
    manifest = load_manifest(export_dir, AdapterExportManifest)
    check = check_files(export_dir, manifest.files)
    if not check.ok:
        raise ArtifactError(f"{export_dir} does not match its manifest ({check.describe()})", "re-export it")
    target = check_free(name or export_dir.name, store, overwrite)
    refuse_overlap(target, [export_dir])
    with staged_dir(target, AdapterExportManifest.KIND, overwrite=overwrite) as staging:
        shutil.copytree(export_dir, staging, dirs_exist_ok=True)
    return target


def verify_adapter(name: str, store: str | Path | None = None) -> FileCheck:
    """Re-hash every file of adapter ``name`` against its manifest."""
    path = adapter_path(name, store)
    manifest = load_manifest(path, AdapterExportManifest)
    if not manifest.files:
        raise ArtifactError(f"{path / MANIFEST_NAME} records no file hashes", "re-export the adapter")
    return check_files(path, manifest.files)


def read_card(name: str, store: str | Path | None = None) -> str:
    card = adapter_path(name, store) / "README.md"
    if not card.is_file():
        raise ArtifactError(f"adapter {name!r} has no README.md card", "re-export it")
    return card.read_text(encoding="utf-8")


def remove_adapter(name: str, store: str | Path | None = None) -> Path:
    path = adapter_path(name, store)
    shutil.rmtree(path)
    return path
