"""Which checkpoint a `--resume` continues from: the newest whole one, the broken ones named."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from tallrec_cli.core.integrity import ADAPTER_WEIGHTS, safetensors_problem

CHECKPOINT_FILES = ("trainer_state.json", ADAPTER_WEIGHTS, "adapter_config.json")
TORCH_FILES = ("*.pt", "*.pth", "*.bin")  # torch.save writes zip archives: optimizer, scheduler, RNG states


def checkpoint_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be resumed from (a file missing, unreadable, truncated or with a damaged header),
    or None when it is whole. Read from headers and sizes: no tensor is loaded."""
    missing = [name for name in CHECKPOINT_FILES if not (folder / name).is_file()]
    if missing:
        return f"{', '.join(missing)} missing"
    try:
        json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"trainer_state.json unreadable ({exc})"
    return safetensors_problem(folder / ADAPTER_WEIGHTS) or _torch_file_problem(folder)


def _torch_file_problem(folder: Path) -> str | None:
    for path in sorted(path for pattern in TORCH_FILES for path in folder.glob(pattern)):
        try:
            with zipfile.ZipFile(path):  # reads the archive's directory, which sits at its end
                pass
        except (OSError, zipfile.BadZipFile) as exc:
            return f"{path.name} is truncated or damaged ({exc})"
    return None


def last_whole_checkpoint(checkpoints: Path) -> tuple[Path | None, dict[str, str]]:
    """The newest complete ``checkpoint-N`` in ``checkpoints`` and, by name, the broken ones that are newer
    (written by a save that was killed or ran out of disk before this tool staged checkpoints, or damaged
    since)."""
    found = sorted((path for path in checkpoints.glob("checkpoint-*")
                    if path.is_dir() and path.name.split("-")[-1].isdigit()),
                   key=lambda path: int(path.name.split("-")[-1]), reverse=True)
    broken = {}
    for path in found:
        problem = checkpoint_problem(path)
        if problem is None:
            return path, broken
        broken[path.name] = problem
    return None, broken
