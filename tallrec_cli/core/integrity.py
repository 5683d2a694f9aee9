"""Is an artifact intact? Files re-hashed against the sha256 values its manifest recorded, safetensors parsed
whole, an adapter folder checked before any weights load. Shared by export, inference loading and the
adapter registry."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tallrec_cli.core.errors import ArtifactError
from tallrec_cli.core.files import file_hashes, sha256_file

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


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


def check_adapter_intact(folder: str | Path, recorded: dict[str, str],
                         adapter_dir: str | Path) -> tuple[dict[str, Any], list[str]]:
    """Before any weights load: the files match the hashes the manifest recorded (``recorded``, relative path
    -> sha256; an export's, a run records none), and the adapter's config and weights parse (no truncation,
    damaged header or non-finite values). Returns (config, tensor names)."""
    folder, adapter_dir = Path(folder), Path(adapter_dir)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (adapter_dir / name).is_file():
            raise ArtifactError(f"{adapter_dir / name} is missing", "the folder is incomplete; retrain or export again")
    if recorded:
        check = check_files(folder, recorded, allow_extra=True)
        if not check.ok:
            raise ArtifactError(f"{folder} does not match the hashes in its manifest ({check.describe()})",
                                "it was modified after it was written; restore the files, retrain or export again")
    config_path = adapter_dir / ADAPTER_CONFIG
    try:
        adapter_config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{config_path} is not valid JSON ({exc})", "restore it, retrain or export again") from None
    if not isinstance(adapter_config, dict):
        raise ArtifactError(f"{config_path} does not hold a JSON object", "restore it, retrain or export again")
    return adapter_config, check_safetensors(adapter_dir / ADAPTER_WEIGHTS)
