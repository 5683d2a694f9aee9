"""Classic baselines: prompt parsing, popularity evidence, logistic-regression features and fallbacks."""

from __future__ import annotations

import json

import numpy as np

from tallrec_cli import baselines
from tallrec_cli.metrics import safe_auc
from tests.test_sweep_run import FakeRunner, make_spec, movie_record, write_dataset

BOOK = {"instruction": "...", "output": "No.", "label": 0, "id": "b0",
        "input": 'User Preference: "The Bean Trees" written by Barbara Kingsolver, "Sula" written by Toni Morrison\n'
                 'User Unpreference: \nWhether the user will like the target book ""Sula" written by Toni Morrison"?'}


def test_parse_prompt_items_movie_and_book_forms_share_keys():
    movie = baselines.parse_prompt_items(movie_record(0))
    assert movie == {"liked": ["Fargo (1996)"],
                     "disliked": ["Heat (1995)", "Casino (1995)"], "target": "Toy Story (1995)"}
    book = baselines.parse_prompt_items(BOOK)
    assert book["liked"] == ["The Bean Trees written by Barbara Kingsolver", "Sula written by Toni Morrison"]
    assert book["disliked"] == [] and book["target"] == "Sula written by Toni Morrison"


def test_popularity_counts_targets_and_history_mentions():
    train = [movie_record(i) for i in range(6)]
    test = [movie_record(100 + i) for i in range(12)]
    scores = baselines.popularity_scores(train, test)
    labels = [r["label"] for r in test]
    # the label follows the item and histories mention liked items as liked: popularity separates perfectly
    assert safe_auc(labels, scores) == 1.0
    unseen = dict(movie_record(0), input='User Preference: \nUser Unpreference: \nWhether the user will like the target movie "New (2020)"?')
    global_rate = baselines.popularity_scores(train, [unseen])[0]
    assert 0 < global_rate < 1


def test_logreg_uses_metadata_and_falls_back_to_text_titles():
    train = [movie_record(i) for i in range(12)]
    test = [movie_record(200 + i) for i in range(12)]
    scores, info = baselines.logistic_regression_scores(train, test)
    assert {"user_id", "item_id", "history_item_ids", "history titles (text)"} <= set(info["features"])
    assert safe_auc([r["label"] for r in test], scores) == 1.0
    bare = [{key: r[key] for key in ("instruction", "input", "output", "label", "id")} for r in train]
    _, info = baselines.logistic_regression_scores(bare, test)
    assert info["features"] == ["history titles (text)", "target title (text)"]


def test_single_class_sample_gives_constant_scores_and_says_so():
    train = [movie_record(i) for i in (0, 2, 4)]  # all liked
    scores, info = baselines.logistic_regression_scores(train, [movie_record(1), movie_record(2)])
    assert np.all(scores == 1.0) and "single-class" in info["note"]
    result = baselines.evaluate_baselines(train, [movie_record(1), movie_record(2)])
    assert result["LogReg"]["auc"] == 0.5 and result["LogReg"]["n"] == 2


def test_sweep_baselines_use_the_records_training_draws(tmp_path, tiny_model_dir):
    """The baseline sample is the exact record set `tallrec_cli.train.prepare_data` trains on."""
    from transformers import AutoTokenizer

    from tallrec_cli import sweep
    from tallrec_cli.prompts import load_template
    from tallrec_cli.train import prepare_data

    data = write_dataset(tmp_path / "data")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {{name: {tiny_model_dir}}}\ndata: {{train: {data}, stratify: true}}\n")
    sweep_dir = tmp_path / "sweep"
    sweep.run_sweep(make_spec(recipe, data, shots=[8], seeds=[3]), sweep_dir, runner=FakeRunner())
    (stored_path,) = (sweep_dir / "baselines").glob("*.json")
    stored = json.loads(stored_path.read_text())
    _, cells, configs = sweep.prepare_sweep(make_spec(recipe, data, shots=[8], seeds=[3]))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    trained = prepare_data(configs[cells[0].id], tokenizer, load_template("alpaca")).train_records
    assert stored["train_ids"] == [record["id"] for record in trained]
    assert stored["stratify"] is True and set(stored["tests"]["movies"]) == {"Popularity", "LogReg"}
    assert stored["tests"]["movies"]["LogReg"]["n"] == 24


def test_baselines_see_the_same_test_slice_as_the_cells(tmp_path, tiny_model_dir):
    from tallrec_cli import sweep

    data = write_dataset(tmp_path / "data")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {{name: {tiny_model_dir}}}\ndata: {{train: {data}}}\n")
    sweep.run_sweep(make_spec(recipe, data, shots=[4], seeds=[0], test_limit=10), tmp_path / "s", runner=FakeRunner())
    (stored_path,) = (tmp_path / "s" / "baselines").glob("*.json")
    assert json.loads(stored_path.read_text())["tests"]["movies"]["Popularity"]["n"] == 10
