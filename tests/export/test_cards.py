"""Export cards and portability: front matter that huggingface_hub reads, the run's eval table beside its
references, calibration, a PEFT snippet that runs as printed, and no path of the exporting machine anywhere
but the manifest's provenance fields."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tallrec_cli.core.files import MANIFEST_NAME, tallrec_home
from tallrec_cli.core.metrics import compute_metrics
from tallrec_cli.eval.calibration import Calibration
from tallrec_cli.eval.compare import Scored, compare, write_comparison
from tallrec_cli.eval.results import write_eval_folder
from tallrec_cli.export.adapter import export_adapter
from tallrec_cli.export.merged import export_merged
from tallrec_cli.export.runs import PROVENANCE_FIELDS, SAMPLE_RECORDS
from tallrec_cli.model.loading import load_for_inference
from tallrec_cli.model.prompts import load_template
from tallrec_cli.model.scoring import score_prompts
from tests.conftest import build_tiny_llama
from tests.export_helpers import make_train_run, write_valid_data

HUB_ID = "tallrec-test/tiny-llama"
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> Path:
    """A Hugging Face hub cache holding a tiny LLaMA as HUB_ID at REVISION (with a model card naming its license)."""
    root = tmp_path_factory.mktemp("hub")
    snapshot = build_tiny_llama(root / f"models--{HUB_ID.replace('/', '--')}" / "snapshots" / REVISION)
    (snapshot / "README.md").write_text("---\nlicense: mit\n---\n# tiny\n")
    return root


def _evaluated(run: Path) -> dict:
    """An eval of the run on 40 records of 8 users beside one reference, written as `tallrec eval` writes it."""
    rng = np.random.default_rng(0)
    records = [{"id": f"r{i}", "user_id": f"u{i % 8}", "label": int(i % 3 == 0)} for i in range(40)]
    labels = np.array([record["label"] for record in records])
    model = np.clip(0.3 * labels + rng.uniform(0, 0.7, 40), 0.01, 0.99)
    reference = rng.uniform(0, 1, 40)
    users = [record["user_id"] for record in records]
    metrics = {"test": "movies-test", "score_mode": "pair", **compute_metrics(labels, model, users, 200, 0)}
    comparison = compare(records, Scored("model", "tuned model", model),
                         [Scored("history-share", "history share", reference)], 200, 0)
    inputs = {"test": {"name": "movies-test", "path": str(run / "test.jsonl"), "split": "test"},
              "adapter": str(run), "dtype": "float32", "score_mode": "pair", "compare": ["history-share"]}
    scorers = [Scored("model", "tuned model", model), Scored("history-share", "history share", reference)]
    write_eval_folder(run / "eval" / "movies-test", records, model, metrics, inputs,
                      write_more=lambda staging: write_comparison(staging, records, comparison, scorers))
    return comparison


@pytest.fixture(scope="module")
def hub_run(tmp_path_factory, hub_cache) -> tuple[Path, dict, Calibration]:
    """A finished run on the hub-cached base, evaluated and calibrated."""
    root = tmp_path_factory.mktemp("cards-run")
    base = hub_cache / f"models--{HUB_ID.replace('/', '--')}" / "snapshots" / REVISION
    run = make_train_run(root / "run", str(base), valid=write_valid_data(root / "data"))
    comparison = _evaluated(run)
    calibration = Calibration("platt", 1.25, -0.5, "pair", {"source": str(root / "data"), "records": 24})
    manifest = json.loads((run / MANIFEST_NAME).read_text())
    manifest["calibration"] = {"selected": calibration.as_dict(), "fits": {"platt": calibration.as_dict()}}
    (run / MANIFEST_NAME).write_text(json.dumps(manifest))
    return run, comparison, calibration


@pytest.fixture(scope="module")
def hub_export(tmp_path_factory, hub_run) -> Path:
    return export_adapter(hub_run[0], tmp_path_factory.mktemp("cards-export") / "movies-lora").path


def _card_meta(folder: Path):
    from huggingface_hub import ModelCard

    return ModelCard((folder / "README.md").read_text()).data  # parses the front matter and its model-index


def _python_block(card: str, heading: str) -> str:
    section = card.split(f"## {heading}\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL)[1]


def test_front_matter_validates_with_huggingface_hub(hub_export, hub_run):
    data = _card_meta(hub_export)
    assert (data.library_name, data.base_model, data.license, data.pipeline_tag) == (
        "peft", HUB_ID, "mit", "text-generation")
    assert f"base_model:adapter:{HUB_ID}" in data.tags and "recommendation" in data.tags
    results = {(result.dataset_name, result.metric_type): result.metric_value for result in data.eval_results}
    rows = hub_run[1]["rows"]
    assert results == {("tiny-movies", "roc_auc"): 0.625,
                       ("movies-test", "roc_auc"): round(rows[0]["metrics"]["auc"], 4),
                       ("movies-test", "gauc"): round(rows[0]["metrics"]["gauc"], 4)}


def test_card_has_the_eval_table_with_references_and_the_calibration(hub_export, hub_run):
    card = (hub_export / "README.md").read_text()
    model, reference = hub_run[1]["rows"]
    m, r, d = model["metrics"], reference["metrics"], reference["difference"]

    def cell(value, interval, sign=""):
        return f"{value:{sign}.4f} ({interval[0]:{sign}.4f}, {interval[1]:{sign}.4f})"

    assert (f"| tuned model | {cell(m['auc'], m['auc_ci95'])} | {cell(m['gauc'], m['gauc_ci95'])} |  | |"
            in card)
    delta = cell(d["auc_diff"], d["auc_diff_ci95"], "+")
    delta = f"**{delta}**" if d["auc_diff_ci95"][0] > 0 or d["auc_diff_ci95"][1] < 0 else delta
    assert f"| history share | {cell(r['auc'], r['auc_ci95'])} | {cell(r['gauc'], r['gauc_ci95'])} | {delta} |" in card
    assert "### movies-test\n\n40 records, 8 users (P(yes) `pair`, float32)" in card
    calibration = hub_run[2]
    assert f"{calibration.slope!r} * z + {calibration.intercept!r}" in card


def test_adapter_config_pins_the_base_by_hub_id_and_revision(hub_export):
    config = json.loads((hub_export / "adapter_config.json").read_text())
    assert (config["base_model_name_or_path"], config["revision"]) == (HUB_ID, REVISION)
    base = json.loads((hub_export / MANIFEST_NAME).read_text())["base_model"]
    assert (base["name"], base["hub_id"], base["revision"]) == (HUB_ID, HUB_ID, REVISION)
    assert base["config_json_sha256"] and base["provenance"]["path"].endswith(REVISION)


def _run_snippet(code: str, cwd: Path, hub_cache: Path, python: str = sys.executable) -> float:
    script = cwd / "snippet.py"
    script.write_text(code)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_CACHE=str(hub_cache), HF_HUB_OFFLINE="1")
    completed = subprocess.run([python, str(script)], check=False, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return float(re.search(r"P\(yes\) = ([0-9.]+)", completed.stdout)[1])


def _tallrec_p_yes(run: Path, base: str | None = None) -> float:
    """What `tallrec eval` scores for the card's example record (float32)."""
    inference = load_for_inference(base, str(run), dtype="float32", device="cpu")
    prompt = load_template("alpaca").render(SAMPLE_RECORDS[0], inference.tokenizer)
    manifest = json.loads((run / MANIFEST_NAME).read_text())
    from tallrec_cli.model.prompts import LabelTokens

    return float(score_prompts(inference.model, inference.tokenizer, [prompt], LabelTokens(**manifest["labels"]))[0])


