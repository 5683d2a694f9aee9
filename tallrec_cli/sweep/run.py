"""Running a sweep: each cell trained (unless a run with its config is there) and evaluated, resumable; the
index of statuses safe for concurrent writers; cells scheduled one per worker (GPUs as subprocesses that
record why they failed in SWEEP/logs/<cell>.failure.json); the report rebuilt at the end."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from tallrec_cli.core.config import from_dict, to_dict
from tallrec_cli.core.errors import ArtifactError, ConfigError, ResourceError, TallrecError, TrainingInterrupted
from tallrec_cli.core.files import MANIFEST_NAME, is_disk_full, write_json_atomic
from tallrec_cli.core.formatting import format_value
from tallrec_cli.core.manifests import PromptRecord, TrainRunManifest, ZeroShotCellManifest
from tallrec_cli.core.manifests import load as load_manifest
from tallrec_cli.core.reporting import reporter
from tallrec_cli.eval.records import load_tests
from tallrec_cli.eval.run import evaluate_tests
from tallrec_cli.model.loading import load_for_inference, model_identity, resolve_model_source
from tallrec_cli.model.scoring import resolve_scoring
from tallrec_cli.sweep.grid import Cell, comparable_config, prepare_sweep
from tallrec_cli.sweep.references import compute_baselines
from tallrec_cli.sweep.report import cell_observations, summarize, write_report
from tallrec_cli.sweep.spec import (
    CELL_RESULT_NAME,
    INDEX_NAME,
    RESULT_FILES,
    SPEC_NAME,
    SweepRecord,
    SweepSpec,
    load_sweep_folder,
    read_sweep_record,
    spec_hash,
)
from tallrec_cli.train.run import run_training


class CellRunner(Protocol):
    """Does one cell's work; injectable so tests (and other backends) need not train."""

    def train(self, cell: Cell, cell_dir: Path, config: Any) -> None:
        """Leave a finished run (manifest.json last) in ``cell_dir``; zero-shot cells write a zero-shot manifest."""

    def evaluate(self, cell: Cell, cell_dir: Path, config: Any) -> dict[str, dict]:
        """Metrics per test label (at least ``auc`` and ``records``)."""


