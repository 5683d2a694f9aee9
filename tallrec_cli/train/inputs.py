"""What a training run started from, so that `--resume` continues that same run and its manifest says what it
learned from.

When a run starts, RUN/inputs.json records its config, the sha256 of its data and its base model's identity.
A resume compares the three with what is there now and refuses any change, naming it; the manifest records
these hashes, not ones taken after training (the files may have changed while it ran). Data paths are made
absolute, so a run's config.yaml and manifest find its records from any folder.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from tallrec_cli.core.config import to_dict
from tallrec_cli.core.errors import ArtifactError
from tallrec_cli.core.files import write_json_atomic
from tallrec_cli.core.manifests import data_hashes
from tallrec_cli.train.config import TrainConfig

INPUTS_NAME = "inputs.json"
_DATA = {"train_sha256": "the training data", "valid_sha256": "the validation data",
         "dataset_manifest_sha256": "the dataset's manifest"}


def absolute_data(config: TrainConfig) -> TrainConfig:
    """``config`` with absolute data paths (relative ones resolved against the current folder)."""
    data = config.data
    paths = {key: str(Path(getattr(data, key)).expanduser().absolute())
             for key in ("train", "valid") if getattr(data, key)}
    return dataclasses.replace(config, data=dataclasses.replace(data, **paths))


@dataclasses.dataclass(frozen=True)
class RunInputs:
    """A run's config (as a dict), the sha256 of its data (`data_hashes`) and its base model's identity."""
    config: dict[str, Any]
    data: dict[str, str | None]
    base_model: dict[str, Any]

    @classmethod
    def of(cls, config: TrainConfig, base_model: dict[str, Any]) -> RunInputs:
        return cls(to_dict(config), data_hashes(config.data.train, config.data.valid), base_model)

    def write(self, folder: Path) -> None:
        write_json_atomic(folder / INPUTS_NAME, dataclasses.asdict(self))


def config_changes(started: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``lora.r: 8 -> 16`` for each config key that differs; where the run is written (``output``) may."""
    before, after = _flat(started), _flat(now)
    return [f"{key}: {before.get(key)!r} -> {after.get(key)!r}" for key in sorted(set(before) | set(after))
            if not key.startswith("output.") and before.get(key) != after.get(key)]


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        flat.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def check_resume(folder: Path, run_dir: str | Path, now: RunInputs) -> RunInputs:
    """The inputs the run in ``folder`` started with, when ``now`` matches them; any change (recipe, data, base
    model) is an ArtifactError naming the run and each change. A run started before inputs were recorded has
    nothing to compare."""
    try:
        started = RunInputs(**json.loads((folder / INPUTS_NAME).read_text(encoding="utf-8")))
    except FileNotFoundError:
        return now
    except (OSError, ValueError, TypeError) as exc:
        raise ArtifactError(f"{folder / INPUTS_NAME} is damaged ({exc}): run {run_dir} cannot check what it "
                            "started with", "start the run again with --overwrite") from None
    changes = config_changes(started.config, now.config) + _data_changes(started, now)
    changes += [f"base model {key}: {started.base_model.get(key)!r} -> {now.base_model.get(key)!r}"
                for key in sorted((set(started.base_model) | set(now.base_model)) - {"path"})  # it may move
                if started.base_model.get(key) != now.base_model.get(key)]
    if changes:
        raise ArtifactError(f"run {run_dir} started from other inputs than are here now, so --resume would "
                            f"continue it on different ones: {'; '.join(changes)}",
                            "restore what it started with to resume, or train it again with --overwrite")
    return started


def _data_changes(started: RunInputs, now: RunInputs) -> list[str]:
    data = now.config["data"]
    where = {"train_sha256": data["train"], "valid_sha256": data["valid"] or data["train"],
             "dataset_manifest_sha256": data["train"]}
    return [f"{what} in {where[key]} changed (its sha256 is no longer {started.data.get(key)})"
            for key, what in _DATA.items() if started.data.get(key) != now.data.get(key)]
