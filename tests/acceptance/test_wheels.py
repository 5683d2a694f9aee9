"""acceptance/wheels.py without network: synthetic wheels and modules stand in for trl, datasets, bitsandbytes."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from acceptance import wheels
from acceptance.wheels import Pin


def make_wheel(folder: Path, name: str, version: str, files: dict[str, bytes], requires: list[str] = (),
               tag: str = "py3-none-any") -> Path:
    dist = f"{name}-{version}.dist-info"
    metadata = "\n".join(["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
                          *(f"Requires-Dist: {line}" for line in requires)]) + "\n"
    members = {**files, f"{dist}/METADATA": metadata.encode(),
               f"{dist}/WHEEL": f"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: {tag}\n".encode()}
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for path, data in members.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        writer.writerow([path, f"sha256={digest}", len(data)])
    writer.writerow([f"{dist}/RECORD", "", ""])
    path = folder / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)
        archive.writestr(f"{dist}/RECORD", record.getvalue())
    return path


def test_declared_requirements_skip_extras_and_give_the_pyarrow_floor(tmp_path):
    wheel = make_wheel(tmp_path, "datasets", "5.2.0", {"datasets/__init__.py": b""},
                       ["pyarrow>=24.0.0", "dill<0.4.2,>=0.3.0", 'torch; extra == "torch"'])
    assert wheels.declared_requirements(wheel) == ["pyarrow>=24.0.0", "dill<0.4.2,>=0.3.0"]
    assert wheels.requirement_floor(wheel, "pyarrow") == ">=24.0.0"
    assert wheels.requirement_floor(wheel, "torch") is None


@pytest.fixture(scope="session")
def bare_python(tmp_path_factory) -> str:
    """An interpreter with nothing beyond the standard library (a venv without pip)."""
    folder = tmp_path_factory.mktemp("bare")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder / "venv")], check=True)
    return str(folder / "venv" / "bin" / "python")


@pytest.fixture
def fake_image(tmp_path):
    """A PYTHONPATH folder standing in for the GPU image: xxhash imports, datasets needs the absent dill,
    bitsandbytes raises at import, trl is absent."""
    site = tmp_path / "image"
    (site / "xxhash").mkdir(parents=True)
    (site / "xxhash" / "__init__.py").write_text("")
    (site / "datasets").mkdir()
    (site / "datasets" / "__init__.py").write_text("import dill\n")
    (site / "bitsandbytes").mkdir()
    (site / "bitsandbytes" / "__init__.py").write_text("raise RuntimeError('CUDA binary not found\\nmore')\n")
    return site


def test_probes_tell_absent_from_failing(bare_python, fake_image):
    pins = [Pin("trl", "trl", "1.16.0"), Pin("datasets", "datasets", "5.2.0"), Pin("xxhash", "xxhash", "4.1.0"),
            Pin("bitsandbytes", "bitsandbytes", "0.50.2")]
    probes = wheels.probe_imports(bare_python, pins, pythonpath=fake_image)
    assert probes["trl"].absent and not probes["trl"].ok
    assert not probes["datasets"].ok and not probes["datasets"].absent and probes["datasets"].missing == "dill"
    assert probes["xxhash"].ok
    assert probes["bitsandbytes"].error == "RuntimeError: CUDA binary not found"


def test_plan_installs_what_fails_and_flags_an_unmet_floor(tmp_path, bare_python, fake_image, monkeypatch):
    carried = tmp_path / "wheels"
    carried.mkdir()
    pins = (Pin("dill", "dill", "0.4.1"), Pin("datasets", "datasets", "5.2.0"), Pin("xxhash", "xxhash", "4.1.0"))
    make_wheel(carried, "dill", "0.4.1", {"dill/__init__.py": b""})
    make_wheel(carried, "xxhash", "4.1.0", {"xxhash/__init__.py": b""})
    make_wheel(carried, "datasets", "5.2.0", {"datasets/__init__.py": b"import dill\n"},
               ["dill<0.4.2,>=0.3.0", "xxhash", "pyarrow>=24.0.0", "pytest>=1"])
    monkeypatch.setattr(wheels, "installed_versions",
                        lambda python, names, pythonpath=None: {name: {"pyarrow": "23.0.1", "pytest": "9.0"}.get(name)
                                                                for name in names})
    plan = wheels.plan_install(bare_python, carried, pins, pythonpath=fake_image)
    assert [pin.name for pin in plan.install] == ["dill", "datasets"]
    assert [wheel.name.split("-")[0] for wheel in plan.wheels] == ["dill", "datasets"]
    # dill is carried (about to be installed); xxhash imports but has no metadata there, so it cannot be checked
    assert [(check.requirement, check.installed) for check in plan.unmet] == [("xxhash", None),
                                                                              ("pyarrow>=24.0.0", "23.0.1")]
    text = wheels.describe(plan)
    assert "UNMET datasets-5.2.0-py3-none-any.whl: pyarrow>=24.0.0 (installed: 23.0.1)" in text
    assert plan.pyarrow is not None and not plan.pyarrow.ok
    assert "pyarrow 23.0.1 against datasets-5.2.0-py3-none-any.whl's pyarrow>=24.0.0: NOT MET" in text


def test_each_wheel_is_downloaded_with_its_own_platform_tag(tmp_path, monkeypatch):
    """pip does not extend a manylinux_2_28 request down to bitsandbytes' manylinux_2_24 wheel: each pin names its
    tag, and a wrong one fails with pip's answer and the command, never with a silently older release."""
    commands: list[list[str]] = []

    def fake_run(command, **kwargs):
        commands.append(command)
        pin = next(p for p in wheels.CARRIED if command[-1] == p.requirement)
        if command[command.index("--platform") + 1] != pin.platform:
            return subprocess.CompletedProcess(command, 1, "", f"ERROR: No matching distribution found for {pin.name}")
        tag = "py3-none-" + pin.platform
        make_wheel(Path(command[command.index("--dest") + 1]), pin.name, pin.version,
                   {f"{pin.module}/__init__.py": b""}, tag=tag)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(wheels.subprocess, "run", fake_run)
    items = wheels.download_all(tmp_path / "out", "3.12")
    assert [item.pin.name for item in items] == [pin.name for pin in wheels.CARRIED]
    assert all(item.fresh and item.path.parent == tmp_path / "out" and item.path.exists() for item in items)
    platforms = {command[-1].split("==")[0]: command[command.index("--platform") + 1] for command in commands}
    assert platforms["bitsandbytes"] == "manylinux_2_24_x86_64" and platforms["trl"] == "any"
    assert len(commands) == len(wheels.CARRIED)  # one try per wheel
    again = wheels.download_all(tmp_path / "out", "3.12")  # a rerun downloads nothing
    assert not any(item.fresh for item in again) and len(commands) == len(wheels.CARRIED)
    wrong = Pin("bitsandbytes", "bitsandbytes", "0.50.2", "manylinux_2_28_x86_64")
    with pytest.raises(wheels.DownloadError, match="--platform manylinux_2_28_x86_64: no wheel found\n  ERROR: No matching"):
        wheels.download_wheel(wrong, "3.12", tmp_path / "elsewhere")