def cell_state(cell: Cell, cell_dir: Path) -> str:
    """``done``, ``evaluate`` (trained with this config, evaluation missing or stale) or ``train``."""
    if not (cell_dir / MANIFEST_NAME).is_file():
        return "train"
    try:
        manifest = load_manifest(cell_dir, ZeroShotCellManifest if cell.zero_shot else TrainRunManifest)
    except ArtifactError:  # damaged, or written by another kind of cell: redo it
        return "train"
    if comparable_config(manifest.config, cell.zero_shot) != cell.config:
        return "train"
    result_path = cell_dir / CELL_RESULT_NAME
    if result_path.is_file():
        try:
            result = json.loads(result_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return "evaluate"
        if result.get("eval_fingerprint") == cell.eval_fingerprint():
            return "done"
    return "evaluate"


def execute_cell(cell: Cell, cell_dir: Path, config: Any, runner: CellRunner) -> dict[str, Any]:
    """Train (unless a run with this config is there) and evaluate; ``sweep-eval.json`` last, atomically."""
    started = time.monotonic()
    state = cell_state(cell, cell_dir)
    if state == "train":
        if cell_dir.exists():
            shutil.rmtree(cell_dir)
        runner.train(cell, cell_dir, dataclasses.replace(
            config, output=dataclasses.replace(config.output, dir=str(cell_dir), overwrite=False)))
        if not (cell_dir / MANIFEST_NAME).is_file():
            raise ArtifactError(f"cell {cell.id}: training ended without a manifest in {cell_dir}",
                                "see the training output above; re-run to retry the cell")
    elif state == "done":
        return json.loads((cell_dir / CELL_RESULT_NAME).read_text(encoding="utf-8"))
    tests = runner.evaluate(cell, cell_dir, config)
    run = None if cell.zero_shot else load_manifest(cell_dir, TrainRunManifest)
    result = {**cell.describe(), "eval_fingerprint": cell.eval_fingerprint(), "tests": tests,
              "best": dataclasses.asdict(run.best) if run else None, "train_wall_seconds": run and run.wall_seconds,
              "sweep_wall_seconds": round(time.monotonic() - started, 2)}
    write_json_atomic(cell_dir / CELL_RESULT_NAME, result)
    return result


class LocalCellRunner:
    """Train with `tallrec_cli.train.run.run_training`, evaluate with `tallrec_cli.eval.run.evaluate_tests`."""

    def train(self, cell: Cell, cell_dir: Path, config: Any) -> None:
        if cell.zero_shot:
            self._zero_shot_manifest(cell_dir, config)
            return

        run_training(config)

    @staticmethod
    def _zero_shot_manifest(cell_dir: Path, config: Any) -> None:
        cell_dir.mkdir(parents=True, exist_ok=True)
        ZeroShotCellManifest.new(
            base_model=model_identity(resolve_model_source(config.model.name)),
            prompt=PromptRecord(config.prompt.template),
            labels={"positive_word": config.labels.positive, "negative_word": config.labels.negative},
            config=to_dict(config)).write(cell_dir)

    def evaluate(self, cell: Cell, cell_dir: Path, config: Any) -> dict[str, dict]:
        labels, paths = list(cell.tests), list(cell.tests.values())
        tests = load_tests(paths, limit=cell.test_limit)
        model = config.model
        inference = load_for_inference(model=model.name if cell.zero_shot else None,
                                       adapter=None if cell.zero_shot else str(cell_dir), dtype=model.dtype,
                                       quantization=model.quantization, trust_remote_code=model.trust_remote_code)
        with reporter().progress(transient=True) as bars:
            def on_start(name: str, total: int) -> Callable[[int], None]:
                task = bars.add_task(f"evaluating {cell.id} on {name}", total=total)
                return lambda count: bars.advance(task, count)

            spec = resolve_scoring(inference, config.prompt.template, (config.labels.positive, config.labels.negative),
                                   config.training.score_mode, config.training.eval_batch_size)
            results = evaluate_tests(inference, tests, cell_dir / "eval", spec, seed=cell.seed or 0, overwrite=True,
                                     on_start=on_start)
        keep = ("records", "positives", "auc", "auc_ci95", "gauc", "gauc_ci95", "users", "gauc_users", "log_loss",
                "accuracy")
        return {label: {"path": path, "folder": str(Path(result["folder"]).relative_to(cell_dir)),
                        **{key: result["metrics"].get(key) for key in keep}}
                for label, path, result in zip(labels, paths, results)}


def _is_interruption(exc: BaseException) -> bool:
    # `run_training` turns Ctrl-C into a checkpoint and a TrainingInterrupted.
    return isinstance(exc, TrainingInterrupted)


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, TallrecError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


class SweepIndex:
    """index.json: the cells and their status, rewritten atomically on every change.

    Safe for concurrent writers, threads and processes alike (cluster array tasks each running one cell):
    an update takes a file lock, re-reads the file, changes its own cell's entry and writes it back.
    """

    def __init__(self, sweep_dir: Path, config_hash: str, cells: list[Cell]):
        from filelock import FileLock

        self.path = sweep_dir / INDEX_NAME
        self.config_hash = config_hash
        self.lock = threading.Lock()
        self.file_lock = FileLock(str(self.path) + ".lock")
        self.started_here: set[str] = set()
        self.entries = {cell.id: {**cell.describe(), "dir": f"cells/{cell.id}", "status": "pending", "error": None}
                        for cell in cells}

    def update(self, cell_id: str, **fields: Any) -> None:
        """Set fields of a cell's entry; a running cell records the process that runs it (``pid``, ``host``), so
        a report can tell a cell still running from one whose process was killed."""
        if fields.get("status") == "running":
            fields = {**fields, "pid": os.getpid(), "host": socket.gethostname()}
        with self.lock, self.file_lock:
            self._read_others()
            self.entries[cell_id].update(fields)
            if fields.get("status") == "running":
                self.started_here.add(cell_id)
            self._write()

    def save(self) -> None:
        """Write this process's view of every cell (the start of a run: statuses just checked on disk)."""
        with self.lock, self.file_lock:
            self._write()

    def mark_running_as(self, status: str) -> None:
        """Cells this process started and left running get ``status`` (other writers' cells are theirs)."""
        with self.lock, self.file_lock:
            self._read_others()
            for cell_id in self.started_here:
                if self.entries[cell_id]["status"] == "running":
                    self.entries[cell_id]["status"] = status
            self._write()

    def _read_others(self) -> None:
        try:
            stored = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return
        if stored.get("config_hash") != self.config_hash:
            return
        for entry in stored.get("cells", []):
            if entry.get("id") in self.entries:
                self.entries[entry["id"]] = entry

    def _write(self) -> None:
        write_json_atomic(self.path, {"config_hash": self.config_hash, "cells": list(self.entries.values())})


@dataclasses.dataclass
class Failure:
    cell: Cell
    error: BaseException


def schedule(cells: Sequence[Cell], work: Callable[[Cell, str | None], None], workers: Sequence[str | None] = (None,),
             keep_going: bool = False, notify: Callable[[Cell, str, str | None, str | None], None] | None = None,
             poll_seconds: float = 0.2) -> list[Failure]:
    """Run ``work(cell, worker)`` for every cell, one cell per worker at a time.

    One worker: in this thread (Ctrl-C reaches the cell directly). Several (GPUs): one thread per worker
    pulling from a shared queue. A failure stops new cells unless ``keep_going``; a full disk always
    stops them. ``notify(cell, status, error, worker)`` sees running / done / failed.
    """
    queue = deque(cells)
    failures: list[Failure] = []
    lock = threading.Lock()
    stop = threading.Event()
    notify = notify or (lambda *args: None)

    def next_cell() -> Cell | None:
        with lock:
            return None if stop.is_set() or not queue else queue.popleft()

    def loop(worker: str | None) -> None:
        while (cell := next_cell()) is not None:
            notify(cell, "running", None, worker)
            try:
                work(cell, worker)
            except Exception as exc:
                if _is_interruption(exc):
                    stop.set()
                    raise KeyboardInterrupt from exc
                notify(cell, "failed", _describe_error(exc), worker)
                with lock:
                    failures.append(Failure(cell, exc))
                if is_disk_full(exc) or not keep_going:
                    stop.set()
            else:
                notify(cell, "done", None, worker)

    if len(workers) == 1:
        loop(workers[0])
        return failures
    threads = [threading.Thread(target=loop, args=(worker,), name=f"sweep-{worker}", daemon=True) for worker in workers]
    for thread in threads:
        thread.start()
    try:
        while any(thread.is_alive() for thread in threads):
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        stop.set()
        raise
    return failures


@dataclasses.dataclass(frozen=True)
class CellFailure:
    """Why a cell's worker process stopped, as it recorded it in SWEEP/logs/<cell>.failure.json: the launcher
    reads this, not the worker's log."""
    type: str  # the exception's class name
    message: str
    hint: str | None = None
    step: int | None = None  # the optimizer step training was interrupted at

    @classmethod
    def of(cls, exc: BaseException) -> CellFailure:
        if isinstance(exc, TallrecError):
            return cls(type(exc).__name__, exc.message, exc.hint, exc.step if isinstance(exc, TrainingInterrupted) else None)
        return cls(type(exc).__name__, str(exc) or type(exc).__name__)

    @property
    def interrupted(self) -> bool:
        return self.type in (TrainingInterrupted.__name__, KeyboardInterrupt.__name__)

    def error(self, where: str) -> TallrecError:
        """The exception to raise in the launcher; ``where`` (exit code, log) is added to the message."""
        if self.interrupted:
            return TrainingInterrupted(self.step or 0, f"{self.message} ({where})", self.hint)
        return TallrecError(f"{self.message} ({where})", self.hint)


def failure_path(sweep_dir: Path, cell_id: str) -> Path:
    return sweep_dir / "logs" / f"{cell_id}.failure.json"


def read_failure(path: Path) -> CellFailure | None:
    """The failure a worker recorded, or None (it crashed before it could, or the file is damaged)."""
    try:
        return from_dict(CellFailure, json.loads(path.read_text(encoding="utf-8")), source=str(path))
    except (OSError, json.JSONDecodeError, ConfigError):
        return None


class SubprocessLauncher:
    """Runs a cell as ``python -m tallrec_cli sweep run-cell SWEEP CELL`` pinned to one GPU."""

    def __init__(self, sweep_dir: Path):
        self.sweep_dir = sweep_dir
        self.processes: dict[str, subprocess.Popen] = {}
        self.lock = threading.Lock()

    def __call__(self, cell: Cell, device: str | None) -> None:
        log_path = self.sweep_dir / "logs" / f"{cell.id}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        failure_path(self.sweep_dir, cell.id).unlink(missing_ok=True)
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(device)}
        command = [sys.executable, "-m", "tallrec_cli", "sweep", "run-cell", str(self.sweep_dir), cell.id]
        with open(log_path, "w", encoding="utf-8") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            with self.lock:
                self.processes[cell.id] = process
            code = process.wait()
        with self.lock:
            self.processes.pop(cell.id, None)
        if code == errno.ENOSPC:
            raise OSError(errno.ENOSPC, f"No space left on device (cell {cell.id}, see {log_path})")
        if code != 0:
            where = f"exit code {code}; log: {log_path}"
            failure = read_failure(failure_path(self.sweep_dir, cell.id))
            if failure is None:
                raise TallrecError(f"cell {cell.id}'s worker stopped without recording why ({where})",
                                   "read the log; TALLREC_DEBUG=1 in the environment keeps tracebacks")
            raise failure.error(where)

    def terminate_all(self) -> None:
        with self.lock:
            for process in self.processes.values():
                process.terminate()


