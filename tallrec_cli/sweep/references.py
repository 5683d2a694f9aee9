"""Classic references beside a sweep's cells: equal-data references fitted on each cell's own records (the
sample `run_training` draws) and the ratings their histories list, nothing else; full-data references fitted
once per training pool. Stored with their per-record scores (the paired comparisons read them) in
SWEEP/baselines/, one file per sample and one per pool, and reused on resume."""

from __future__ import annotations

import functools
import hashlib
import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from data_builders import load_split, sample_records
from tallrec_cli.core.files import write_json_atomic
from tallrec_cli.core.formatting import format_value
from tallrec_cli.eval.baselines import (
    EQUAL_DATA_REFERENCES,
    FULL_DATA_REFERENCES,
    full_data_references,
    score_and_evaluate,
)
from tallrec_cli.eval.records import load_test_records
from tallrec_cli.sweep.grid import Cell, slug
from tallrec_cli.sweep.report import baseline_observations, reference_observations
from tallrec_cli.sweep.spec import SweepSpec, absolute_path, json_hash

STORE_VERSION = 2  # stored files of an earlier version (no per-record scores, two few-shot references) are refit


class _Inputs:
    """Training pools and test slices, each loaded once."""

    def __init__(self, test_limit: int | None):
        self.test_limit = test_limit
        self.pools: dict[str, list[dict]] = {}
        self.tests: dict[str, list[dict]] = {}

    def pool(self, train: str) -> list[dict]:
        if train not in self.pools:
            self.pools[train] = load_split(train, "train")
        return self.pools[train]

    def test(self, path: str) -> list[dict]:
        if path not in self.tests:
            self.tests[path] = load_test_records(path, limit=self.test_limit)
        return self.tests[path]


def _variants(keys: list[tuple], name: Callable[..., str]) -> dict[tuple, str | None]:
    """``name(*key[1:])`` per key (domain, pool, ...) where a domain holds several keys (an axis over data.train
    or data.stratify), so their rows stay apart in the table; None where the domain holds one."""
    per_domain = defaultdict(set)
    for key in keys:
        per_domain[key[0]].add(key)
    return {key: name(*key[1:]) if len(per_domain[key[0]]) > 1 else None for key in keys}


def _scored(inputs: _Inputs, cell: Cell, train: list[dict], seed: int, names, with_histories: bool) -> dict:
    """Metrics and per-record scores of ``names`` fitted on ``train``, on every test of ``cell``."""
    tests, predictions = {}, {}
    for label, path in cell.tests.items():
        records = inputs.test(path)
        scored = score_and_evaluate(train, records, seed, names(records) if callable(names) else names,
                                    with_histories)
        tests[label] = {name: metrics for name, (_, metrics) in scored.items()}
        predictions[label] = {"ids": [record.get("id") for record in records],
                              **{name: scores.tolist() for name, (scores, _) in scored.items()}}
    return {"tests": tests, "predictions": predictions}


def _stored(path: Path, fingerprint: str) -> dict | None:
    stored = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    return stored if stored is not None and stored.get("fingerprint") == fingerprint else None


def _aucs(stored: dict) -> str:
    return ", ".join(f"{label} {name} {format_value(metrics['auc'])}" for label, by_name in stored["tests"].items()
                     for name, metrics in by_name.items())


def compute_baselines(spec: SweepSpec, cells: list[Cell], configs: dict[str, Any], sweep_dir: Path,
                      log: Callable[[str], None]) -> list[dict]:
    """Equal-data references on every distinct sample of the grid (the records `run_training` draws) and
    full-data references per training pool, kept in SWEEP/baselines/ and reused on resume. Each file lists
    the cells it stands beside (``cells``). Returns their observations."""
    inputs = _Inputs(spec.test_limit)
    samples: dict[tuple, list[Cell]] = defaultdict(list)
    pools: dict[tuple, list[Cell]] = defaultdict(list)
    for cell in cells:
        data = configs[cell.id].data
        train = absolute_path(data.train)
        pools[(cell.domain, train)].append(cell)
        if not cell.zero_shot:
            samples[(cell.domain, train, data.stratify, cell.shots, cell.seed)].append(cell)
    variants = _variants([key[:3] for key in samples],
                         lambda train, stratify: f"{Path(train).name}{' stratified' if stratify else ''}")
    observations = []
    for (domain, train, stratify, shots, seed), members in samples.items():
        variant = variants[(domain, train, stratify)]
        digest = hashlib.sha256(f"{train}|{stratify}".encode()).hexdigest()[:8]
        path = sweep_dir / "baselines" / f"{slug(domain) + '_' if domain else ''}k{shots}-s{seed}-{digest}.json"
        ids = [cell.id for cell in members]
        fingerprint = json_hash([STORE_VERSION, EQUAL_DATA_REFERENCES, train, shots, seed, stratify, variant, ids,
                                 members[0].eval_fingerprint()])
        stored = _stored(path, fingerprint)
        if stored is None:
            # `run_training` draws its shots this way (data_builders.sample_records, sample_seed = seed)
            sample = sample_records(inputs.pool(train), shots, seed, stratify=stratify)
            stored = {"fingerprint": fingerprint, "kind": "equal-data", "domain": domain, "train": train,
                      "shots": shots, "seed": seed, "stratify": stratify, "variant": variant, "cells": ids,
                      "train_ids": [record.get("id") for record in sample],
                      **_scored(inputs, members[0], sample, seed, EQUAL_DATA_REFERENCES, with_histories=True)}
            write_json_atomic(path, stored)
            log(f"equal-data references k={shots} seed={seed}{f' ({domain})' if domain else ''}: {_aucs(stored)}")
        observations.extend(baseline_observations(stored))
    shots_columns = sorted({cell.shots for cell in cells if not cell.zero_shot})
    pool_variants = _variants(list(pools), lambda train: Path(train).name)
    for (domain, train), members in pools.items():
        digest = hashlib.sha256(f"{train}".encode()).hexdigest()[:8]
        path = sweep_dir / "baselines" / f"{slug(domain) + '_' if domain else ''}reference-{digest}.json"
        ids = [cell.id for cell in members]
        # the rule that picks them: prompt-numbers joins where prompts print context (full_data_references)
        fingerprint = json_hash([STORE_VERSION, train, [*FULL_DATA_REFERENCES, "prompt-numbers"],
                                 pool_variants[(domain, train)], ids, members[0].eval_fingerprint()])
        stored = _stored(path, fingerprint)
        if stored is None:
            pool = inputs.pool(train)
            stored = {"fingerprint": fingerprint, "kind": "reference", "domain": domain, "train": train,
                      "variant": pool_variants[(domain, train)], "cells": ids, "train_records": len(pool),
                      **_scored(inputs, members[0], pool, 0, functools.partial(full_data_references, pool),
                                with_histories=False)}
            write_json_atomic(path, stored)
            log(f"full-data references{f' ({domain})' if domain else ''}: {_aucs(stored)}")
        observations.extend(reference_observations(stored, shots_columns))
    return observations
