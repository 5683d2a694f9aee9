"""Benchmark `tallrec data build`.

1. MovieLens-100K with TALLRec's preset: the pandas builder against a straightforward row-by-row Python
   implementation of TALLRec's preprocessing, timed in the same run; both outputs must be identical.
2. A synthetic 10M-rating log (Parquet and CSV, generated into a temp folder) built by the CLI in a
   child process: wall time and the child's peak memory (``os.wait4`` rusage maxrss).

Usage: .venv/bin/python -m bench.data_build [--ml100k ../shared/data/ml-100k] [--ratings 10000000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent

from data_builders.build import build_config, build_dataset

INSTRUCTION = ("Given the user's preference and unpreference, identify whether the user will like the target movie "
               'by answering "Yes." or "No.".')


def reference_tallrec_movie(folder: Path, output: Path) -> None:
    """TALLRec's preprocess_movie.py logic, row by row in plain Python (dicts, sorted, string joins)."""
    titles = {}
    with open(folder / "u.item", encoding="latin-1") as handle:
        for line in handle:
            fields = line.split("|")
            titles[fields[0]] = fields[1]
    by_user: dict[str, list[tuple[str, int, int]]] = {}
    with open(folder / "u.data") as handle:
        for line in handle:
            user, item, rating, timestamp = line.split("\t")
            by_user.setdefault(user, []).append((item, int(rating), int(timestamp)))
    sequences = []
    for rows in by_user.values():
        rows = sorted(rows, key=lambda row: row[2])
        for index in range(10, len(rows)):
            sequences.append((rows[index - 10:index], rows[index]))
    sequences = sequences[-10000:]

    def record(history, target):
        liked = ", ".join(f'"{titles[item]}"' for item, rating, _ in history if rating > 3)
        disliked = ", ".join(f'"{titles[item]}"' for item, rating, _ in history if rating <= 3)
        return {"instruction": INSTRUCTION,
                "input": f"User Preference: {liked}\nUser Unpreference: {disliked}\n"
                         f'Whether the user will like the target movie "{titles[target[0]]}"?',
                "output": "Yes." if target[1] > 3 else "No."}

    count = len(sequences)
    parts = {"train": sequences[:int(count * 0.8)], "valid": sequences[int(count * 0.8):int(count * 0.9)],
             "test": sequences[int(count * 0.9):]}
    output.mkdir(parents=True, exist_ok=True)
    for name, part in parts.items():
        with open(output / f"{name}.json", "w") as handle:
            json.dump([record(history, target) for history, target in part], handle, indent=4)


def digest(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / f"{name}.json").read_bytes()).hexdigest()
            for name in ("train", "valid", "test")}


def best_of(repeats: int, run) -> float:
    times = []
    for attempt in range(repeats):
        start = time.perf_counter()
        run(attempt)
        times.append(time.perf_counter() - start)
    return min(times)


def bench_ml100k(folder: Path, work: Path, repeats: int = 5) -> list[tuple]:
    def ours(attempt: int) -> None:
        build_dataset(build_config("movielens-100k", "tallrec", {
            "path": str(folder), "format": "tallrec-json", "output": str(work / "ours"), "overwrite": True}))

    def reference(attempt: int) -> None:
        reference_tallrec_movie(folder, work / "reference")

    ours_s, reference_s = best_of(repeats, ours), best_of(repeats, reference)
    same = digest(work / "ours") == digest(work / "reference")
    return [("ml-100k, --preset tallrec (pandas builder)", f"{ours_s:.3f}", "-", f"identical: {same}"),
            ("ml-100k, row-by-row Python reference", f"{reference_s:.3f}", "-",
             f"builder is {reference_s / ours_s:.2f}x the reference speed")]


def synthetic_log(folder: Path, ratings: int, seed: int = 0) -> tuple[Path, Path, Path]:
    """A MovieLens-like log: Zipf-ish item popularity, users with 10-500 ratings, epoch-second times."""
    rng = np.random.default_rng(seed)
    users, items = max(ratings // 100, 1), max(ratings // 500, 20)
    frame = pd.DataFrame({
        "user_id": rng.integers(0, users, ratings).astype(np.int64),
        "item_id": (rng.zipf(1.3, ratings) % items).astype(np.int64),
        "rating": rng.integers(1, 6, ratings).astype(np.int8),
        "timestamp": rng.integers(946684800, 1704067200, ratings).astype(np.int64),
    })
    titles = pd.DataFrame({"item_id": np.arange(items), "title": [f"Synthetic Movie {i} ({1950 + i % 70})"
                                                                   for i in range(items)]})
    log_parquet, log_csv, items_csv = folder / "log.parquet", folder / "log.csv", folder / "items.csv"
    frame.to_parquet(log_parquet)
    frame.to_csv(log_csv, index=False)
    titles.to_csv(items_csv, index=False)
    return log_parquet, log_csv, items_csv


def run_child(args: list[str]) -> tuple[float, float, int]:
    """Wall seconds, peak RSS in GiB and exit code of one CLI run in a child process."""
    start = time.perf_counter()
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        sys.stderr.write(process.stderr.read().decode())
    return elapsed, usage.ru_maxrss / 1024 ** 2, os.waitstatus_to_exitcode(status)


def bench_large(work: Path, ratings: int) -> list[tuple]:
    start = time.perf_counter()
    log_parquet, log_csv, items_csv = synthetic_log(work, ratings)
    print(f"generated {ratings:,} ratings in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    tallrec = str(Path(sys.executable).with_name("tallrec"))
    rows = []
    for log, extra, label in (
        (log_parquet, [], "default options (last 10,000 records, tallrec split)"),
        (log_csv, [], "default options (last 10,000 records, tallrec split)"),
        (log_parquet, ["--max-records", "1000000", "--split", "leave-last-out"], "1,000,000 records, leave-last-out"),
    ):
        output = work / f"out-{log.suffix[1:]}-{len(extra)}"
        seconds, peak, code = run_child([tallrec, "data", "build", "csv", "--path", str(log), "--items", str(items_csv),
                                         "-o", str(output), *extra])
        records = json.loads((output / "manifest.json").read_text())["records"] if code == 0 else "failed"
        rows.append((f"{ratings / 1e6:g}M ratings, {log.suffix[1:]}, {label}", f"{seconds:.1f}", f"{peak:.2f}",
                     f"{records} records"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ml100k", type=Path, default=REPO.parent / "shared" / "data" / "ml-100k")
    parser.add_argument("--ratings", type=int, default=10_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tallrec-bench-") as tmp:
        work = Path(tmp)
        rows = bench_ml100k(args.ml100k, work) if (args.ml100k / "u.data").exists() else []
        rows += bench_large(work, args.ratings)
    print(f"\n{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, pandas {pd.__version__}\n")
    print("| case | seconds | peak RSS (GiB) | notes |\n|---|---:|---:|---|")
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")


if __name__ == "__main__":
    main()
