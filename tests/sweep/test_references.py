"""The sweep's references: equal-data ones fitted on each cell's own records and their histories and on
nothing else (statistics planted outside the sample must not reach them), full-data ones on the pool, both
on the cells' test slice with their per-record scores kept for the paired comparisons."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data_builders.structure import HistoryItem, structure_fields
from tallrec_cli import sweep
from tallrec_cli.core.errors import DataError
from tallrec_cli.eval import baselines
from tests.sweep.test_sweep_run import FakeRunner, make_spec, movie_record, write_dataset
from tests.train_helpers import MOVIE_TEMPLATE

POOL, SHOTS, SEED = 60, 8, 0
HOT = ("99", "Hot Movie (2000)")  # an item planted outside the sample


@pytest.fixture(autouse=True)
def _no_plot(monkeypatch):
    from tallrec_cli.sweep import report

    monkeypatch.setattr(report, "plot_results", lambda summary, path: Path(path).write_bytes(b"\x89PNG stub"))


def record(index: int, user: str, item: tuple[str, str], label: int, history: list[tuple[str, str, bool]]) -> dict:
    items = [HistoryItem(title, liked, item_id) for item_id, title, liked in history]
    return {"instruction": "i", "input": "(prompt text is never read)", "output": "Yes." if label else "No.",
            "label": label, "id": f"r{index}", "user_id": user, "item_id": item[0], "timestamp": 1000 + index,
            **structure_fields(items, item[1], MOVIE_TEMPLATE.name, 0)}


ITEMS = [(str(number), f"Film {number} (1990)") for number in range(8)]


def in_sample(index: int) -> dict:
    """A record whose label follows its item (even ids liked) and its user (u0 likes more); never the hot item.
    User ``flip`` likes what it rates here."""
    user = "flip" if index % 4 == 0 else f"u{index % 3}"
    item = ITEMS[index % len(ITEMS)]
    label = 1 if user == "flip" else int(int(item[0]) % 2 == 0 or user == "u0")
    history = [(*ITEMS[(index + k) % len(ITEMS)], user == "flip" or (index + k) % 2 == 0) for k in range(1, 4)]
    return record(index, user, item, label, history)


def planted(index: int, hot_liked: bool) -> dict:
    """Out of the sample: the hot item rated again and again, and user ``flip`` rating against its sample."""
    if index % 2:
        return record(index, f"fan{index % 7}", HOT, int(hot_liked), [(*HOT, hot_liked), (*ITEMS[1], hot_liked)])
    item = ITEMS[index % len(ITEMS)]
    return record(index, "flip", item, int(not hot_liked), [(*ITEMS[(index + 3) % 8], not hot_liked)])


def sample_indices() -> set[int]:
    # the sample `data_builders.sample_records` draws (TALLRec's Dataset.shuffle(seed).select(range(k)))
    return set(np.random.default_rng(SEED).permutation(POOL)[:SHOTS].tolist())


def write_planted(folder: Path, hot_liked: bool) -> Path:
    """A dataset whose sample (shots 8, seed 0) is the same whatever ``hot_liked``, and whose records outside
    it say the opposite about the hot item and the flip user depending on ``hot_liked``."""
    chosen = sample_indices()
    train = [in_sample(i) if i in chosen else planted(i, hot_liked) for i in range(POOL)]
    test = [record(500, "flip", ITEMS[1], 1, [(*ITEMS[2], True)]), record(501, "u1", HOT, 1, [(*ITEMS[3], False)]),
            record(502, "u2", ITEMS[3], 0, [(*ITEMS[4], True)]), record(503, "u0", ITEMS[2], 1, [(*ITEMS[5], True)]),
            record(504, "flip", HOT, 0, [(*ITEMS[6], False)]), record(505, "u1", ITEMS[5], 0, [])]
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train), ("valid", train[:6]), ("test", test)):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def stored_references(sweep_dir: Path) -> tuple[dict, dict]:
    """(the equal-data file of the one sample, the full-data file)."""
    (equal,) = (sweep_dir / "baselines").glob("k*.json")
    (full,) = (sweep_dir / "baselines").glob("reference-*.json")
    return json.loads(equal.read_text()), json.loads(full.read_text())


def run_planted(tmp_path: Path, tiny_model_dir: Path, hot_liked: bool) -> tuple[dict, dict]:
    data = write_planted(tmp_path / f"data-{hot_liked}", hot_liked)
    recipe = tmp_path / f"recipe-{hot_liked}.yaml"
    recipe.write_text(f"model: {{name: {tiny_model_dir}}}\ndata: {{train: {data}}}\n")
    sweep.run_sweep(make_spec(recipe, data, shots=[SHOTS], seeds=[SEED]), tmp_path / f"sweep-{hot_liked}",
                    runner=FakeRunner())
    return stored_references(tmp_path / f"sweep-{hot_liked}")


def one_hot_bias_scores(train: list[dict], test: list[dict]) -> np.ndarray:
    """mu + b_user + b_item by scikit-learn on a one-hot matrix built here: the sample's ratings (records and
    every history item, one per user and item) and nothing else; unseen users and items get no column."""
    from scipy.sparse import csr_matrix
    from sklearn.linear_model import LogisticRegression

    ratings = [(r["user_id"], f"id:{r['item_id']}", r["label"]) for r in train]
    seen = {(user, item) for user, item, _ in ratings}
    for r in train:
        for item in r["history"]:
            if (r["user_id"], f"id:{item['item_id']}") not in seen:
                seen.add((r["user_id"], f"id:{item['item_id']}"))
                ratings.append((r["user_id"], f"id:{item['item_id']}", int(item["liked"])))
    names = sorted({f"user={user}" for user, _, _ in ratings} | {f"item={item}" for _, item, _ in ratings})
    column = {name: index for index, name in enumerate(names)}

    def matrix(pairs):
        rows = [sorted(column[name] for name in (f"item={item}", f"user={user}") if name in column) for user, item in pairs]
        indptr = np.cumsum([0] + [len(row) for row in rows])
        return csr_matrix((np.ones(indptr[-1]), [i for row in rows for i in row], indptr), shape=(len(rows), len(names)))

    model = LogisticRegression(C=1.0, solver="liblinear", max_iter=1000, random_state=SEED)
    model.fit(matrix([(user, item) for user, item, _ in ratings]), [label for _, _, label in ratings])
    return model.predict_proba(matrix([(r["user_id"], f"id:{r['item_id']}") for r in test]))[:, 1]


def test_equal_data_references_use_only_the_cells_records(tmp_path, tiny_model_dir):
    """Statistics planted outside the sample (a test item rated dozens of times, a user whose other ratings
    flip its bias) change the full-data references and leave every equal-data one unchanged, which equals a
    fit on the sample alone."""
    liked, disliked = (run_planted(tmp_path, tiny_model_dir, hot_liked) for hot_liked in (True, False))
    (equal_a, full_a), (equal_b, full_b) = liked, disliked
    expected_ids = [f"r{i}" for i in np.random.default_rng(SEED).permutation(POOL)[:SHOTS]]
    assert equal_a["train_ids"] == equal_b["train_ids"] == expected_ids
    scores_a, scores_b = equal_a["predictions"]["movies"], equal_b["predictions"]["movies"]
    assert set(scores_a) == {"ids", "Popularity", "LogReg", "Bias (user+item)", "GBDT", "MF"}
    for name in ("Popularity", "LogReg", "Bias (user+item)", "GBDT"):
        assert scores_a[name] == scores_b[name], name
    assert np.allclose(scores_a["MF"], scores_b["MF"], rtol=0, atol=1e-6)  # torch: last-bit noise only
    # the planted statistics are strong: the full-data fits read them (hot item: test 501 and 504; flip: 500)
    bias_a, bias_b = (np.array(full["predictions"]["movies"]["Bias (user+item)"]) for full in (full_a, full_b))
    assert bias_a[1] - bias_b[1] > 0.3 and bias_a[0] - bias_b[0] < -0.3
    gbdt_a, gbdt_b = (np.array(full["predictions"]["movies"]["GBDT"]) for full in (full_a, full_b))
    assert not np.allclose(gbdt_a, gbdt_b)

    chosen = sample_indices()
    sample = [in_sample(i) for i in range(POOL) if i in chosen]
    sample.sort(key=lambda r: expected_ids.index(r["id"]))
    test = [json.loads(line) for line in (tmp_path / "data-True" / "test.jsonl").read_text().splitlines()]
    assert np.allclose(scores_a["Bias (user+item)"], one_hot_bias_scores(sample, test), rtol=0, atol=1e-9)
    # popularity by hand: (likes + 5 prior) / (ratings + 5) over the sample's targets and history mentions
    labels = [r["label"] for r in sample] + [int(i["liked"]) for r in sample for i in r["history"]]
    prior = np.mean(labels)
    assert scores_a["Popularity"][1] == pytest.approx(prior, abs=1e-12)  # the hot item is unseen in the sample
    film1 = [r["label"] for r in sample if r["item_id"] == "1"] + [
        int(i["liked"]) for r in sample for i in r["history"] if i["item_id"] == "1"]
    assert scores_a["Popularity"][0] == pytest.approx((sum(film1) + 5 * prior) / (len(film1) + 5), abs=1e-12)
    for name, label in (("logreg", "LogReg"), ("gbdt", "GBDT"), ("mf", "MF")):
        direct, _ = baselines.fit_and_score(name, sample, test, SEED, with_histories=True)
        assert np.allclose(scores_a[label], direct, rtol=0, atol=1e-6), name


def test_sample_interactions_are_the_records_and_each_history_rating_once():
    first = record(1, "a", ITEMS[0], 1, [(*ITEMS[1], True), (*ITEMS[2], False)])
    second = record(2, "a", ITEMS[3], 0, [(*ITEMS[2], False), (*ITEMS[0], True)])  # film 0: first's own record
    anonymous = dict(record(3, "x", ITEMS[4], 1, [(*ITEMS[1], False)]), user_id=None)
    rows = baselines.sample_interactions([first, second, anonymous])
    assert rows[-3:] == [first, second, anonymous]
    history_rows = [(r["user_id"], r["item_id"], r["label"], [i["item_id"] for i in r["history"]]) for r in rows[:-3]]
    assert history_rows == [("a", "1", 1, []), ("a", "2", 0, ["1"]), (None, "1", 0, [])]
    assert all(r.get("timestamp") is None for r in rows[:-3])


def test_a_single_class_sample_gives_constant_scores_not_an_error():
    liked = [record(i, f"u{i}", ITEMS[0], 1, []) for i in range(4)]
    test = [record(10, "u0", ITEMS[1], 0, []), record(11, "u1", ITEMS[0], 1, [])]
    results = baselines.evaluate_baselines(liked, test, with_histories=True)
    assert {name: metrics["auc"] for name, metrics in results.items() if name != "MF"} == {
        "Popularity": 0.5, "LogReg": 0.5, "Bias (user+item)": 0.5, "GBDT": 0.5}
    assert "single-class training sample: constant score" in results["GBDT"]["notes"]


# ------------------------------------------------------------------------- the sample and the test slice

def test_sweep_references_use_the_records_training_draws(tmp_path, tiny_model_dir):
    """The equal-data sample is the exact record set `tallrec_cli.train.run.prepare_data` trains on."""
    from transformers import AutoTokenizer

    from tallrec_cli.model.prompts import load_template
    from tallrec_cli.train.data import prepare_data

    data = write_dataset(tmp_path / "data")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {{name: {tiny_model_dir}}}\ndata: {{train: {data}, stratify: true}}\n")
    sweep_dir = tmp_path / "sweep"
    sweep.run_sweep(make_spec(recipe, data, shots=[8], seeds=[3]), sweep_dir, runner=FakeRunner())
    (stored_path,) = (sweep_dir / "baselines").glob("k8-*.json")
    stored = json.loads(stored_path.read_text())
    _, cells, configs = sweep.prepare_sweep(make_spec(recipe, data, shots=[8], seeds=[3]))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    trained = prepare_data(configs[cells[0].id], tokenizer, load_template("alpaca")).train_records
    assert stored["train_ids"] == [record["id"] for record in trained]
    assert stored["stratify"] is True and stored["cells"] == ["k8-s3"]
    assert set(stored["tests"]["movies"]) == {"Popularity", "LogReg", "Bias (user+item)", "GBDT", "MF"}
    assert stored["tests"]["movies"]["LogReg"]["n"] == 24 and len(stored["predictions"]["movies"]["GBDT"]) == 24


def test_references_see_the_same_test_slice_as_the_cells(tmp_path, tiny_model_dir):
    data = write_dataset(tmp_path / "data")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {{name: {tiny_model_dir}}}\ndata: {{train: {data}}}\n")
    sweep.run_sweep(make_spec(recipe, data, shots=[0, 4], seeds=[0], test_limit=10), tmp_path / "s", runner=FakeRunner())
    (stored_path,) = (tmp_path / "s" / "baselines").glob("k4-*.json")
    stored = json.loads(stored_path.read_text())
    assert stored["tests"]["movies"]["Popularity"]["n"] == 10
    assert stored["predictions"]["movies"]["ids"] == [f"r{2000 + i}" for i in range(10)]
    (reference_path,) = (tmp_path / "s" / "baselines").glob("reference-*.json")
    reference = json.loads(reference_path.read_text())
    assert reference["train_records"] == 40 and reference["cells"] == ["zero-shot", "k4-s0"]
    assert set(reference["tests"]["movies"]) == {"History share", "Bias (user+item)", "GBDT", "MF"}
    assert reference["tests"]["movies"]["GBDT"]["n"] == 10


def test_sweep_references_add_prompt_numbers_where_prompts_carry_context(tmp_path, tiny_model_dir):
    data = write_dataset(tmp_path / "data")
    for split in ("train", "valid", "test"):
        path = data / f"{split}.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps(dict(record, context={"cf_like": 30 + 40 * record["label"]})) + "\n"
                                for record in records))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {{name: {tiny_model_dir}}}\ndata: {{train: {data}}}\n")
    sweep.run_sweep(make_spec(recipe, data, shots=[4], seeds=[0]), tmp_path / "s", runner=FakeRunner())
    (reference_path,) = (tmp_path / "s" / "baselines").glob("reference-*.json")
    tests = json.loads(reference_path.read_text())["tests"]["movies"]
    assert set(tests) == {"History share", "Bias (user+item)", "GBDT", "MF", "Prompt numbers"}
    assert tests["Prompt numbers"]["auc"] == 1.0
    # a test built with another template (no context) gets the other references, not an error
    assert baselines.full_data_references([{"context": {"cf_like": 50}}], [{}]) == baselines.FULL_DATA_REFERENCES


def test_rows_of_several_training_pools_in_one_domain_stay_apart(tmp_path, tiny_model_dir):
    first, second = write_dataset(tmp_path / "pool-a"), write_dataset(tmp_path / "pool-b", train=30)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {{name: {tiny_model_dir}}}\ndata: {{train: {first}}}\n")
    spec = make_spec(recipe, first, shots=[4], seeds=[0], axes=[f"data.train={first},{second}"])
    result = sweep.run_sweep(spec, tmp_path / "s", runner=FakeRunner())
    methods = {row["method"] for row in result.summary}
    assert {"equal-data GBDT on pool-a", "equal-data GBDT on pool-b", "GBDT (full data) on pool-a",
            "GBDT (full data) on pool-b", "History share on pool-a"} <= methods


def test_old_reference_files_are_refit(tmp_path, tiny_model_dir):
    """A SWEEP/baselines file of an earlier version (no per-record scores) is refit on resume."""
    data = write_dataset(tmp_path / "data")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {{name: {tiny_model_dir}}}\ndata: {{train: {data}}}\n")
    spec = make_spec(recipe, data, shots=[4], seeds=[0])
    sweep.run_sweep(spec, tmp_path / "s", runner=FakeRunner())
    (path,) = (tmp_path / "s" / "baselines").glob("k4-*.json")
    old = json.loads(path.read_text())
    path.write_text(json.dumps({key: old[key] for key in ("domain", "train", "shots", "seed", "stratify", "tests")}
                               | {"fingerprint": "earlier"}))
    sweep.run_sweep(make_spec(recipe, data, shots=[4], seeds=[0]), tmp_path / "s", runner=FakeRunner())
    refit = json.loads(path.read_text())
    assert refit["fingerprint"] == old["fingerprint"] and refit["predictions"]["movies"]["GBDT"] == old[
        "predictions"]["movies"]["GBDT"]


def test_a_record_without_history_structure_names_the_problem():
    bare = {key: movie_record(0)[key] for key in ("instruction", "input", "output", "label", "id")}
    with pytest.raises(DataError, match="no history structure"):
        baselines.fit_and_score("gbdt", [bare], [movie_record(1)], with_histories=True)
