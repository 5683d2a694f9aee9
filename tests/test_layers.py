"""The stages import only downwards: core -> model -> data_builders -> train -> eval -> export -> sweep -> cli.

Every own-package import is read from the source (top-level and inside functions), so an upward import hidden
in a function fails here as well as a cycle does; rich (rendering) is the cli layer's alone.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OWN = ("tallrec_cli", "data_builders")
LAYERS = ("tallrec_cli", "tallrec_cli.core", "tallrec_cli.model", "data_builders", "tallrec_cli.train",
          "tallrec_cli.eval", "tallrec_cli.export", "tallrec_cli.sweep", "tallrec_cli.cli", "tallrec_cli.__main__")
RENDERING = ("rich", "typer")
# Our modules that subclass transformers' or trl's classes, so importing them loads torch, transformers and trl:
# the one kind of own module a function may import (the run that trains), so `tallrec --help` stays fast.
HEAVY = ("tallrec_cli.train.callbacks", "tallrec_cli.train.tracking", "tallrec_cli.train.pair_loss",
         "tallrec_cli.train.lm_head", "tallrec_cli.train.shared_prefix")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    """The index of the deepest layer prefix ``module`` falls under."""
    matches = [index for index, layer in enumerate(LAYERS) if module == layer or module.startswith(layer + ".")]
    return max(matches)


def imports(path: Path, module: str, root: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at top level) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            # `from pkg import module` imports the module itself when it is one
            found += [(f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}", root) else base, node.lineno,
                       id(node) in top) for alias in node.names]
    return found


def _is_module(name: str, root: Path) -> bool:
    candidate = root.joinpath(*name.split("."))
    return candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file()


def import_problems(root: Path) -> list[str]:
    """Upward imports, own-package imports inside functions, rendering below the cli layer, and cycles."""
    problems, graph = [], {}
    files = sorted(path for package in OWN for path in (root / package).rglob("*.py"))
    for path in files:
        module = module_name(path, root)
        graph.setdefault(module, set())
        for target, line, at_top in imports(path, module, root):
            where = f"{path.relative_to(root)}:{line}"
            if target.split(".")[0] in RENDERING and layer_of(module) < LAYERS.index("tallrec_cli.cli"):
                problems.append(f"{where}: {module} imports {target} (rendering belongs to the cli layer)")
            if target.split(".")[0] not in OWN:
                continue
            if not at_top and target not in HEAVY:
                problems.append(f"{where}: {module} imports {target} inside a function")
            if layer_of(target) > layer_of(module):
                problems.append(f"{where}: {module} imports {target} from a later stage")
            if target != module and not module.startswith(target + "."):  # a package's own __init__ is no edge
                graph[module].add(target)
    return problems + [f"import cycle: {' -> '.join(cycle)}" for cycle in _cycles(graph)]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_every_import_runs_down_the_stages():
    assert import_problems(REPO) == []


@pytest.mark.parametrize("module", HEAVY)
def test_heavy_modules_are_the_ones_that_need_trl_or_transformers_at_import(module):
    path = REPO.joinpath(*module.split(".")).with_suffix(".py")
    assert any(target.split(".")[0] in ("torch", "transformers", "trl") and at_top
               for target, _, at_top in imports(path, module, REPO))


def test_the_command_line_imports_no_deep_learning_library():
    """`tallrec --help` and every check made before weights load stay free of torch/transformers/trl."""
    code = ("import sys, tallrec_cli.cli.app; "
            "print(sorted(m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_check_fails_on_an_upward_import_a_hidden_one_and_a_cycle(tmp_path):
    def write(name: str, text: str) -> None:
        path = tmp_path.joinpath(*name.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    for package in ("tallrec_cli", "tallrec_cli/core", "tallrec_cli/eval", "data_builders"):
        write(f"{package}/__init__.py", "")
    write("tallrec_cli/core/a.py", "from tallrec_cli.eval import run\n")
    write("tallrec_cli/eval/run.py", "from tallrec_cli.core import a\nimport rich\n")
    write("data_builders/b.py", "def f():\n    from tallrec_cli.eval.run import x\n")
    problems = import_problems(tmp_path)
    assert any("core/a.py:1: tallrec_cli.core.a imports tallrec_cli.eval.run from a later stage" in p for p in problems)
    assert any("b.py:2" in p and "inside a function" in p for p in problems)
    assert any("b.py:2" in p and "from a later stage" in p for p in problems)
    cycles = [p for p in problems if p.startswith("import cycle: ")]
    assert len(cycles) == 1 and set(cycles[0].split(": ")[1].split(" -> ")) == {"tallrec_cli.core.a",
                                                                              "tallrec_cli.eval.run"}
    assert any("run.py:2: tallrec_cli.eval.run imports rich" in p for p in problems)


@pytest.mark.parametrize("module", ["tallrec_cli.core.files", "tallrec_cli.eval.run", "tallrec_cli.cli.app"])
def test_layer_of_names_the_deepest_stage(module):
    assert LAYERS[layer_of(module)] == module.rpartition(".")[0]
