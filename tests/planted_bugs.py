"""Issue 28's planted bugs, re-planted: does each make its module's own tests fail?

Each bug is one exact substitution in one source file (it must match once, or the script stops: the code moved
and the bug needs re-stating), planted in a copy of the sources under build/planted/<bug>, where that module's
test files run (the working tree is never touched). Prints one line per bug, caught or survived, and the first
failing test; exits 1 when any survives.

    .venv/bin/python -m tests.planted_bugs            # all (a few minutes)
    .venv/bin/python -m tests.planted_bugs metrics-accuracy-threshold
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import _test_data_root
from tests.mutation import copy_sources

REPO = Path(__file__).resolve().parents[1]
PROMPT_TESTS = ("tests/model/test_prompts.py", "tests/model/test_label_tokens.py")
FILES_TESTS = ("tests/core/test_files.py",)


@dataclass(frozen=True)
class Bug:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


BUGS = (
    Bug("prompts-labels-without-context", "tallrec_cli/model/prompts.py",
        "        tokens = _answer_tokens(tokenizer, prompt, word)\n",
        '        tokens = tokenizer(word, add_special_tokens=False)["input_ids"]\n', PROMPT_TESTS),
    Bug("prompts-same-token-check-removed", "tallrec_cli/model/prompts.py",
        "    if ids[0] == ids[1]:\n", "    if False:\n", PROMPT_TESTS),
    Bug("prompts-merge-guard-removed", "tallrec_cli/model/prompts.py",
        "    if full_ids[: len(prompt_ids)] != prompt_ids:\n", "    if False:\n", PROMPT_TESTS),
    Bug("metrics-gauc-interval-unweighted", "tallrec_cli/core/metrics.py",
        "    weights *= counts\n", "", ("tests/core/test_metrics.py",)),
    Bug("metrics-accuracy-threshold", "tallrec_cli/core/metrics.py",
        "scores >= 0.5", "scores > 0.5", ("tests/core/test_metrics.py",)),
    Bug("files-no-rollback-on-second-rename", "tallrec_cli/core/files.py",
        "        except BaseException:\n            os.replace(aside, target)\n            raise\n",
        "        except BaseException:\n            raise\n", FILES_TESTS),
    Bug("files-manifest-moved-in-first", "tallrec_cli/core/files.py",
        "sorted(staging.iterdir(), key=lambda entry: entry.name == MANIFEST_NAME)",
        "sorted(staging.iterdir(), key=lambda entry: entry.name != MANIFEST_NAME)", FILES_TESTS),
    Bug("pair-loss-not-divided-by-accumulation", "tallrec_cli/train/pair_loss.py",
        "    loss_is_scaled_for_ga = False\n", "    loss_is_scaled_for_ga = True\n",
        ("tests/train/test_pair_loss.py",)),
    Bug("train-class-weights-forced-equal", "tallrec_cli/train/run.py",
        'weights = class_weights([record["label"] for record in data.train_records], config.prompt.class_weight)',
        "weights = (1.0, 1.0)", ("tests/train/test_pair_loss.py",)),
)


def plant(bug: Bug, work: Path) -> None:
    copy_sources(work)
    target = work / bug.path
    text = target.read_text()
    if text.count(bug.old) != 1:
        raise SystemExit(f"{bug.name}: {bug.old!r} is not in {bug.path} exactly once; re-state the bug")
    target.write_text(text.replace(bug.old, bug.new))


def run_tests(bug: Bug, work: Path) -> tuple[bool, str, float]:
    """(caught, first failing test or '', seconds): the copy's sources come first on the path."""
    env = {**os.environ, "PYTHONPATH": str(work), "TALLREC_TEST_DATA": str(_test_data_root())}
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                                "-m", "not interop", *bug.tests], cwd=work, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    failed = re.search(r"^(?:FAILED|ERROR) (\S+)", completed.stdout, re.MULTILINE)
    return completed.returncode != 0, failed[1] if failed else "", seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bugs", nargs="*", help="bug names (default: all)")
    args = parser.parse_args(argv)
    chosen = [bug for bug in BUGS if not args.bugs or bug.name in args.bugs]
    survivors = 0
    for bug in chosen:
        work = REPO / "build" / "planted" / bug.name
        plant(bug, work)
        caught, first, seconds = run_tests(bug, work)
        survivors += not caught
        print(f"{bug.name:42} {'caught' if caught else 'SURVIVED':8} {seconds:6.1f} s  {first}", flush=True)
        shutil.rmtree(work, ignore_errors=True)
    print(f"{len(chosen) - survivors} of {len(chosen)} caught")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
