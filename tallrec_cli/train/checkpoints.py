"""Which checkpoint a `--resume` continues from: the newest whole one, the broken ones named."""

from __future__ import annotations

import json
from pathlib import Path

CHECKPOINT_FILES = ("trainer_state.json", "adapter_model.safetensors", "adapter_config.json")


def checkpoint_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be resumed from (a file missing or unreadable), or None when it is whole."""
    missing = [name for name in CHECKPOINT_FILES if not (folder / name).is_file()]
    if missing:
        return f"{', '.join(missing)} missing"
    try:
        json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"trainer_state.json unreadable ({exc})"
    return None


def last_whole_checkpoint(checkpoints: Path) -> tuple[Path | None, dict[str, str]]:
    """The newest complete ``checkpoint-N`` in ``checkpoints`` and, by name, the broken ones that are newer
    (written by a save that was killed or ran out of disk before this tool staged checkpoints)."""
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
