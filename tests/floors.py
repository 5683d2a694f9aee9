"""The dependency floors declared in pyproject.toml, read one way for `make test-floors` and its tests.

`python -m tests.floors` prints one `name==floor` pin per dependency (the test extra included; torch left out:
it stays the CPU build the Makefile installs), for one pip resolve of the whole floor set. Standard library
only: it runs before the floors venv has anything installed.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
KEPT = ("torch",)  # installed at the version the Makefile pins, not at its floor
_FLOOR = re.compile(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*>=\s*([0-9][0-9A-Za-z.]*)")


def declared_floors(pyproject: Path = PYPROJECT) -> dict[str, str]:
    """{package: floor} for every dependency and test extra of the project."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    floors = {}
    for line in project["dependencies"] + project["optional-dependencies"]["test"]:
        match = _FLOOR.match(line)
        if match is None:
            raise ValueError(f"{pyproject}: {line!r} declares no >= floor")
        floors[match.group(1).lower()] = match.group(2)
    return floors


def pins() -> list[str]:
    return [f"{name}=={floor}" for name, floor in declared_floors().items() if name not in KEPT]


if __name__ == "__main__":
    print(" ".join(pins()))
