"""The tuned model against every reference at each N: paired differences averaged over seeds, read back from
the cells' predictions and the stored reference scores; what they say; the tables at 80 columns; the plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tallrec_cli import sweep
from tallrec_cli.cli.render import sweep_comparison_table, sweep_findings_lines, sweep_table
from tallrec_cli.core.metrics import bootstrap_samples, paired_difference
from tallrec_cli.sweep.paired import findings, seed_mean_difference
from tests.cli.test_surface import assert_numbers_whole
from tests.sweep.test_sweep_run import FakeRunner, make_spec, write_dataset


def scored_records(seed: int, size: int = 120, users: int = 12):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size)
    groups = [f"u{index % users}" for index in range(size)]
    return labels, groups, [labels * 0.4 + rng.random(size) for _ in range(4)]


def test_one_seed_is_exactly_the_paired_difference():
    labels, groups, (a, b, *_) = scored_records(0)
    assert seed_mean_difference(labels, [(a, b)], groups, 300, 7) == paired_difference(labels, a, b, groups, 300, 7)


def test_seeds_are_averaged_on_the_same_draws_of_records_and_users():
    labels, groups, (a0, b0, a1, b1) = scored_records(1)
    result = seed_mean_difference(labels, [(a0, b0), (a1, b1)], groups, resamples=200, seed=3)
    assert result["auc_diff"] == pytest.approx(np.mean([roc_auc_score(labels, a) - roc_auc_score(labels, b)
                                                        for a, b in ((a0, b0), (a1, b1))]), abs=1e-12)
    # by hand: every draw of records is read by both seeds and both scorers, the mean over seeds taken per draw
    draws = np.concatenate(list(bootstrap_samples(len(labels), 200, 3)))
    per_draw = [np.mean([roc_auc_score(labels[d], a[d]) - roc_auc_score(labels[d], b[d]) for a, b in ((a0, b0), (a1, b1))])
                for d in draws]
    assert result["auc_diff_ci95"] == pytest.approx(np.percentile(per_draw, [2.5, 97.5]).tolist(), abs=1e-12)
    users = list(dict.fromkeys(groups))
    members = [np.array([group == user for group in groups]) for user in users]
    differences = np.mean([[roc_auc_score(labels[m], a[m]) - roc_auc_score(labels[m], b[m]) for m in members]
                           for a, b in ((a0, b0), (a1, b1))], axis=0)
    counts = np.array([m.sum() for m in members])
    assert result["gauc_diff"] == pytest.approx(differences @ counts / counts.sum(), abs=1e-12)
    user_draws = np.concatenate(list(bootstrap_samples(len(users), 200, 3)))
    gaucs = [differences[d] @ counts[d] / counts[d].sum() for d in user_draws]
    assert result["gauc_diff_ci95"] == pytest.approx(np.percentile(gaucs, [2.5, 97.5]).tolist(), abs=1e-12)


def comparison(reference: str, kind: str, shots: int, auc: tuple, gauc: tuple) -> dict:
    """A comparison row with ΔAUC / ΔGAUC intervals ``(low, high)``."""
    row = {"test": "t", "method": "LoRA m", "shots": shots, "reference": reference, "kind": kind, "seeds": [0, 1, 2],
           "auc_diff": sum(auc) / 2, "auc_diff_ci95": list(auc), "gauc_diff": sum(gauc) / 2,
           "gauc_diff_ci95": list(gauc)}
    marks = ["+" if low > 0 else "-" if high < 0 else "=" for low, high in (auc, gauc)]
    return {**row, "verdict": "/".join(marks)}


WIN, TIE, LOSS = (0.02, 0.08), (-0.03, 0.01), (-0.09, -0.04)


def test_findings_state_the_smallest_n_of_a_tie_and_whether_a_full_data_line_is_reached():
    rows = [comparison("equal-data GBDT", "baseline", 16, WIN, WIN), comparison("equal-data GBDT", "baseline", 64, WIN, TIE),
            comparison("equal-data GBDT", "baseline", 256, LOSS, WIN),
            comparison("equal-data MF", "baseline", 16, WIN, WIN), comparison("equal-data MF", "baseline", 64, WIN, WIN),
            comparison("GBDT (full data)", "reference", 16, LOSS, LOSS),
            comparison("GBDT (full data)", "reference", 64, (-0.07, -0.01), TIE),
            comparison("GBDT (full data)", "reference", 256, LOSS, WIN)]
    (finding,) = findings(rows)
    assert finding["shots"] == [16, 64, 256] and finding["seeds"] == 3
    assert finding["equal_data"] == [{"reference": "equal-data GBDT", "auc": 256, "gauc": 64},
                                     {"reference": "equal-data MF", "auc": None, "gauc": None}]
    (full,) = finding["full_data"]
    assert (full["auc"], full["gauc"]) == (None, 64)
    assert full["closest"]["auc"] == {"shots": 64, "diff": pytest.approx(-0.04), "ci95": [-0.07, -0.01]}
    assert sweep_findings_lines([finding]) == [
        "t: LoRA m against each reference (paired 95% intervals, mean over up to 3 seed(s)):",
        "  equal-data GBDT ties or beats the tuned model: AUC first at N=256, GAUC first at N=64",
        "  equal-data MF ties or beats the tuned model: AUC at no N of 16-256, GAUC at no N of 16-256",
        ("  the tuned model reaches GBDT (full data): AUC at no N of 16-256 (nearest N=64: -0.0400, -.070,-.010); "
         "GAUC first at N=64")]
    table = sweep_comparison_table(rows, "t", "LoRA m")
    assert table.narrowest_width() <= 80
    text = assert_numbers_whole(table)
    assert "+0.0500 +" in text and "g -0.0100 =" in text and "-.090,-.040" in text


class PredictingRunner(FakeRunner):
    """Writes the per-record scores a real evaluation leaves (RUN/eval/<test>/predictions.jsonl): the label
    plus seeded noise, louder the fewer records the cell learned from."""

    def evaluate(self, cell, cell_dir, config):
        tests = {}
        for label, path in cell.tests.items():
            records = [json.loads(line) for line in Path(path).read_text().splitlines()][:cell.test_limit]
            rng = np.random.default_rng([cell.seed or 0, cell.shots])
            scores = [0.3 * record["label"] + rng.random() * 8 / max(cell.shots, 1) for record in records]
            folder = cell_dir / "eval" / label
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "predictions.jsonl").write_text("".join(json.dumps(
                {"id": r["id"], "user_id": r["user_id"], "label": r["label"], "p_yes": s}) + "\n"
                for r, s in zip(records, scores)))
            tests[label] = {"auc": roc_auc_score([r["label"] for r in records], scores), "records": len(records),
                            "folder": f"eval/{label}"}
        return tests


def test_a_sweep_compares_the_tuned_model_with_every_reference_at_each_n(recipe, dataset, tmp_path, real_plot):
    sweep_dir = tmp_path / "sweep"
    live = sweep.run_sweep(make_spec(recipe, dataset, shots=[0, 4, 8], seeds=[0, 1]), sweep_dir,
                           runner=PredictingRunner())
    comparisons = live.report["comparisons"]
    equal = ["equal-data Popularity", "equal-data LogReg", "equal-data Bias (user+item)", "equal-data GBDT",
             "equal-data MF"]
    full = ["History share", "Bias (user+item) (full data)", "GBDT (full data)", "MF (full data)"]
    assert sorted((row["reference"], row["shots"]) for row in comparisons) == sorted(
        (name, shots) for name in equal + full for shots in (4, 8))
    test = [json.loads(line) for line in (dataset / "test.jsonl").read_text().splitlines()]
    labels = [record["label"] for record in test]
    stored = {path.name: json.loads(path.read_text()) for path in (sweep_dir / "baselines").glob("*.json")}
    for row in comparisons:
        assert row["seeds"] == [0, 1] and row["verdict"].count("/") == 1
        differences = []
        for seed in (0, 1):
            tuned = [json.loads(line)["p_yes"] for line in
                     (sweep_dir / "cells" / f"k{row['shots']}-s{seed}" / "eval" / "movies" / "predictions.jsonl")
                     .read_text().splitlines()]
            (reference,) = [item["predictions"]["movies"] for item in stored.values()
                            if f"k{row['shots']}-s{seed}" in item["cells"] and row["kind"] == (
                                "reference" if item["kind"] == "reference" else "baseline")]
            label = row["reference"].removeprefix("equal-data ").replace(" (full data)", "")
            differences.append(roc_auc_score(labels, tuned) - roc_auc_score(labels, reference[label]))
        assert row["auc_diff"] == pytest.approx(np.mean(differences), abs=1e-12), row["reference"]
    assert {finding["method"] for finding in live.report["findings"]} == {live.summary[0]["method"]}

    live_json = (sweep_dir / "results.json").read_text()
    png = (sweep_dir / "sweep.png").read_bytes()
    assert png[:4] == b"\x89PNG"
    (sweep_dir / "results.json").unlink()
    assert sweep.build_report(sweep_dir) == json.loads(live_json)
    assert (sweep_dir / "results.json").read_text() == live_json


def test_a_missing_predictions_file_leaves_its_comparisons_out_with_a_note(recipe, dataset, tmp_path):
    sweep_dir = tmp_path / "sweep"
    sweep.run_sweep(make_spec(recipe, dataset, shots=[4], seeds=[0, 1]), sweep_dir, runner=PredictingRunner())
    (sweep_dir / "cells" / "k4-s1" / "eval" / "movies" / "predictions.jsonl").unlink()
    report = sweep.build_report(sweep_dir)
    assert {tuple(row["seeds"]) for row in report["comparisons"]} == {(0,)}
    assert report["notes"] == [("cell k4-s1: cells/k4-s1/eval/movies/predictions.jsonl is missing; its paired "
                                "comparisons are left out")]


def test_the_sweep_tables_fit_80_columns_with_four_sizes_of_n():
    observations = []
    for shots in (16, 64, 256, 1024):
        for seed in (0, 1, 2):
            for method, kind in (("LoRA smollm2-135m prompt.loss=pair", "lora"), ("equal-data Bias (user+item)",
                                 "baseline"), ("equal-data GBDT", "baseline"), ("equal-data MF", "baseline")):
                value = 0.5 + 0.0001 * shots + 0.01 * seed + 0.003 * len(method)
                observations.append({"method": method, "kind": kind, "test": "ml-latest-small-many-users",
                                     "shots": shots, "seed": seed, "auc": value, "gauc": value - 0.05, "records": 3050,
                                     "users": 610, "gauc_users": 402})
    observations += sweep.reference_observations({"domain": None, "tests": {"ml-latest-small-many-users": {
        "GBDT": {"auc": 0.8241, "gauc": 0.5422, "n": 3050}}}}, [16, 64, 256, 1024])
    table = sweep_table(sweep.summarize(observations), "ml-latest-small-many-users")
    assert table.narrowest_width() <= 80  # side by side, not turned
    text = assert_numbers_whole(table)
    assert "0.824 *" in text and "g 0.542" in text and "0.657±.010" in text


@pytest.fixture
def dataset(tmp_path) -> Path:
    return write_dataset(tmp_path / "data")


@pytest.fixture
def recipe(tmp_path, tiny_model_dir, dataset) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(f"model: {{name: {tiny_model_dir}, dtype: float32}}\ndata: {{train: {dataset}}}\n")
    return path


@pytest.fixture
def real_plot():
    """Requested by tests that draw the real sweep.png."""


@pytest.fixture(autouse=True)
def quick_plot(request, monkeypatch):
    if "real_plot" not in request.fixturenames:
        from tallrec_cli.sweep import report

        monkeypatch.setattr(report, "plot_results", lambda summary, path: Path(path).write_bytes(b"\x89PNG stub"))


def test_a_zero_shot_only_sweep_keeps_its_one_column():
    summary = sweep.summarize([{"method": "LoRA m", "kind": "zero-shot", "test": "t", "shots": 0, "seed": None,
                                "auc": 0.52, "gauc": 0.5, "records": 9, "cell": "z"}])
    table = sweep_table(summary, "t")
    assert [column.header for column in table.columns] == ["method", "zero-shot"]
    assert [[cell.plain for cell in row] for row in table.rows] == [["LoRA m", "0.520\ng 0.500"]]