def test_the_bitsandbytes_wheel_travels_whole(tmp_path, monkeypatch):
    """Every native library stays in the carried wheel (the full set fits in the 64 MiB): the file is pip's."""
    libs = {f"bitsandbytes/libbitsandbytes_{v}.so": v.encode() * 100 for v in ("cpu", "cuda118", "cuda130", "rocm64")}

    def fake_run(command, **kwargs):
        make_wheel(Path(command[command.index("--dest") + 1]), "bitsandbytes", "0.50.2", libs,
                   tag="py3-none-manylinux_2_24_x86_64")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(wheels.subprocess, "run", fake_run)
    pin = next(p for p in wheels.CARRIED if p.name == "bitsandbytes")
    item = wheels.download_all(tmp_path, "3.12", [pin])[0]
    with zipfile.ZipFile(item.path) as archive:
        assert {name for name in archive.namelist() if name.endswith(".so")} == set(libs)


def test_download_command_pins_python_platform_and_binary_only(tmp_path):
    command = wheels.pip_download_command(Pin("trl", "trl", "1.16.0"), "3.12", tmp_path)
    assert command[1:] == ["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                           "--implementation", "cp", "--platform", "any", "--dest", str(tmp_path), "trl==1.16.0"]


def test_the_carried_set_covers_what_datasets_and_trl_import():
    names = [pin.name for pin in wheels.CARRIED]
    assert {"dill", "multiprocess", "xxhash", "datasets", "trl", "bitsandbytes"} <= set(names)
    assert names.index("dill") < names.index("datasets") < names.index("trl")  # dependencies first
    assert next(pin for pin in wheels.CARRIED if pin.name == "trl").symbols == ("SFTTrainer", "SFTConfig")


def test_install_is_offline_and_leaves_dependencies_alone(tmp_path):
    wheel = tmp_path / "w" / "trl-1.16.0-py3-none-any.whl"
    command = wheels.install_command("/image/python", [wheel], tmp_path / "site")
    assert command[:3] == ["/image/python", "-m", "pip"] and "--no-index" in command and "--no-deps" in command
    assert f"--find-links={tmp_path / 'w'}" in command and command[-3:] == ["--target", str(tmp_path / "site"),
                                                                           str(wheel)]


def test_without_pip_the_wheels_are_unpacked_into_the_target(tmp_path, bare_python):
    wheel = make_wheel(tmp_path, "dill", "0.4.1", {"dill/__init__.py": b"VALUE = 7\n"})
    plan = wheels.InstallPlan({}, [Pin("dill", "dill", "0.4.1")], [wheel])
    assert not wheels.has_pip(bare_python)
    after = wheels.install(bare_python, plan, tmp_path / "site")
    assert after["dill"].ok and after["dill"].version == "0.4.1"  # dist-info came along: metadata reads it


def test_the_in_process_check_imports_and_reads_the_symbols(tmp_path, monkeypatch):
    (tmp_path / "lazy_trl").mkdir()
    (tmp_path / "lazy_trl" / "__init__.py").write_text("def __getattr__(name):\n    raise ImportError('no accelerate')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    failures = wheels.import_failures([Pin("json", "json", "0"), Pin("lazy-trl", "lazy_trl", "1", symbols=("SFTTrainer",)),
                                       Pin("absent", "surely_absent_module", "1")])
    assert failures == {"lazy-trl": "ImportError: no accelerate",
                        "absent": "ModuleNotFoundError: No module named 'surely_absent_module'"}


