"""Wheels the GPU image lacks for `tallrec train`: download them here, decide on the target what is missing.

The lent GPU machine has no network. Its image (Python 3.12, torch 2.11+cu130, transformers 5.17, accelerate 1.15,
peft, pyarrow, ...) had no trl, bitsandbytes or datasets when last listed, and no dill or multiprocess (datasets
imports both at import time). They travel as wheels beside the working tree (64 MiB in all, the tree included: the
py312 set is ~43 MiB, bitsandbytes 41 MiB of it, carried whole):

    python -m acceptance.wheels download --dest wheels/py312                         # here, with network
    python -m acceptance.wheels download --dest wheels/py311 --python-version 3.11   # the rehearsal's set
    python -m acceptance.wheels check --wheels wheels/py312                          # on the target
    python -m acceptance.wheels install --wheels wheels/py312 [--target DIR]         # on the target, offline

Host side (`download_all`): one `pip download --no-deps --only-binary=:all:` per wheel, with that wheel's own
platform tag (`Pin.platform`: bitsandbytes 0.50.2 is tagged manylinux_2_24 only, and pip does not extend a
manylinux_2_28 request downward; pure wheels are `any`).

Target side (`plan_install`): the modules are imported by the target python in one subprocess; if any fails, each
again in a subprocess of its own. A module whose import fails, for whatever reason (absent, or a dependency of it
absent: datasets without dill), gets its carried wheel. The carried wheels' own Requires-Dist (pyarrow >= 24 for
datasets 5.2, fsspec <= 2026.9.0, ...) are then held against the versions installed there: pip installs with
--no-deps and --no-index, so nobody else checks them. `import_failures` is the same import test in this process
(what acceptance/gpu_check.py runs first).

Standard library only, plus `packaging` for the requirement checks (in the GPU image and every venv with pip).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_WHEELS = REPO / "wheels"


@dataclass(frozen=True)
class Pin:
    """One carried distribution: its name on PyPI, the module it installs, the version tested, the platform tag
    its wheel is published under (passed to `pip download --platform` as is)."""

    name: str
    module: str
    version: str
    platform: str = "any"
    # Attributes fetched after the import: trl imports lazily (`import trl` alone loads packaging and nothing
    # else), so only `trl.SFTTrainer` proves that transformers, accelerate and datasets import under it.
    symbols: tuple[str, ...] = ()

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


# What `tallrec train` needs beyond the GPU image, in install order (a dependency before what imports it), pinned to
# the versions tested. trl imports datasets; datasets imports dill, multiprocess and xxhash at import time. xxhash
# was in the image as last listed; it is carried anyway (0.45 MiB) and installed only if its import fails there.
CARRIED: tuple[Pin, ...] = (
    Pin("dill", "dill", "0.4.1"),
    Pin("multiprocess", "multiprocess", "0.70.19"),  # py311/py312-none-any: --python-version picks the file
    Pin("xxhash", "xxhash", "4.1.0", "manylinux_2_17_x86_64"),  # manylinux2014 = manylinux_2_17
    Pin("datasets", "datasets", "5.2.0", symbols=("Dataset",)),
    Pin("trl", "trl", "1.16.0", symbols=("SFTTrainer", "SFTConfig")),
    Pin("bitsandbytes", "bitsandbytes", "0.50.2", "manylinux_2_24_x86_64"),  # 41 MiB, every CUDA build: not trimmed
)


class DownloadError(RuntimeError):
    pass


@dataclass(frozen=True)
class Downloaded:
    pin: Pin
    path: Path
    fresh: bool  # False: the wheel was already in dest
    seconds: float

    @property
    def bytes(self) -> int:
        return self.path.stat().st_size


def project_pins(python: Path | str, pins: Sequence[Pin] = CARRIED) -> tuple[Pin, ...]:
    """`pins` at the versions installed for ``python`` (a venv); a pin it lacks keeps its version."""
    found = installed_versions(python, [pin.name for pin in pins])
    return tuple(replace(pin, version=found.get(pin.name) or pin.version) for pin in pins)


def pip_download_command(pin: Pin, python_version: str, dest: Path) -> list[str]:
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
            python_version, "--implementation", "cp", "--platform", pin.platform, "--dest", str(dest),
            pin.requirement]


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _wheel_in(folder: Path, pin: Pin) -> Path | None:
    # Wheel file names normalise the distribution name to underscores (PEP 427/491).
    for path in sorted(folder.glob("*.whl")):
        name, version = path.name.split("-")[:2]
        if _normal(name) == _normal(pin.name) and version == pin.version:
            return path
    return None


def download_wheel(pin: Pin, python_version: str, dest: Path) -> Downloaded:
    """Download one wheel with its own platform tag; DownloadError quotes pip's last line."""
    dest.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    present = _wheel_in(dest, pin)
    if present is not None:  # a rerun (make) downloads nothing
        return Downloaded(pin, present, False, time.perf_counter() - started)
    with tempfile.TemporaryDirectory(dir=dest) as staging:
        command = pip_download_command(pin, python_version, Path(staging))
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        wheel = _wheel_in(Path(staging), pin)
        if result.returncode != 0 or wheel is None:
            last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise DownloadError(f"{pin.requirement} for python {python_version}, --platform {pin.platform}: "
                                f"no wheel found\n  {last}\n  command: {' '.join(command[1:])}")
        target = dest / wheel.name
        shutil.move(wheel, target)
    return Downloaded(pin, target, True, time.perf_counter() - started)