@dataclasses.dataclass
class SweepRun:
    sweep_dir: Path
    cells: list[Cell]
    ran: list[str]
    skipped: list[str]
    failures: list[Failure]
    report: dict  # what results.json holds: summary, paired comparisons, findings
    wall_seconds: float

    @property
    def summary(self) -> list[dict]:
        return self.report["summary"]


def prepare_folder(sweep_dir: Path, record: SweepRecord, cells: list[Cell], overwrite: bool) -> None:
    """Check ``sweep_dir`` holds this sweep (or nothing), clear what ``overwrite`` replaces, write sweep.yaml."""
    spec_path = sweep_dir / SPEC_NAME
    if spec_path.is_file():
        try:
            recorded = read_sweep_record(sweep_dir).config_hash
        except ArtifactError:  # damaged: only --overwrite replaces it
            recorded = None
        if recorded != record.config_hash and not overwrite:
            raise ArtifactError(
                f"{sweep_dir} holds a sweep with a different config (hash {str(recorded)[:12]} vs "
                f"{record.config_hash[:12]}: "
                "grid, recipe, overrides or test files changed)",
                "re-run with the same config to resume, pass --overwrite to replace it (cells whose config is "
                "unchanged are kept), or choose another --output")
    elif sweep_dir.exists() and any(sweep_dir.iterdir()):
        raise ArtifactError(f"{sweep_dir} is not empty and is not a sweep folder (no {SPEC_NAME})",
                            "choose another --output")
    wanted = {cell.id for cell in cells}
    for folder in sorted((sweep_dir / "cells").glob("*")) if overwrite else []:
        if folder.name not in wanted:
            shutil.rmtree(folder)  # not part of the new grid: it would show up in reports
    if overwrite:
        shutil.rmtree(sweep_dir / "baselines", ignore_errors=True)
        for name in RESULT_FILES:
            (sweep_dir / name).unlink(missing_ok=True)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    record.write(sweep_dir)