def test_a_crashing_import_fails_only_itself(bare_python, fake_image):
    (fake_image / "crashes").mkdir()
    (fake_image / "crashes" / "__init__.py").write_text("import os\nos.abort()\n")
    pins = [Pin("xxhash", "xxhash", "4.1.0"), Pin("crashes", "crashes", "1"), Pin("datasets", "datasets", "5.2.0")]
    probes = wheels.probe_imports(bare_python, pins, pythonpath=fake_image)
    assert probes["xxhash"].ok
    assert not probes["crashes"].ok and probes["crashes"].error.startswith("import crashed")
    assert probes["datasets"].missing == "dill"  # its own process: not reported as a crash


def test_everything_importable_takes_one_process(bare_python, fake_image, monkeypatch):
    calls: list[int] = []
    real = wheels._run_probe
    monkeypatch.setattr(wheels, "_run_probe", lambda python, pins, *rest: calls.append(len(pins)) or real(python, pins, *rest))
    probes = wheels.probe_imports(bare_python, [Pin("xxhash", "xxhash", "4.1.0"), Pin("json", "json", "0")],
                                  pythonpath=fake_image)
    assert all(probe.ok for probe in probes.values()) and calls == [2]


def test_a_lazy_package_is_probed_through_its_symbols(bare_python, fake_image):
    (fake_image / "trl").mkdir()
    (fake_image / "trl" / "__init__.py").write_text(
        "def __getattr__(name):\n    import importlib\n    return getattr(importlib.import_module('trl.trainer'), name)\n")
    (fake_image / "trl" / "trainer.py").write_text("import accelerate\nSFTTrainer = object\n")
    probes = wheels.probe_imports(bare_python, [Pin("trl", "trl", "1.16.0"), Pin("trl2", "trl", "1.16.0",
                                                                                 symbols=("SFTTrainer",))],
                                  pythonpath=fake_image)
    assert probes["trl"].ok  # `import trl` alone proves nothing
    assert not probes["trl2"].ok and probes["trl2"].missing == "accelerate"
