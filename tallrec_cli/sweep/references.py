"""Classic baselines beside a sweep's cells: fitted on the same few-shot samples `run_training` draws, and
full-data references once per training pool; stored in SWEEP/baselines/ and reused on resume."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from data_builders import load_split, sample_records
from tallrec_cli.core.files import write_json_atomic
from tallrec_cli.core.formatting import format_value
from tallrec_cli.eval.baselines import FULL_DATA_REFERENCES, evaluate_baselines, full_data_references
from tallrec_cli.eval.records import load_test_records
from tallrec_cli.sweep.grid import Cell, slug
from tallrec_cli.sweep.report import baseline_observations, reference_observations
from tallrec_cli.sweep.spec import SweepSpec, absolute_path, json_hash


def compute_baselines(spec: SweepSpec, cells: list[Cell], configs: dict[str, Any], sweep_dir: Path,
                      log: Callable[[str], None]) -> list[dict]:
    """Baselines on every distinct few-shot sample of the grid (same records `run_training` draws), kept
    in SWEEP/baselines/ and reused on resume. Returns their observations."""

    samples = {}
    for cell in cells:
        if cell.zero_shot:
            continue
        data = configs[cell.id].data
        key = (cell.domain, absolute_path(data.train), cell.shots, cell.seed, data.stratify)
        samples.setdefault(key, cell)
    observations = []
    pools: dict[str, list[dict]] = {}
    tests: dict[str, list[dict]] = {}
    for (domain, train, shots, seed, stratify), cell in samples.items():
        digest = hashlib.sha256(f"{train}|{stratify}".encode()).hexdigest()[:8]
        path = sweep_dir / "baselines" / f"{slug(domain) + '_' if domain else ''}k{shots}-s{seed}-{digest}.json"
        fingerprint = json_hash([train, shots, seed, stratify, cell.eval_fingerprint()])
        stored = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        if stored is None or stored.get("fingerprint") != fingerprint:
            if train not in pools:
                pools[train] = load_split(train, "train")
            # `run_training` draws its shots this way (data_builders.sample_records, sample_seed = seed)
            sample = sample_records(pools[train], shots, seed, stratify=stratify)
            results = {}
            for label, test_path in cell.tests.items():
                if test_path not in tests:
                    tests[test_path] = load_test_records(test_path, limit=spec.test_limit)
                results[label] = evaluate_baselines(sample, tests[test_path], seed)
            stored = {"fingerprint": fingerprint, "domain": domain, "train": train, "shots": shots, "seed": seed,
                      "stratify": stratify, "train_ids": [record["id"] for record in sample], "tests": results}
            write_json_atomic(path, stored)
            log(f"baselines k={shots} seed={seed}{f' ({domain})' if domain else ''}: " + ", ".join(
                f"{label} {name} {format_value(metrics['auc'])}" for label, by_name in results.items()
                for name, metrics in by_name.items()))
        observations.extend(baseline_observations(stored))
    # full-data references: fitted once per training pool on all of it, shown beside every shots column
    shots_columns = sorted({cell.shots for cell in cells if not cell.zero_shot})
    references = {(cell.domain, absolute_path(configs[cell.id].data.train)): cell for cell in cells}
    for (domain, train), cell in references.items():
        digest = hashlib.sha256(f"{train}".encode()).hexdigest()[:8]
        path = sweep_dir / "baselines" / f"{slug(domain) + '_' if domain else ''}reference-{digest}.json"
        # the rule that picks them: prompt-numbers joins where prompts print context (full_data_references)
        fingerprint = json_hash([train, [*FULL_DATA_REFERENCES, "prompt-numbers"], cell.eval_fingerprint()])
        stored = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        if stored is None or stored.get("fingerprint") != fingerprint:
            if train not in pools:
                pools[train] = load_split(train, "train")
            results = {}
            for label, test_path in cell.tests.items():
                if test_path not in tests:
                    tests[test_path] = load_test_records(test_path, limit=spec.test_limit)
                results[label] = evaluate_baselines(pools[train], tests[test_path], 0,
                                                    full_data_references(pools[train], tests[test_path]))
            stored = {"fingerprint": fingerprint, "kind": "reference", "domain": domain, "train": train,
                      "train_records": len(pools[train]), "tests": results}
            write_json_atomic(path, stored)
            log(f"full-data references{f' ({domain})' if domain else ''}: " + ", ".join(
                f"{label} {name} {format_value(metrics['auc'])}" for label, by_name in results.items()
                for name, metrics in by_name.items()))
        observations.extend(reference_observations(stored, shots_columns))
    return observations