def run_sweep(spec: SweepSpec, sweep_dir: str | Path, overwrite: bool = False, keep_going: bool = False,
              devices: Sequence[str] | None = None, runner: CellRunner | None = None,
              launcher: Callable[[Cell, str | None], None] | None = None,
              log: Callable[[str], None] | None = None) -> SweepRun:
    """Run (or resume) a sweep into ``sweep_dir``; return what ran and the results summary.

    Every cell's config is validated before the first starts. ``devices``: one cell per device in a
    subprocess (``launcher`` replaces that, for tests); otherwise cells run here one at a time with
    ``runner`` (default: train + eval libraries). Finished cells are never touched again.
    """
    started = time.monotonic()
    log = log or (lambda message: None)
    sweep_dir = Path(sweep_dir).resolve()
    spec, cells, configs = prepare_sweep(spec)
    record = SweepRecord.of(spec)
    prepare_folder(sweep_dir, record, cells, overwrite)
    try:
        return _run_grid(spec, sweep_dir, cells, configs, record.config_hash, keep_going, devices, runner, launcher, log,
                         started)
    except OSError as exc:  # e.g. index.json or a baseline file could not be written
        if not is_disk_full(exc):
            raise
        raise ResourceError(f"the disk filled up while writing to {sweep_dir}; finished cells are kept",
                            "free disk space, then re-run the same command: finished cells are skipped") from exc