def test_peft_snippet_runs_as_printed_and_scores_like_tallrec(hub_export, hub_run, hub_cache):
    code = _python_block((hub_export / "README.md").read_text(), "Use with PEFT")
    assert f"BASE = {HUB_ID!r}" in code and f"revision={REVISION!r}" in code and "ADAPTER = 'movies-lora'" in code
    printed = _run_snippet(code, hub_export.parent, hub_cache)
    assert printed == pytest.approx(_tallrec_p_yes(hub_run[0]), abs=2e-6)


def test_local_base_is_named_by_its_folder_and_its_hash(tiny_model_dir, tmp_path, hub_cache):
    run = make_train_run(tmp_path / "run", str(tiny_model_dir))
    export = export_adapter(run, tmp_path / "out" / "local-lora").path
    config = json.loads((export / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == tiny_model_dir.name and config["revision"] is None
    data = _card_meta(export)
    assert data.base_model is None and data.license is None and not any("base_model:" in tag for tag in data.tags)
    base = json.loads((export / MANIFEST_NAME).read_text())["base_model"]
    card = (export / "README.md").read_text()
    assert f"`{tiny_model_dir.name}` (config_json_sha256 `{base['config_json_sha256']}`)" in card
    # the snippet names the base by its folder: beside a copy of that name, it runs as printed
    (tmp_path / "out" / tiny_model_dir.name).symlink_to(tiny_model_dir)
    printed = _run_snippet(_python_block(card, "Use with PEFT"), tmp_path / "out", hub_cache)
    assert printed == pytest.approx(_tallrec_p_yes(run, str(tiny_model_dir)), abs=2e-6)


def test_card_says_how_to_upload_and_takes_a_llama_cpp_section(hub_run, tmp_path):
    section = "## Use with llama.cpp / Ollama\n\n`ollama create movies -f Modelfile`\n"
    card = (export_adapter(hub_run[0], tmp_path / "movies-lora", llama_cpp=section).path / "README.md").read_text()
    assert "hf upload YOUR-NAME/movies-lora movies-lora\n" in card
    assert card.index("## Serve with vLLM") < card.index(section) < card.index("## Upload to the Hub")


def _provenance_removed(manifest: dict) -> dict:
    """The manifest without PROVENANCE_FIELDS (dotted paths, * for any key), checking each one is there."""
    def drop(node, keys):
        head, rest = keys[0], keys[1:]
        for key in list(node) if head == "*" else [head]:
            assert key in node, f"provenance field {'.'.join(keys)} missing"
            if rest:
                drop(node[key], rest)
            else:
                del node[key]

    for field in PROVENANCE_FIELDS:
        if field.startswith("calibration") and not manifest.get("calibration"):
            continue
        drop(manifest, field.split("."))
    return manifest


def _machine_paths(*extra: Path) -> list[str]:
    roots = {Path.home(), Path.cwd(), tallrec_home(), Path(sys.prefix), Path(__file__).resolve().parents[2], *extra}
    return sorted({str(root.resolve()) for root in roots} | {str(root) for root in roots}, key=len, reverse=True)


def _absolute_paths_in(folder: Path, roots: list[str]) -> list[str]:
    """Every text file of the export (the manifest without its provenance fields): paths under ``roots``, and
    JSON string values that are absolute paths."""
    found = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.suffix == ".safetensors":
            continue
        text = path.read_text(encoding="utf-8")
        if path.name == MANIFEST_NAME:
            text = json.dumps(_provenance_removed(json.loads(text)))
        found += [f"{path.name}: {root}" for root in roots if root in text]
        if path.suffix == ".json" and path.name != "tokenizer.json":  # a vocabulary holds "/" tokens, not paths
            found += [f"{path.name}: {value}" for value in re.findall(r'"((?:/|~/|[A-Za-z]:\\\\)[^"]*)"', text)]
    return found


def test_no_path_of_the_exporting_machine_in_any_exported_text_file(hub_run, hub_cache, tmp_path, tiny_model_dir):
    run = hub_run[0]
    roots = _machine_paths(tmp_path, hub_cache, run, tiny_model_dir)
    adapter = export_adapter(run, tmp_path / "adapter").path
    merged = export_merged(run, tmp_path / "merged", dtype="float32", verify_samples=8).path
    local_run = make_train_run(tmp_path / "local-run", str(tiny_model_dir), save_tokenizer=True)
    local = export_adapter(local_run, tmp_path / "local").path
    for folder in (adapter, merged, local):
        assert _absolute_paths_in(folder, roots) == [], folder.name
    # the check sees paths: the provenance fields hold them
    manifest = json.loads((adapter / MANIFEST_NAME).read_text())
    assert manifest["source_run"]["path"] == str(run.resolve()) and manifest["base_model"]["provenance"]["path"]
