"""`tallrec eval --ensemble`: a logistic blend of model and baseline logits, fitted on validation only,
compared with both parts, saved, and applied identically by `tallrec predict --ensemble`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tallrec_cli.core.errors import ConfigError, DataError
from tallrec_cli.core.files import read_jsonl
from tallrec_cli.core.manifests import read_manifest
from tallrec_cli.core.metrics import logit, sigmoid
from tallrec_cli.eval.baselines import make_baseline
from tallrec_cli.eval.ensemble import Blend, fit_blend, load_blend
from tests.eval.test_baselines import _many_users
from tests.eval.test_eval_cli import error_of, invoke, make_run, model_dir  # noqa: F401 (fixture)


def test_blend_weights_are_fitted_by_logistic_regression():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1.5, 3000), rng.normal(0, 1.5, 3000)
    labels = (rng.random(3000) < sigmoid(0.8 * a + 1.5 * b - 0.5)).astype(int)
    blend = fit_blend("gbdt", labels, sigmoid(a), sigmoid(b), {}, {})
    assert (blend.model_weight, blend.baseline_weight, blend.intercept) == pytest.approx((0.8, 1.5, -0.5), abs=0.15)
    np.testing.assert_allclose(blend.apply(sigmoid(a), sigmoid(b)),
                               sigmoid(blend.model_weight * logit(sigmoid(a)) + blend.baseline_weight * b
                                       + blend.intercept), atol=1e-6)
    assert Blend.from_dict(blend.as_dict()) == blend
    with pytest.raises(DataError, match="one class"):
        fit_blend("gbdt", [1, 1], [0.2, 0.4], [0.5, 0.6], {}, {})


def _write_split(folder, name, rows):
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture()
def run_and_data(model_dir, tmp_path):  # noqa: F811 (fixture)
    data = tmp_path / "data"
    data.mkdir()
    for name, count, seed in (("train", 240, 0), ("valid", 60, 1), ("test", 50, 2)):
        _write_split(data, name, _many_users(count, seed))
    return make_run(model_dir, tmp_path / "run", data=data), data


def test_eval_ensemble_fits_on_validation_compares_and_predict_reuses_it(run_and_data, tmp_path):
    run, data = run_and_data
    result = invoke("eval", "--adapter", run, "--test", data, "--dtype", "float32", "--bootstrap", "50",
                    "--ensemble", "bias", "-o", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    assert "model+bias" in result.output
    folder = tmp_path / "eval" / "data-test"
    saved = json.loads((folder / "ensembles.json").read_text())["ensembles"][0]
    assert saved["blend"]["fitted_on"]["records"] == 60 and saved["blend"]["baseline"] == "bias"
    rows = saved["comparison"]["rows"]
    assert [row["name"] for row in rows] == ["model+bias", "model", "bias"]
    assert all("auc_diff_ci95" in row["difference"] for row in rows[1:])
    assert read_manifest(folder, "eval")["ensembles"][0]["baseline"] == "bias"

    # the blend applied by hand to the model's test P(yes) and the baseline refitted on the run's train split
    blend = load_blend(folder)
    test = read_jsonl(data / "test.jsonl")
    model_scores = np.array([row["p_yes"] for row in read_jsonl(folder / "predictions.jsonl")])
    baseline_scores = make_baseline("bias").fit(read_jsonl(data / "train.jsonl")).score(test)
    blended = [row["bias"] for row in read_jsonl(folder / "ensemble_predictions.jsonl")]
    np.testing.assert_allclose(blended, blend.apply(model_scores, baseline_scores), atol=1e-6)

    # the weights come from validation: relabelling the test set leaves them unchanged
    _write_split(data, "test", [dict(row, label=1 - row["label"]) for row in test])
    again = invoke("eval", "--adapter", run, "--test", data, "--dtype", "float32", "--bootstrap", "0",
                   "--ensemble", "bias", "-o", tmp_path / "again")
    assert again.exit_code == 0, again.output
    assert load_blend(tmp_path / "again" / "data-test") == blend

    result = invoke("predict", "--adapter", run, "--input", data / "test.jsonl", "--dtype", "float32",
                    "--ensemble", folder, "-o", tmp_path / "p.jsonl")
    assert result.exit_code == 0, result.output
    predicted = read_jsonl(tmp_path / "p.jsonl")
    np.testing.assert_allclose([row["p_yes"] for row in predicted], blended, atol=1e-6)
    np.testing.assert_allclose([row["p_yes_model"] for row in predicted], model_scores, atol=1e-6)


def test_ensemble_baseline_on_other_training_data_is_refused(run_and_data, tmp_path):
    run, data = run_and_data
    other = tmp_path / "other"
    other.mkdir()
    _write_split(other, "train", _many_users(100, 5))
    result = invoke("eval", "--adapter", run, "--test", data, "--ensemble", "gbdt", "--train", other,
                    "-o", tmp_path / "eval")
    assert "not the data the run was trained on" in error_of(result).message
    assert not (tmp_path / "eval").exists()


def test_ensemble_needs_a_train_run(model_dir, tmp_path):  # noqa: F811
    data = tmp_path / "data"
    data.mkdir()
    _write_split(data, "test", _many_users(20, 0))
    _write_split(data, "train", _many_users(40, 1))
    result = invoke("eval", "--model", model_dir, "--test", data, "--ensemble", "gbdt", "--train", data,
                    "-o", tmp_path / "eval")
    assert isinstance(error_of(result), ConfigError) and "--adapter RUN" in error_of(result).message