def download_all(dest: Path, python_version: str = "3.12", pins: Sequence[Pin] = CARRIED) -> list[Downloaded]:
    """Every carried wheel for ``python_version`` on x86-64 Linux into ``dest``, each file as published."""
    return [download_wheel(pin, python_version, dest) for pin in pins]


def folder_bytes(path: Path) -> int:
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file() and not item.is_symlink())


# ---------------------------------------------------------------------------------------------------------------
# Target side: what is missing, and do the carried wheels' declared requirements hold there.

def _import_pin(pin: Pin) -> None:
    imported = importlib.import_module(pin.module)
    for symbol in pin.symbols:
        getattr(imported, symbol)


def _describe_failure(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"


def import_failures(pins: Sequence[Pin] = CARRIED) -> dict[str, str]:
    """In this process: the pins whose module (and symbols) do not import, with the first line of the error."""
    failures = {}
    for pin in pins:
        try:
            _import_pin(pin)
        except Exception as exc:  # noqa: BLE001 - an ImportError, or a library raising at import (a CUDA binary)
            failures[pin.name] = _describe_failure(exc)
    return failures


_PROBE = """
import importlib, importlib.metadata as md, json, sys, warnings
warnings.simplefilter("ignore")
for module, dist, symbols in zip(sys.argv[1::3], sys.argv[2::3], sys.argv[3::3]):
    out = {"module": module, "ok": False, "missing": None, "error": None, "version": None}
    try:
        out["version"] = md.version(dist)
    except md.PackageNotFoundError:
        pass
    try:
        imported = importlib.import_module(module)
        for symbol in filter(None, symbols.split(",")):
            getattr(imported, symbol)
        out["ok"] = True
    except ImportError as exc:
        out["missing"] = exc.name
        out["error"] = f"{type(exc).__name__}: {exc}"
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    print("PROBE " + json.dumps(out), flush=True)
"""


@dataclass(frozen=True)
class ImportProbe:
    module: str
    ok: bool
    version: str | None  # installed distribution version, None if not installed
    missing: str | None  # the module an ImportError names (itself, or a dependency such as dill)
    error: str | None

    @property
    def absent(self) -> bool:
        """The module itself is not installed (as opposed to installed but failing to import)."""
        return not self.ok and self.missing is not None and self.missing.split(".")[0] == self.module


def _env(pythonpath: Path | None) -> dict[str, str] | None:
    """The environment for a target-python subprocess: PYTHONPATH led by a pip --target folder, if any."""
    if pythonpath is None:
        return None
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    return env


def _run_probe(python: Path | str, pins: Sequence[Pin], pythonpath: Path | None,
               timeout: float) -> list[ImportProbe]:
    """Import ``pins``' modules in order in one fresh ``python`` process; a crash fails the modules not reached."""
    args = [value for pin in pins for value in (pin.module, pin.name, ",".join(pin.symbols))]
    result = subprocess.run([str(python), "-c", _PROBE, *args], capture_output=True, text=True, timeout=timeout,
                            env=_env(pythonpath), check=False)
    probes = []
    for line in result.stdout.splitlines():
        if line.startswith("PROBE "):
            data = json.loads(line[len("PROBE "):])
            probes.append(ImportProbe(data["module"], data["ok"], data["version"], data["missing"], data["error"]))
    if len(probes) < len(pins):  # the interpreter died (a segfault in a native library): a failed import too
        tail = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
        probes += [ImportProbe(pin.module, False, None, None, f"import crashed: {tail}") for pin in pins[len(probes):]]
    return probes


def probe_import(python: Path | str, pin: Pin, pythonpath: Path | None = None, timeout: float = 300) -> ImportProbe:
    """Import ``pin.module`` in a fresh ``python`` process; never raises for a failed import."""
    return _run_probe(python, [pin], pythonpath, timeout)[0]


def probe_imports(python: Path | str, pins: Sequence[Pin] = CARRIED, pythonpath: Path | None = None,
                  timeout: float = 300) -> dict[str, ImportProbe]:
    """Every module imported in one process (one torch import: the usual case after an install); if any fails,
    each again in a process of its own, so that one failure (or a half-imported module) cannot stand for another."""
    together = _run_probe(python, pins, pythonpath, timeout)
    if all(probe.ok for probe in together):
        return {pin.name: probe for pin, probe in zip(pins, together)}
    return {pin.name: probe_import(python, pin, pythonpath, timeout) for pin in pins}


def installed_versions(python: Path | str, names: Iterable[str],
                       pythonpath: Path | None = None) -> dict[str, str | None]:
    script = ("import importlib.metadata as m, json, sys\n"
              "out = {}\n"
              "for name in sys.argv[1:]:\n"
              "    try: out[name] = m.version(name)\n"
              "    except m.PackageNotFoundError: out[name] = None\n"
              "print(json.dumps(out))")
    result = subprocess.run([str(python), "-c", script, *names], capture_output=True, text=True, check=True,
                            env=_env(pythonpath))
    versions: dict[str, str | None] = json.loads(result.stdout)
    return versions


def wheel_metadata(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as archive:
        name = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        return archive.read(name).decode()


def declared_requirements(wheel: Path) -> list[str]:
    """The wheel's Requires-Dist lines that apply without extras on this interpreter's environment markers."""
    from packaging.requirements import Requirement

    lines = [line.split(":", 1)[1].strip() for line in wheel_metadata(wheel).splitlines()
             if line.startswith("Requires-Dist:")]
    kept = []
    for line in lines:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            kept.append(line)
    return kept


@dataclass(frozen=True)
class RequirementCheck:
    wheel: str
    requirement: str
    installed: str | None
    carried: bool  # satisfied by another carried wheel rather than by the image

    @property
    def name(self) -> str:
        from packaging.requirements import Requirement

        return _normal(Requirement(self.requirement).name)

    @property
    def ok(self) -> bool:
        from packaging.requirements import Requirement

        if self.installed is None:
            return False
        return Requirement(self.requirement).specifier.contains(self.installed, prereleases=True)


def check_requirements(python: Path | str, wheels: Sequence[Path], installing: Sequence[Pin] = (),
                       pythonpath: Path | None = None) -> list[RequirementCheck]:
    """Every declared requirement of ``wheels`` against what ``python`` has, or what is about to be installed from
    the carried set (``installing``): pip runs with --no-deps there, so a too-old pyarrow would only show later."""
    from packaging.requirements import Requirement

    declared = [(wheel, line) for wheel in wheels for line in declared_requirements(wheel)]
    names = sorted({Requirement(line).name for _, line in declared})
    versions = installed_versions(python, names, pythonpath)
    incoming = {_normal(pin.name): pin.version for pin in installing}
    checks = []
    for wheel, line in declared:
        name = _normal(Requirement(line).name)
        carried = name in incoming
        version = incoming[name] if carried else versions.get(Requirement(line).name)
        checks.append(RequirementCheck(wheel.name, line, version, carried))
    return checks


def requirement_floor(wheel: Path, name: str) -> str | None:
    """The specifier ``wheel`` declares for ``name`` (datasets 5.2.0 -> pyarrow: '>=24.0.0'), None if none."""
    from packaging.requirements import Requirement

    for line in declared_requirements(wheel):
        requirement = Requirement(line)
        if _normal(requirement.name) == _normal(name):
            return str(requirement.specifier)
    return None


@dataclass
class InstallPlan:
    probes: dict[str, ImportProbe]
    install: list[Pin]
    wheels: list[Path]
    checks: list[RequirementCheck] = field(default_factory=list)

    @property
    def unmet(self) -> list[RequirementCheck]:
        return [check for check in self.checks if not check.ok]

    @property
    def pyarrow(self) -> RequirementCheck | None:
        """datasets' declared pyarrow floor held against the target's pyarrow (pyarrow itself is not carried:
        it is in the image, and a second copy would shadow the one torch's stack was tested with)."""
        return next((check for check in self.checks if check.name == "pyarrow" and check.wheel.startswith("datasets-")),
                    None)


def carried_wheel(folder: Path, pin: Pin) -> Path:
    wheel = _wheel_in(folder, pin)
    if wheel is None:
        raise FileNotFoundError(f"no {pin.requirement} wheel in {folder} (download it with: make gpu-wheels)")
    return wheel


def plan_install(python: Path | str, folder: Path, pins: Sequence[Pin] = CARRIED,
                 pythonpath: Path | None = None) -> InstallPlan:
    """What ``python`` lacks by import, the carried wheels that fix it, and their requirements against the image.

    A module is installed from its wheel when its import fails for any reason (absent, or a dependency absent:
    datasets fails on `No module named 'dill'`); the dependency's own probe fails as well, so it is installed too."""
    probes = probe_imports(python, pins, pythonpath)
    install = [pin for pin in pins if not probes[pin.name].ok]
    wheels = [carried_wheel(folder, pin) for pin in install]
    all_wheels = [wheel for wheel in (_wheel_in(folder, pin) for pin in pins) if wheel is not None]
    checks = check_requirements(python, all_wheels, install, pythonpath)
    return InstallPlan(probes, install, wheels, checks)


def install_command(python: Path | str, wheels: Sequence[Path], target: Path | None = None) -> list[str]:
    """Offline install of exactly these files: no index, no dependency resolution (the image's versions stay)."""
    folders = sorted({str(wheel.parent) for wheel in wheels})
    command = [str(python), "-m", "pip", "install", "--no-index", *(f"--find-links={f}" for f in folders),
               "--no-deps", "--no-compile", "--no-cache-dir", "--disable-pip-version-check", "-q"]
    if target is not None:
        command += ["--target", str(target)]
    return command + [str(wheel) for wheel in wheels]


def has_pip(python: Path | str) -> bool:
    return subprocess.run([str(python), "-m", "pip", "--version"], capture_output=True, check=False).returncode == 0


def unpack_wheels(wheels: Sequence[Path], target: Path) -> None:
    """What `pip install --target` does for these wheels, for a python without pip: every carried wheel is
    purelib-rooted (the bitsandbytes .so files sit inside its package), so unzipping is the install."""
    target.mkdir(parents=True, exist_ok=True)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(target)


def describe(plan: InstallPlan) -> str:
    lines = []
    for name, probe in plan.probes.items():
        state = "ok" if probe.ok else ("absent" if probe.absent else "fails")
        detail = f" ({probe.error})" if probe.error else ""
        lines.append(f"  {name:<13} {state:<6} installed={probe.version or '-'}{detail}")
    lines.append("to install: " + (", ".join(pin.requirement for pin in plan.install) or "nothing"))
    arrow = plan.pyarrow
    if arrow is not None:
        verdict = "met" if arrow.ok else "NOT MET (datasets may still import: the probes after the install decide)"
        lines.append(f"pyarrow {arrow.installed or 'absent'} against {arrow.wheel}'s {arrow.requirement}: {verdict}")
    for check in plan.unmet:
        source = "carried" if check.carried else "installed"
        lines.append(f"  UNMET {check.wheel}: {check.requirement} ({source}: {check.installed or 'none'})")
    return "\n".join(lines)


def install(python: Path | str, plan: InstallPlan, target: Path | None = None) -> dict[str, ImportProbe]:
    """Install ``plan``'s wheels offline (pip, or unpacked into ``target`` where the python has no pip); returns
    the import probes afterwards (the plan's own when there was nothing to install)."""
    if not plan.wheels:
        return plan.probes
    started = time.perf_counter()
    if has_pip(python):
        subprocess.run(install_command(python, plan.wheels, target), check=True)
    elif target is not None:
        print(f"{python} has no pip: unpacking the wheels into {target}")
        unpack_wheels(plan.wheels, target)
    else:
        raise SystemExit(f"{python} has no pip: pass --target DIR (the wheels are unpacked there)")
    print(f"installed {len(plan.wheels)} wheels in {time.perf_counter() - started:.1f} s")
    return probe_imports(python, pythonpath=target)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    download = commands.add_parser("download", help="download the carried wheels here (needs the network)")
    download.add_argument("--dest", type=Path, required=True)
    download.add_argument("--python-version", default="3.12")
    download.add_argument("--versions-from", type=Path, help="a python whose installed versions pin the wheels")
    for name in ("check", "install"):
        sub = commands.add_parser(name, help=f"{name} on the target: import probes, declared requirements")
        sub.add_argument("--wheels", type=Path, default=DEFAULT_WHEELS / "py312")
        sub.add_argument("--python", default=sys.executable)
        sub.add_argument("--json", type=Path, help="write the plan as JSON here")
        sub.add_argument("--target", type=Path, help="pip --target folder (then put it on PYTHONPATH)")
        if name == "install":
            sub.add_argument("--strict", action="store_true", help="refuse to install when a declared floor is unmet")
    args = parser.parse_args(argv)

    if args.command == "download":
        pins = project_pins(args.versions_from) if args.versions_from else CARRIED
        for item in download_all(args.dest, args.python_version, pins):
            how = f"--platform {item.pin.platform}, {item.seconds:.1f} s" if item.fresh else "already here"
            print(f"{item.path.name:<70} {item.bytes / 2**20:7.2f} MiB ({how})")
        print(f"total {folder_bytes(args.dest) / 2**20:.2f} MiB in {args.dest}")
        return 0

    plan = plan_install(args.python, args.wheels, pythonpath=args.target)
    print(describe(plan))
    report: dict[str, object] = {
        "probes": {name: vars(probe) for name, probe in plan.probes.items()},
        "install": [pin.requirement for pin in plan.install],
        "pyarrow": plan.pyarrow and {**vars(plan.pyarrow), "ok": plan.pyarrow.ok},
        "unmet": [vars(check) for check in plan.unmet]}
    status = 0
    if args.command == "check":
        status = 1 if plan.unmet else 0
    elif plan.unmet and args.strict:
        print("not installing: the image does not meet the carried wheels' declared requirements", file=sys.stderr)
        status = 1
    else:
        if plan.unmet:  # declared floors are not import checks: the probes after the install decide
            print("warning: installing although declared requirements are unmet (see UNMET above)", file=sys.stderr)
        after = install(args.python, plan, args.target)
        report["after"] = {name: vars(probe) for name, probe in after.items()}
        failed = [f"{name} ({probe.error})" for name, probe in after.items() if not probe.ok]
        print("after install: " + ("every module imports" if not failed else "still failing: " + ", ".join(failed)))
        status = 1 if failed else 0
        if args.target is not None:
            print(f"installed under {args.target}: export PYTHONPATH={args.target}${{PYTHONPATH:+:$PYTHONPATH}}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
