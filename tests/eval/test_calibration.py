"""`tallrec calibrate`: temperature / Platt scaling fitted on validation, applied by eval, predict and export."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tallrec_cli.core.errors import DataError
from tallrec_cli.core.files import read_jsonl
from tallrec_cli.core.manifests import read_manifest
from tallrec_cli.core.metrics import logit, sigmoid
from tallrec_cli.eval.calibration import Calibration, calibrated_scores, calibration_metrics, card_section, fit
from tests.eval.test_eval_cli import error_of, invoke, make_run, model_dir, write_jsonl  # noqa: F401 (fixture)
from tests.model.test_scoring_prompts import movie_records


def _overconfident(size=4000, temperature=3.0, shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3, size)
    labels = (rng.random(size) < sigmoid(z / temperature + shift)).astype(int)
    return labels, sigmoid(z)


def test_temperature_scaling_recovers_the_temperature_and_keeps_auc():
    labels, scores = _overconfident(temperature=3.0)
    calibration = fit(labels, scores, "temperature")
    assert calibration.temperature == pytest.approx(3.0, rel=0.15)
    calibrated = calibration.apply(scores)
    assert roc_auc_score(labels, calibrated) == pytest.approx(roc_auc_score(labels, scores))
    before, after = calibration_metrics(labels, scores), calibration_metrics(labels, calibrated)
    assert after["log_loss"] < before["log_loss"] and after["ece"] < before["ece"]


def test_platt_scaling_recovers_slope_and_intercept():
    labels, scores = _overconfident(temperature=2.0, shift=-1.0, seed=1)
    calibration = fit(labels, scores, "platt")
    assert calibration.slope == pytest.approx(0.5, rel=0.15)
    assert calibration.intercept == pytest.approx(-1.0, abs=0.2)
    assert calibration.temperature is None
    np.testing.assert_allclose(calibration.apply(scores), sigmoid(calibration.slope * logit(scores) + calibration.intercept))
    assert Calibration.from_dict(calibration.as_dict()) == calibration


def test_one_class_validation_is_a_clear_error():
    with pytest.raises(DataError, match="every record has label 1"):
        fit([1, 1, 1], [0.2, 0.5, 0.9], "temperature")


def test_a_calibration_of_other_scores_is_not_applied():
    calibration = Calibration("temperature", 0.5, 0.0, "pair", {})
    scores = np.array([0.1, 0.9])
    same, note = calibrated_scores(calibration, scores, "tallrec")
    assert same is scores and "not applied" in note
    moved, note = calibrated_scores(calibration, scores, "pair")
    assert moved[1] < 0.9 and note.startswith("calibrated")


def _run_with_valid(model_dir, tmp_path, valid_rows):  # noqa: F811 (fixture)
    return make_run(model_dir, tmp_path / "run", data=write_jsonl(tmp_path / "valid.jsonl", valid_rows))


def test_calibrate_stores_the_map_and_eval_predict_export_apply_it(model_dir, tmp_path):  # noqa: F811
    run = _run_with_valid(model_dir, tmp_path, movie_records(12))
    result = invoke("calibrate", run, "--dtype", "float32")
    assert result.exit_code == 0, result.output
    stored = read_manifest(run, "train-run")["calibration"]
    assert stored["selected"]["method"] == "temperature" and stored["selected"]["fitted_on"]["records"] == 12
    assert set(stored["validation"]) == {"raw", "temperature", "platt"}
    assert stored["validation"]["temperature"]["log_loss"] <= stored["validation"]["raw"]["log_loss"] + 1e-9
    assert (run / "calibration" / "reliability.png").is_file()
    calibration = Calibration.from_dict(stored["selected"])

    test = write_jsonl(tmp_path / "movie_test.jsonl", movie_records(9))
    for flag, folder in (("--calibrated", "cal"), ("--raw", "raw")):
        result = invoke("eval", "--adapter", run, "--test", test, "--dtype", "float32", "--bootstrap", "0",
                        "-o", tmp_path / folder, flag)
        assert result.exit_code == 0, result.output
    calibrated = [row["p_yes"] for row in read_jsonl(tmp_path / "cal" / "movie_test" / "predictions.jsonl")]
    raw = [row["p_yes"] for row in read_jsonl(tmp_path / "raw" / "movie_test" / "predictions.jsonl")]
    np.testing.assert_allclose(calibrated, calibration.apply(raw), atol=1e-6)
    metrics = read_manifest(tmp_path / "cal" / "movie_test", "eval")
    assert metrics["calibration"]["method"] == "temperature"

    result = invoke("predict", "--adapter", run, "--input", test, "--dtype", "float32", "-o", tmp_path / "p.jsonl")
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose([row["p_yes"] for row in read_jsonl(tmp_path / "p.jsonl")], calibrated, atol=1e-6)

    section = card_section(read_manifest(run))
    assert "temperature scaling" in section and repr(calibration.slope) in section


def test_calibrate_on_one_class_validation_writes_nothing(model_dir, tmp_path):  # noqa: F811
    rows = [dict(row, label=1, output="Yes.") for row in movie_records(6)]
    run = _run_with_valid(model_dir, tmp_path, rows)
    result = invoke("calibrate", run, "--dtype", "float32")
    assert "every record has label 1" in error_of(result).message
    assert read_manifest(run)["calibration"] is None and not (run / "calibration").exists()
