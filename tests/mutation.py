"""`make mutation`: mutmut 3 over the core modules, each against its own fast test files.

Each module runs in its own copy of the sources (``build/mutation/<module>``, where mutmut writes its
``mutants/`` folder), so the working tree is never touched and a module's mutants are judged only by the tests
written for it. ``python -m tests.mutation [module ...]`` runs some; the survivors of each are printed, with the
ones docs/lab-notebook.md ("Mutation testing") shows to be equivalent marked as such. The exit status is 1 when a
survivor is not one of those.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COPIED = ("tallrec_cli", "data_builders", "tests", "recipes", "pyproject.toml")

# module -> (its source file, the tests that are its own, the mutants to run: fnmatch patterns on mutmut's names)
MODULES: dict[str, tuple[str, list[str], list[str]]] = {
    "prompts": ("tallrec_cli/model/prompts.py", ["tests/model/test_prompts.py", "tests/model/test_label_tokens.py"],
                []),
    "metrics": ("tallrec_cli/core/metrics.py", ["tests/core/test_metrics.py"], []),
    "scoring": ("tallrec_cli/model/scoring.py", ["tests/model/test_scoring_prompts.py"], []),
    # the staging and overwrite code only: the rest of files.py (hashing, error wording) has its own tests elsewhere
    "files": ("tallrec_cli/core/files.py", ["tests/core/test_files.py"],
              [f"tallrec_cli.core.files.{name}__mutmut_*" for name in (
                  "x_atomic_path", "x__exchange", "x__swap_contents", "x__restore_aside", "x_replace_dir",
                  "x_artifact_kind", "x_check_output_folder", "x__check_replaceable", "x_staged_dir")]),
    "pair_loss": ("tallrec_cli/train/pair_loss.py", ["tests/train/test_pair_loss.py"], []),
    "integrity": ("tallrec_cli/core/integrity.py", ["tests/core/test_integrity.py"], []),
    "baselines": ("tallrec_cli/eval/baselines.py", ["tests/eval/test_baselines.py"], []),
}

# Survivors shown equivalent in docs/lab-notebook.md ("Mutation testing"): module -> mutant names.
EQUIVALENT: dict[str, set[str]] = {}

_RESULT = re.compile(r"^\s+(\S+): (\S+)")


def copy_sources(work: Path) -> None:
    """A fresh copy of the sources and tests in ``work`` (the working tree is never touched)."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, work / name, ignore=shutil.ignore_patterns("__pycache__", "mutants"))
        else:
            shutil.copy2(source, work / name)


def _write_config(work: Path, source: str, tests: list[str]) -> None:
    """mutmut reads setup.cfg when pyproject.toml has no [tool.mutmut]: the copy's own, not the repository's."""
    lines = ["[mutmut]", "source_paths = tallrec_cli", f"only_mutate = {source}", "also_copy =",
             "    data_builders", "    recipes", "pytest_add_cli_args_test_selection ="]
    lines += [f"    {test}" for test in tests]
    (work / "setup.cfg").write_text("\n".join(lines) + "\n", encoding="utf-8")


def run_module(name: str, root: Path, children: int) -> tuple[dict[str, str], float]:
    """{mutant: status} of every mutant of module ``name`` (killed ones included), and the seconds it took."""
    source, tests, patterns = MODULES[name]
    work = root / name
    copy_sources(work)
    _write_config(work, source, tests)
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(children), *patterns], cwd=work,
                   check=False)
    listing = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=work,
                             capture_output=True, text=True, check=True).stdout
    results = {match[1]: match[2] for match in map(_RESULT.match, listing.splitlines()) if match}
    if patterns:
        results = {mutant: status for mutant, status in results.items()
                   if any(re.fullmatch(pattern.replace(".", r"\.").replace("*", ".*"), mutant) for pattern in patterns)}
    return results, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", metavar="module", help=f"some of: {', '.join(MODULES)} (default: all)")
    parser.add_argument("--work", type=Path, default=REPO / "build" / "mutation")
    parser.add_argument("--children", type=int, default=2, help="mutants tested at once")
    args = parser.parse_args(argv)
    if unknown := set(args.modules) - set(MODULES):
        parser.error(f"unknown module(s) {', '.join(sorted(unknown))}: choose from {', '.join(MODULES)}")
    unexplained = 0
    for name in args.modules or MODULES:
        results, seconds = run_module(name, args.work, args.children)
        survivors = sorted(mutant for mutant, status in results.items() if status != "killed")
        print(f"{name}: {len(results) - len(survivors)} of {len(results)} mutants killed in {seconds:.0f} s")
        for mutant in survivors:
            known = mutant in EQUIVALENT.get(name, set())
            unexplained += not known
            print(f"  {results[mutant]}: {mutant}{' (equivalent, see docs/lab-notebook.md)' if known else ''}")
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
