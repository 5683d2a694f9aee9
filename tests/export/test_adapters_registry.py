"""`tallrec adapters` registry: export --to-registry, list, show, verify (tamper detection), rm."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tallrec_cli.cli.app import app
from tallrec_cli.core.errors import ArtifactError
from tallrec_cli.export.registry import add_adapter, default_store, list_adapters, verify_adapter
from tests.export_helpers import make_train_run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir) -> Path:
    return make_train_run(tmp_path_factory.mktemp("registry-run") / "run", str(tiny_model_dir))


@pytest.fixture
def store(tmp_path, tiny_run) -> Path:
    store = tmp_path / "store"
    result = CliRunner().invoke(app, ["export", str(tiny_run), "--to-registry", "--name", "movies",
                                      "--store", str(store)])
    assert result.exit_code == 0, result.output
    return store


def _cli(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def test_list_shows_a_table_of_exports(store):
    (entry,) = list_adapters(store)
    assert (entry.name, entry.dataset, entry.shots, entry.seed, entry.auc) == ("movies", "tiny-movies", 16, 0, 0.625)
    assert entry.size_bytes > 0 and entry.created and entry.problem is None
    result = _cli("adapters", "list", "--store", str(store))
    assert result.exit_code == 0, result.output
    assert "movies" in result.output and "tiny-movies" in result.output and "0.6250" in result.output


def test_store_from_environment(store, monkeypatch):
    monkeypatch.setenv("TALLREC_ADAPTERS", str(store))
    assert default_store() == store
    assert "movies" in _cli("adapters", "list").output


def test_show_prints_the_card(store):
    result = _cli("adapters", "show", "movies", "--store", str(store))
    assert result.exit_code == 0 and "Serve with vLLM" in result.output and "base_model:" not in result.output


@pytest.mark.parametrize(("damage", "expected"), [
    ("flip", "changed: adapter_model.safetensors"),
    ("truncate", "changed: adapter_model.safetensors"),
    ("delete", "missing: adapter_config.json"),
    ("add", "extra: notes.txt"),
])
def test_verify_names_the_tampered_file(store, damage, expected):
    folder = store / "movies"
    assert verify_adapter("movies", store).ok
    weights = folder / "adapter_model.safetensors"
    if damage == "flip":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "delete":
        (folder / "adapter_config.json").unlink()
    else:
        (folder / "notes.txt").write_text("hello")
    assert expected in verify_adapter("movies", store).describe()
    result = _cli("adapters", "verify", "--store", str(store))
    assert isinstance(result.exception, ArtifactError) and expected in result.output


def test_add_refuses_a_tampered_export_and_duplicates(store, tmp_path):
    with pytest.raises(ArtifactError, match="already holds"):
        add_adapter(store / "movies", name="movies", store=store)
    (store / "movies" / "README.md").write_text("edited")
    with pytest.raises(ArtifactError, match="changed: README.md"):
        add_adapter(store / "movies", name="copy", store=store)


def test_export_to_output_and_registry(tiny_run, tmp_path):
    store = tmp_path / "store"
    result = _cli("export", str(tiny_run), "-o", str(tmp_path / "export"), "--to-registry", "--store", str(store))
    assert result.exit_code == 0, result.output
    assert [entry.name for entry in list_adapters(store)] == ["export"] and verify_adapter("export", store).ok


def test_rm_removes_and_unknown_names_are_listed(store):
    missing = _cli("adapters", "show", "nope", "--store", str(store))
    assert isinstance(missing.exception, ArtifactError) and "known: movies" in missing.exception.message
    assert _cli("adapters", "rm", "movies", "--store", str(store), "--yes").exit_code == 0
    assert list_adapters(store) == [] and "no adapters" in _cli("adapters", "list", "--store", str(store)).output


def test_the_registry_reads_manifests_without_importing_export():
    """It needs the export manifest's type and the file checks, not the exporter (and its model code)."""
    import subprocess
    import sys

    code = "import sys, tallrec_cli.export.registry; print(any(m in sys.modules for m in ('tallrec_cli.export.adapter', 'tallrec_cli.export.merged')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