def start_grid(spec: SweepSpec, sweep_dir: Path, cells: list[Cell], configs: dict[str, Any], config_hash: str,
               log: Callable[[str], None]) -> tuple[SweepIndex, dict[str, dict], list[Cell], list[dict]]:
    """Baselines, then the index with every cell's state on disk: (index, finished results, pending cells,
    baseline observations)."""
    index = SweepIndex(sweep_dir, config_hash, cells)
    baselines = compute_baselines(spec, cells, configs, sweep_dir, log) if spec.baselines else []
    results: dict[str, dict] = {}
    pending = []
    for cell in cells:
        if cell_state(cell, sweep_dir / "cells" / cell.id) == "done":
            results[cell.id] = json.loads((sweep_dir / "cells" / cell.id / CELL_RESULT_NAME).read_text(encoding="utf-8"))
            index.entries[cell.id]["status"] = "done"
        else:
            pending.append(cell)
    index.save()
    return index, results, pending, baselines


def _run_grid(spec: SweepSpec, sweep_dir: Path, cells: list[Cell], configs: dict[str, Any], config_hash: str,
              keep_going: bool, devices: Sequence[str] | None, runner: CellRunner | None,
              launcher: Callable[[Cell, str | None], None] | None, log: Callable[[str], None],
              started: float) -> SweepRun:
    index, results, pending, baselines = start_grid(spec, sweep_dir, cells, configs, config_hash, log)
    skipped = [cell.id for cell in cells if cell.id in results]
    if skipped:
        log(f"resuming: {len(skipped)} finished cell(s) kept, {len(pending)} to run")
    runner = runner or LocalCellRunner()
    workers: Sequence[str | None] = list(devices) if devices else [None]
    if devices:
        launcher = launcher or SubprocessLauncher(sweep_dir)
        work = launcher
    else:
        def work(cell: Cell, worker: str | None) -> None:
            results[cell.id] = execute_cell(cell, sweep_dir / "cells" / cell.id, configs[cell.id], runner)
    position = {cell.id: number for number, cell in enumerate(pending, start=1)}
    timers: dict[str, float] = {}

    def notify(cell: Cell, status: str, error: str | None, worker: str | None) -> None:
        where = f" on device {worker}" if worker is not None else ""
        if status == "running":
            timers[cell.id] = time.monotonic()
            log(f"[{position[cell.id]}/{len(pending)}] cell {cell.id}{where}")
            index.update(cell.id, status="running", error=None, device=worker)
            return
        seconds = round(time.monotonic() - timers[cell.id], 1)
        if status == "done" and cell.id not in results:  # ran in a subprocess: its result is on disk
            results[cell.id] = json.loads((sweep_dir / "cells" / cell.id / CELL_RESULT_NAME).read_text(encoding="utf-8"))
        if status == "done":
            aucs = ", ".join(f"{label} AUC {format_value(test.get('auc'))}" for label, test in results[cell.id]["tests"].items())
            log(f"    done in {seconds:.0f} s: {aucs}")
        else:
            log(f"    failed after {seconds:.0f} s: {error}")
        index.update(cell.id, status=status, error=error, wall_seconds=seconds)

    try:
        failures = schedule(pending, work, workers, keep_going, notify)
    except KeyboardInterrupt:
        if isinstance(launcher, SubprocessLauncher):
            launcher.terminate_all()
        index.mark_running_as("interrupted")
        log(f"interrupted: {len(results)} finished cell(s) kept in {sweep_dir}; re-run the same command to resume")
        raise
    fatal = next((failure for failure in failures if is_disk_full(failure.error)), None)
    if fatal is not None:
        cell_dir = sweep_dir / "cells" / fatal.cell.id
        if not (cell_dir / MANIFEST_NAME).exists():
            shutil.rmtree(cell_dir, ignore_errors=True)  # give the space back; it is redone on the next run
        raise ResourceError(
            f"the disk filled up during cell {fatal.cell.id}; {len(results)} finished cell(s) are kept in {sweep_dir}",
            "free disk space, then re-run the same command: finished cells are skipped") from fatal.error
    if failures and not keep_going:
        failure = failures[0]
        if not isinstance(failure.error, TallrecError):
            raise failure.error
        raise TallrecError(
            f"cell {failure.cell.id} failed: {failure.error.message}",
            (failure.error.hint + "; " if failure.error.hint else "")
            + "re-run the same command to resume (finished cells are skipped), or pass --keep-going") from failure.error
    observations = cell_observations(results.values()) + baselines
    report = write_report(sweep_dir, summarize(observations), observations, config_hash)
    return SweepRun(sweep_dir, cells, [cell.id for cell in pending if cell.id in results], skipped, failures, report,
                    round(time.monotonic() - started, 1))


