"""Fault injection: kill tallrec and fill its disk at random points; nothing may be lost or half-kept.

A small, offline pipeline (tiny LLaMA, 32 records) runs `data sample`, `train` (fresh and --overwrite),
`export --overwrite`, `sweep` and `data sample` onto a mount point, each as its own `tallrec` process, while
faults are injected at random (seeded) points:

- kill: SIGKILL after a random fraction of the command's clean run time;
- disk full: the outputs live on a tmpfs whose size is set, before the command, to what is already used plus
  a random fraction of what the command writes, so ENOSPC hits a random write (torch, safetensors, json...);
- data changed under a run: a training run is killed, a record of its data is flipped (a file of a dataset
  whose manifest records its hashes, or a plain file), and `--resume` must refuse it, naming the file; with
  the data restored it must finish;
- damaged checkpoints: a training run is killed, the newest checkpoint's weights or optimizer state are cut
  short, and `--resume` must skip it (saying which) and finish from an older one.

After each fault: every artifact folder must hold a complete, verifiable manifest or none (a run's adapter
parses, an export matches its file hashes, samples hold the records they list, sweep cells are whole); an
artifact that was complete before the fault must still be complete (old or new version): otherwise it counts
as data lost; the inputs must be byte-identical; then the disk is given back and the recovery (`train
--resume`, or the same command re-run) must finish. Needs root (it mounts tmpfs).

    sudo .venv/bin/python -m acceptance.faults --seed 0 --budget 240
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

RECIPE = """model: {{name: {model}, dtype: float32}}
data: {{train: {data}, shots: null, max_valid: 8}}
prompt: {{max_length: 256}}
training: {{max_steps: 4, batch_size: 4, micro_batch_size: 2, warmup_steps: 0, eval_every: 2, eval_batch_size: 8,
           lr: 0.01}}
