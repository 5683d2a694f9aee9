"""Is an artifact intact? Files re-hashed against the sha256 values its manifest recorded, safetensors parsed
whole (or, cheaply, their header against their size), an adapter folder checked before any weights load, a
dataset's record files checked against the sizes and hashes `tallrec data` recorded. Shared by every command
that reads an artifact."""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tallrec_cli.core.errors import ArtifactError, DataError
from tallrec_cli.core.files import MANIFEST_NAME, file_hashes, sha256_file
from tallrec_cli.core.manifests import read_manifest

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
RECORDED_FILES = "file_hashes"  # dataset and samples manifests: file name -> {"bytes", "sha256"}
_WRITTEN_BY = {"dataset": "`tallrec data build` (or `data import`)", "samples": "`tallrec data sample`"}
_SHA256: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256: one hash per file and process


def sha256_cached(path: str | os.PathLike) -> str:
    """sha256 of ``path``, hashed once per process while its size and modification time stay the same."""
    stat = os.stat(path)
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256:
        _SHA256[key] = sha256_file(path)
    return _SHA256[key]


def record_files(folder: str | os.PathLike, names: list[str]) -> dict[str, dict[str, Any]]:
    """What a dataset manifest records of its files (``RECORDED_FILES``): size and sha256 of each."""
    return {name: {"bytes": (Path(folder) / name).stat().st_size, "sha256": sha256_cached(Path(folder) / name)}
            for name in names}


def check_recorded_file(path: str | os.PathLike) -> None:
    """Refuse a record file whose size or sha256 differs from what the manifest of its folder (a dataset or
    sample set) recorded: it changed after it was written. Files of folders without one pass."""
    path = Path(path)
    if not (path.parent / MANIFEST_NAME).is_file():
        return
    manifest = read_manifest(path.parent, typed=False)
    recorded = (manifest.get(RECORDED_FILES) or {}).get(path.name)
    if manifest.get("kind") not in _WRITTEN_BY or recorded is None:
        return  # written before sizes and hashes were recorded
    size = path.stat().st_size
    if size != recorded["bytes"]:
        change = f"is {size:,} bytes, {recorded['bytes']:,} when it was written"
    elif sha256_cached(path) != recorded["sha256"]:
        change = "has the size it was written with but another sha256 (its content was edited)"
    else:
        return
    raise DataError(f"{path} {change}: it changed after {_WRITTEN_BY[manifest['kind']]} wrote it "
                    f"({path.parent / MANIFEST_NAME} records its size and sha256)",
                    "restore the file, or rebuild the folder with the command that wrote it (--overwrite)")


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a whole safetensors file (missing, truncated, damaged header), read from its header
    and size alone (no tensor is loaded); None when it is whole."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length)) if 8 + length <= size else None
    except (OSError, struct.error, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return f"{path.name} is missing or its header is damaged"
    if not isinstance(header, dict):
        return f"{path.name} is truncated ({size:,} bytes, shorter than its header says)"
    try:
        end = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError):
        return f"{path.name} has a damaged header"
    if 8 + length + end != size:
        return f"{path.name} is truncated or padded ({size:,} bytes, its header says {8 + length + end:,})"
    return None


def adapter_hashes(folder: str | os.PathLike, adapter_dir: str = "adapter") -> dict[str, str]:
    """sha256 of every file of a run's adapter, keyed by its path in the run folder (the run manifest's
    ``files``), so loading can tell a changed byte from the adapter training wrote."""
    return {f"{adapter_dir}/{name}": digest for name, digest in file_hashes(Path(folder) / adapter_dir).items()}


@dataclass(frozen=True)
class FileCheck:
    """Result of re-hashing a folder against recorded sha256 values."""
    changed: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not (self.changed or self.missing or self.extra)

    def describe(self) -> str:
        parts = [f"{what}: {', '.join(names)}" for what, names in
                 (("changed", self.changed), ("missing", self.missing), ("extra", self.extra)) if names]
        return "; ".join(parts) or "all files match"


def check_files(folder: str | Path, expected: dict[str, str], allow_extra: bool = False) -> FileCheck:
    """Re-hash ``folder`` against ``expected`` (relative path -> sha256)."""
    folder = Path(folder)
    missing = tuple(sorted(name for name in expected if not (folder / name).is_file()))
    changed = tuple(sorted(name for name in expected
                           if name not in missing and sha256_file(folder / name) != expected[name]))
    extra = () if allow_extra else tuple(sorted(set(file_hashes(folder)) - set(expected)))
    return FileCheck(changed, missing, extra)


def check_safetensors(path: str | Path) -> list[str]:
    """Parse a safetensors file completely and return its tensor names; truncation, a damaged header or
    non-finite values are an ArtifactError naming the file."""
    import torch
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            names = list(handle.keys())
            bad = [name for name in names if not torch.isfinite(handle.get_tensor(name)).all()]
    except Exception as exc:  # safetensors raises its own error types for every kind of damage
        raise ArtifactError(f"{path} is damaged or truncated: cannot be read as safetensors "
                            f"({str(exc).splitlines()[0]})", "re-create it (re-run training or the export)") from None
    if bad:
        raise ArtifactError(f"{path} holds non-finite values in {', '.join(bad[:3])}",
                            "the training run diverged; export another checkpoint or retrain")
    return names


def check_recorded_hashes(folder: str | Path, recorded: dict[str, str]) -> None:
    """Before any weights load: the files match the hashes the manifest recorded (relative path -> sha256; empty
    for an artifact written before manifests recorded them)."""
    check = check_files(folder, recorded, allow_extra=True)
    if recorded and not check.ok:
        raise ArtifactError(f"{folder} does not match the hashes in its manifest ({check.describe()})",
                            "it was modified after it was written; restore the files, retrain or export again")


def check_adapter_intact(folder: str | Path, recorded: dict[str, str],
                         adapter_dir: str | Path) -> tuple[dict[str, Any], list[str]]:
    """Before any weights load: the files match the hashes the manifest recorded (``recorded``, relative path
    -> sha256: an export's or a run's ``files``; empty for a run written before runs recorded them), and the
    adapter's config and weights parse (no truncation, damaged header or non-finite values). Returns
    (config, tensor names)."""
    folder, adapter_dir = Path(folder), Path(adapter_dir)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (adapter_dir / name).is_file():
            raise ArtifactError(f"{adapter_dir / name} is missing", "the folder is incomplete; retrain or export again")
    check_recorded_hashes(folder, recorded)
    config_path = adapter_dir / ADAPTER_CONFIG
    try:
        adapter_config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{config_path} is not valid JSON ({exc})", "restore it, retrain or export again") from None
    if not isinstance(adapter_config, dict):
        raise ArtifactError(f"{config_path} does not hold a JSON object", "restore it, retrain or export again")
    return adapter_config, check_safetensors(adapter_dir / ADAPTER_WEIGHTS)