def run_single_cell(sweep_dir: str | Path, cell_id: str, runner: CellRunner | None = None,
                    record: bool = False) -> dict[str, Any]:
    """Run one cell of a prepared sweep folder: the worker side of ``--devices`` (its parent keeps the
    index) or, with ``record``, a cluster array task that records its own status in the index. Why it
    failed goes to SWEEP/logs/<cell>.failure.json (`CellFailure`), which the launcher reads."""
    sweep_dir = Path(sweep_dir).resolve()
    try:
        return _run_single_cell(sweep_dir, cell_id, runner, record)
    except BaseException as exc:
        if not isinstance(exc, SystemExit):
            with contextlib.suppress(OSError):  # a full disk must not hide the error itself
                write_json_atomic(failure_path(sweep_dir, cell_id), dataclasses.asdict(CellFailure.of(exc)))
        raise


def _run_single_cell(sweep_dir: Path, cell_id: str, runner: CellRunner | None, record: bool) -> dict[str, Any]:
    spec, cells, configs = prepare_sweep(load_sweep_folder(sweep_dir))
    cell = next((cell for cell in cells if cell.id == cell_id), None)
    if cell is None:
        raise ConfigError(f"{sweep_dir} has no cell {cell_id!r}", f"cells: {', '.join(c.id for c in cells)}")
    run = functools.partial(execute_cell, cell, sweep_dir / "cells" / cell.id, configs[cell.id],
                            runner or LocalCellRunner())
    if not record:
        return run()
    index = SweepIndex(sweep_dir, spec_hash(spec), cells)
    started = time.monotonic()
    job = os.environ.get("SLURM_JOB_ID")
    index.update(cell.id, status="running", error=None, job=job)
    try:
        result = run()
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) or _is_interruption(exc) else "failed"
        index.update(cell.id, status=status, error=_describe_error(exc),
                     wall_seconds=round(time.monotonic() - started, 1))
        raise
    index.update(cell.id, status="done", error=None, wall_seconds=round(time.monotonic() - started, 1))
    return result
