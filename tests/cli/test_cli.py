import os
import subprocess
import sys

from typer.testing import CliRunner

from tallrec_cli import __version__
from tallrec_cli.cli.app import app


def test_version_and_help():
    runner = CliRunner()
    assert runner.invoke(app, ["--version"]).output.strip() == f"tallrec {__version__}"
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for group in ("data", "train", "eval", "predict", "export", "adapters", "sweep"):
        assert group in result.output


def _run(args, **env):
    return subprocess.run([sys.executable, "-m", "tallrec_cli", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_domain_error_is_one_line_with_hint_and_no_traceback(tmp_path):
    result = _run(["eval", "--model", str(tmp_path / "missing-model"), "--test", str(tmp_path / "t.jsonl")])
    assert result.returncode == 2, result.stderr
    assert "error:" in result.stderr and "hint:" in result.stderr
    assert "Traceback" not in result.stderr


def test_debug_env_shows_traceback(tmp_path):
    result = _run(["eval", "--model", str(tmp_path / "missing-model"), "--test", str(tmp_path / "t.jsonl")],
                  TALLREC_DEBUG="1")
    assert result.returncode != 0 and "Traceback" in result.stderr