"""


class Bench:
    def __init__(self, root: Path, seed: int):
        self.root = root
        self.rng = random.Random(seed)
        self.inputs = root / "in"
        self.out = root / "out"  # a tmpfs: its size is the disk-full fault
        self.volume = self.out / "volume"  # a tmpfs mounted inside: the "Docker volume" target of an overwrite
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "TALLREC_HOME": str(root / "home"), "HF_HUB_OFFLINE": "1",
                    "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.clean_seconds: dict[str, float] = {}
        self.clean_bytes: dict[str, int] = {}
        self.counts = {"faults": 0, "kills": 0, "disk_full": 0, "data_changed": 0, "checkpoints_damaged": 0,
                       "survived": 0, "data_lost": 0, "internal_errors": 0, "recovery_failed": 0, "violations": 0}
        self.log: list[dict] = []

    # ------------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        from tallrec_cli.core.manifests import write_manifest
        from tests.conftest import build_tiny_llama
        from tests.train_helpers import write_dataset

        build_tiny_llama(self.inputs / "model")
        from tallrec_cli.core.integrity import RECORDED_FILES, record_files

        data = write_dataset(self.inputs / "data", train=32, valid=8)
        shutil.copy(data / "valid.jsonl", data / "test.jsonl")
        write_manifest(data, "dataset", {RECORDED_FILES: record_files(data, ["train.jsonl", "valid.jsonl",
                                                                          "test.jsonl"])})
        (self.inputs / "recipe.yaml").write_text(RECIPE.format(model=self.inputs / "model", data=data))
        self.out.mkdir()
        self._mount(self.out, "1g")
        self.volume.mkdir()
        self._mount(self.volume, "64m")
        self.input_hashes = self._hash_inputs()

    def _mount(self, where: Path, size: str) -> None:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)

    def _resize(self, where: Path, size_bytes: int | str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size_bytes}", str(where)], check=True)

    def teardown(self) -> None:
        for where in (self.volume, self.out):
            subprocess.run(["umount", "-l", str(where)], check=False)

    def _hash_inputs(self) -> dict[str, str]:
        from tallrec_cli.core.files import sha256_file

        return {str(p.relative_to(self.inputs)): sha256_file(p) for p in sorted(self.inputs.rglob("*")) if p.is_file()}

    # ------------------------------------------------------------------------------------------- jobs
    def commands(self) -> dict[str, list[str]]:
        data, recipe = self.inputs / "data", self.inputs / "recipe.yaml"
        return {
            "sample": ["data", "sample", str(data), "--shots", "8,16", "--seeds", "0,1", "-o", str(self.out / "samples"),
                       "--overwrite"],
            "train": ["train", str(recipe), "-o", str(self.out / "run")],
            "train-overwrite": ["train", str(recipe), "-o", str(self.out / "run"), "--overwrite",
                                "--set", f"training.seed={self.rng.randrange(100)}"],
            "export": ["export", str(self.out / "run"), "-o", str(self.out / "export"), "--overwrite"],
            "sweep": ["sweep", str(recipe), "--shots", "0,8", "--seeds", "0", "--test", str(data / "test.jsonl"),
                      "-o", str(self.out / "sweep"), "--test-limit", "8", "--no-baselines"],
            "volume": ["data", "sample", str(data), "--shots", "8", "--seeds", str(self.rng.randrange(5)), "-o",
                       str(self.volume), "--overwrite"],
        }

    def tallrec(self, args: list[str], kill_after: float | None = None) -> tuple[int, str, bool]:
        """Run one `tallrec` command; SIGKILL it after ``kill_after`` s. (exit code, stderr, was it killed)."""
        process = subprocess.Popen([sys.executable, "-m", "tallrec_cli", *args], cwd=self.root, env=self.env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _, err = process.communicate(timeout=kill_after)
            return process.returncode, err, False
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            _, err = process.communicate()
            return process.returncode, err, True

    def recover(self, job: str) -> tuple[int, str]:
        """What a user does next: `--resume` an interrupted run, otherwise the same command again."""
        run = self.out / "run"
        pending = self.out / ".run.overwrite"
        if job.startswith("train") and ((pending / "config.yaml").exists() or
                                        ((run / "config.yaml").exists() and not (run / "manifest.json").exists())):
            code, err, _ = self.tallrec(["train", "-o", str(run), "--resume"])
            return code, err
        code, err, _ = self.tallrec(self.commands()[job])
        return code, err

    # ------------------------------------------------------------------------------------------- checks
    def artifacts(self) -> dict[str, Path]:
        found = {"samples": self.out / "samples", "run": self.out / "run", "export": self.out / "export",
                 "volume": self.volume}
        found.update({f"cell {path.name}": path for path in sorted((self.out / "sweep" / "cells").glob("*"))})
        return found

    def verify(self, folder: Path) -> str | None:
        """None when ``folder`` is absent, has no manifest, or its manifest checks out; else what is wrong."""
        from tallrec_cli.core.files import read_jsonl
        from tallrec_cli.core.integrity import check_files
        from tallrec_cli.export.runs import load_train_run

        manifest_path = folder / "manifest.json"
        if not manifest_path.is_file():
            return None
        try:
            manifest = json.loads(manifest_path.read_text())
            kind = manifest["kind"]
            if kind == "train-run":
                load_train_run(folder)
            elif kind == "adapter-export":
                check = check_files(folder, manifest["files"])
                if not check.ok:
                    return check.describe()
            elif kind == "samples":
                for name, entry in manifest["files"].items():
                    if len(read_jsonl(folder / name)) != entry["records"]:
                        return f"{name} does not hold {entry['records']} records"
        except Exception as exc:  # noqa: BLE001 - any failure to verify is the finding
            return f"{type(exc).__name__}: {exc}"
        return None

    def complete(self) -> set[str]:
        return {name for name, folder in self.artifacts().items()
                if (folder / "manifest.json").is_file() and self.verify(folder) is None}

    # ------------------------------------------------------------------------------------------- loop
    def _disk(self, job: str) -> Path:
        return self.volume if job == "volume" else self.out

    def calibrate(self) -> None:
        """Clean runs, in pipeline order: their time and bytes written scale the fault points."""
        for job in ("sample", "train", "export", "sweep", "volume", "train-overwrite"):
            where = self._disk(job)
            used = shutil.disk_usage(where).used
            started = time.monotonic()
            code, err, _ = self.tallrec(self.commands()[job])
            if code != 0:
                raise SystemExit(f"clean run of {job} failed:\n{err}")
            self.clean_seconds[job] = time.monotonic() - started
            self.clean_bytes[job] = max(shutil.disk_usage(where).used - used, 16 << 10)
        # A re-run writes what its first run did, less for a resumed sweep: one cell (the loop removes one).
        self.clean_bytes["train-overwrite"] = self.clean_bytes["train"]
        self.clean_bytes["sweep"] //= max(1, len(list((self.out / "sweep" / "cells").glob("*"))))

    def inject(self, job: str) -> None:
        before = self.complete()
        kind = self.rng.choice(("kill", "disk-full"))
        where = self._disk(job)
        if kind == "kill":
            code, err, hit = self.tallrec(self.commands()[job], kill_after=self.rng.uniform(0.2, 1.1) *
                                          self.clean_seconds[job])
        else:
            used = shutil.disk_usage(where).used
            self._resize(where, used + int(self.rng.uniform(0.0, 0.9) * self.clean_bytes[job]))
            try:
                code, err, _ = self.tallrec(self.commands()[job])
            finally:
                self._resize(where, "1g" if where == self.out else "64m")
            hit = code != 0
        if not hit:  # the command finished before the fault point
            print(f"    {job:16s} {kind:9s} -> finished before the fault point (exit {code})", flush=True)
            return
        self.counts["faults"] += 1
        self.counts["kills" if kind == "kill" else "disk_full"] += 1
        problems = []
        if "internal error" in err:
            self.counts["internal_errors"] += 1
            problems.append(next(line.strip() for line in err.splitlines() if "internal error" in line))
        for name, folder in self.artifacts().items():
            wrong = self.verify(folder)
            if wrong:
                problems.append(f"{name}: manifest does not verify ({wrong})")
        lost = sorted(before - self.complete())
        if lost:
            self.counts["data_lost"] += 1
            problems.append(f"complete before the fault, not after: {', '.join(lost)}")
        if self._hash_inputs() != self.input_hashes:
            problems.append("an input changed")
        code, recovery_err = self.recover(job)
        if code != 0:
            self.counts["recovery_failed"] += 1
            problems.append(f"recovery failed: {recovery_err.strip().splitlines()[-1] if recovery_err.strip() else code}")
        self.counts["violations"] += bool(problems)
        self.counts["survived"] += not problems
        self.log.append({"job": job, "fault": kind, "exit": code, "problems": problems})
        print(f"{len(self.log):3d} {job:16s} {kind:9s} -> {'ok' if not problems else '; '.join(problems)}",
              flush=True)

    # ----------------------------------------------------------------------- faults under a training run
    def killed_run(self, data: Path) -> Path | None:
        """A training run of ``data`` killed at a random point after its first checkpoint (None: it finished)."""
        run = self.out / "run-under-fault"
        shutil.rmtree(run, ignore_errors=True)
        process = subprocess.Popen([sys.executable, "-m", "tallrec_cli", "train", str(self.inputs / "recipe.yaml"),
                                    "--train", str(data), "-o", str(run)], cwd=self.root, env=self.env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while process.poll() is None and not list((run / "checkpoints").glob("checkpoint-*")):
            time.sleep(0.05)
        time.sleep(self.rng.uniform(0.0, 1.0))  # the last steps take about a second on the tiny model
        if process.poll() is not None:
            return None
        process.send_signal(signal.SIGKILL)
        process.wait()
        return None if (run / "manifest.json").exists() else run  # killed once it had finished: no fault

    def data_changed(self) -> None:
        """Flip one record's label in the data of a killed run: `--resume` refuses, naming the file; restored,
        it finishes. Half the time the data is a dataset folder whose manifest records its hashes (the load
        check refuses), else a plain copy (the run's own record of its inputs refuses)."""
        recorded = self.rng.random() < 0.5
        data = self.out / "data-under-run"
        shutil.rmtree(data, ignore_errors=True)
        shutil.copytree(self.inputs / "data", data)
        if not recorded:
            (data / "manifest.json").unlink()
        run = self.killed_run(data)
        if run is None:
            print(f"    {'data-changed':16s} -> finished before the fault point", flush=True)
            return
        train = data / "train.jsonl"
        original = train.read_text()
        lines = original.splitlines(keepends=True)
        record = json.loads(lines[0])
        flipped = {**record, "label": 1 - record["label"], "output": "No." if record["label"] else "Yes."}
        train.write_text(json.dumps(flipped) + "\n" + "".join(lines[1:]))
        code, err, _ = self.tallrec(["train", "-o", str(run), "--resume"])
        problems = []
        if code != 2 or ("train.jsonl" not in err and "training data" not in err):
            problems.append(f"resume on changed data: exit {code}, {err.strip().splitlines()[-1:] or 'no message'}")
        if (run / "manifest.json").exists():
            problems.append("a run finished on data it did not start with")
        train.write_text(original)
        code, err, _ = self.tallrec(["train", "-o", str(run), "--resume"])
        if code != 0 or self.verify(run) or not (run / "manifest.json").is_file():
            problems.append(f"resume with the data restored failed: {err.strip().splitlines()[-1:] or code}")
        self.record("data-changed", "recorded" if recorded else "plain", "data_changed", problems)

    def damaged_checkpoint(self) -> None:
        """Cut the newest checkpoint of a killed run short: `--resume` skips it, says which, and finishes."""
        run = self.killed_run(self.inputs / "data")
        if run is None:
            print(f"    {'damaged-checkpoint':16s} -> finished before the fault point", flush=True)
            return
        newest = max((run / "checkpoints").glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[-1]))
        victim = newest / self.rng.choice(("adapter_model.safetensors", "optimizer.pt"))
        victim.write_bytes(victim.read_bytes()[: int(victim.stat().st_size * self.rng.uniform(0.1, 0.9))])
        code, err, _ = self.tallrec(["train", "-o", str(run), "--resume"])
        problems = []
        if "internal error" in err:
            self.counts["internal_errors"] += 1
            problems.append(next(line.strip() for line in err.splitlines() if "internal error" in line))
        if code != 0 or self.verify(run) or not (run / "manifest.json").is_file():
            problems.append(f"resume past a damaged checkpoint failed: {err.strip().splitlines()[-1:] or code}")
        elif newest.name not in err:
            problems.append(f"the damaged {newest.name} was skipped without saying so")
        self.record("damaged-checkpoint", victim.name, "checkpoints_damaged", problems)

    def record(self, job: str, fault: str, count: str, problems: list[str]) -> None:
        self.counts["faults"] += 1
        self.counts[count] += 1
        self.counts["recovery_failed"] += any("failed" in problem for problem in problems)
        self.counts["violations"] += bool(problems)
        self.counts["survived"] += not problems
        self.log.append({"job": job, "fault": fault, "problems": problems})
        print(f"{len(self.log):3d} {job:16s} {fault:9s} -> {'ok' if not problems else '; '.join(problems)}",
              flush=True)

    def run(self, budget: float) -> None:
        deadline = time.monotonic() + budget
        jobs = [*self.clean_seconds, "data-changed", "damaged-checkpoint"]
        while time.monotonic() < deadline:
            job = self.rng.choice(jobs)
            if job == "data-changed":
                self.data_changed()
                continue
            if job == "damaged-checkpoint":
                self.damaged_checkpoint()
                continue
            finished = self.complete()
            if job == "export" and "run" not in finished:
                job = "train"
            if job == "train" and "run" in finished:
                job = "train-overwrite"  # a plain re-run of a finished run is refused, by design
            if job == "sweep":  # give the resumed sweep a cell to redo
                cells = sorted((self.out / "sweep" / "cells").glob("*"))
                if cells:
                    shutil.rmtree(self.rng.choice(cells))
            self.inject(job)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=float, default=300, help="Seconds of fault injection after calibration.")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("acceptance/faults.py mounts tmpfs folders: run it as root")
    root = Path(tempfile.mkdtemp(prefix="tallrec-faults-", dir=args.workdir))
    bench = Bench(root, args.seed)
    started = time.monotonic()
    try:
        bench.setup()
        bench.calibrate()
        bench.run(args.budget)
    finally:
        bench.teardown()
    counts = bench.counts
    print(f"\nseed {args.seed}, {time.monotonic() - started:.0f} s, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; clean runs (s): "
          + ", ".join(f"{job} {seconds:.1f}" for job, seconds in bench.clean_seconds.items()))
    print("| faults injected | kills | disk full | data changed | checkpoints damaged | survived | data lost | "
          "internal errors | recovery failed |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {counts['faults']} | {counts['kills']} | {counts['disk_full']} | {counts['data_changed']} | "
          f"{counts['checkpoints_damaged']} | {counts['survived']} | {counts['data_lost']} | "
          f"{counts['internal_errors']} | {counts['recovery_failed']} |")
    shutil.rmtree(root, ignore_errors=True)
    sys.exit(1 if counts["violations"] else 0)


if __name__ == "__main__":
    main()
