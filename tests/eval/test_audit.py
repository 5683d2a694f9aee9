"""`tallrec audit`: planted leaks are reported, slices count training records, shuffle and ablation move
only scorers that read order or history; the CLI with a baseline and with the tiny offline model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from data_builders.structure import HistoryItem, render_input, structure_fields
from data_builders.templates import load_record_template
from tallrec_cli.cli.app import app
from tallrec_cli.core.errors import TallrecError
from tallrec_cli.core.files import write_jsonl_atomic
from tallrec_cli.core.manifests import write_manifest
from tallrec_cli.eval.audit import AuditSpec, Scorer, baseline_scorer, run_audit

TEMPLATE = load_record_template("tallrec-movie")


def record(user: str, item: int, label: int, timestamp: int, history: list[tuple[int, bool]]) -> dict:
    items = [HistoryItem(f"Movie {i}", liked, str(i)) for i, liked in history]
    return {"instruction": TEMPLATE.variants[0]["instruction"],
            "input": render_input(TEMPLATE, 0, items, f"Movie {item}"), "output": TEMPLATE.output(label),
            "id": f"{user}:{timestamp}", "user_id": user, "item_id": str(item), "label": label,
            "timestamp": timestamp, **structure_fields(items, f"Movie {item}", TEMPLATE.name, 0)}


def clean_split() -> tuple[list[dict], list[dict]]:
    """Train before test in time, distinct items per record, histories that never hold their target."""
    train, test = [], []
    for u in range(6):
        user = f"u{u}"
        for step in range(8):
            item = 100 + u * 20 + step
            history = [(item - k - 1, (item + k) % 3 != 0) for k in range(3)]
            train.append(record(user, item, int((item + u) % 2 == 0), 1000 + step, history))
        for step in range(2):
            item = 500 + u * 10 + step
            history = [(item - k - 1, (item + k) % 2 == 0) for k in range(3)]
            test.append(record(user, item, step % 2, 5000 + step, history))
    return train, test


def write_dataset(folder, train, test, split="temporal", valid=()):
    write_jsonl_atomic(folder / "train.jsonl", train)
    write_jsonl_atomic(folder / "test.jsonl", test)
    if valid:
        write_jsonl_atomic(folder / "valid.jsonl", valid)
    write_manifest(folder, "dataset", {"config": {"split": split}, "files": {"train": "train.jsonl",
                                                                               "test": "test.jsonl"}})
    return folder


VALID = [record("u3", 650, 1, 3000, [(10, True), (11, False)])]


def planted() -> tuple[list[dict], list[dict]]:
    train, test = clean_split()
    test[0] = record("u0", 777, 1, 5000, [(777, True), (3, False)])  # target in its own history
    test[1] = dict(train[5])  # the same record in train and test (same user, item, label and prompt)
    test[2] = record("u1", 778, 0, 999, [(4, True)])  # older than every training interaction
    test[3] = dict(VALID[0])  # a validation record again in the test
    return train, test


PLANTED_LEAKS = {"target in own history (test)", "same user+item+label in train and test",
                 "same prompt in train and test", "same user+item+label in valid and test",
                 "same prompt in valid and test", "test older than train"}


def statuses(audit) -> dict[str, dict]:
    return {check["check"]: check for check in audit["leakage"]}


def history_share() -> Scorer:
    return baseline_scorer("history-share", None)


def test_every_planted_leak_is_reported(tmp_path):
    train, test = planted()
    folder = write_dataset(tmp_path, train, test)
    audit = run_audit(history_share(), test, train, AuditSpec(resamples=50), folder / "test.jsonl", folder,
                      valid=VALID)
    checks = statuses(audit)
    assert checks["target in own history (test)"]["status"] == "leak"
    assert checks["target in own history (test)"]["count"] == 1
    assert checks["target in own history (test)"]["examples"] == ["u0:5000"]
    assert checks["same user+item+label in train and test"]["count"] == 1
    assert checks["same prompt in train and test"]["count"] == 1
    assert checks["test older than train"]["status"] == "leak"
    # u1's record at 999 (and the copied training record) are older than the newest training record
    assert set(checks["test older than train"]["examples"]) == {"u1:999", train[5]["id"]}
    assert checks["users in train and test"] == {**checks["users in train and test"], "status": "fact",
                                                  "count": 6, "total": 6}
    assert checks["same prompt in valid and test"]["examples"] == [VALID[0]["id"]]
    assert set(audit["leaks_found"]) == PLANTED_LEAKS


def test_a_clean_split_reports_no_leak(tmp_path):
    train, test = clean_split()
    folder = write_dataset(tmp_path, train, test, valid=VALID)
    audit = run_audit(history_share(), test, train, AuditSpec(resamples=0), folder / "test.jsonl", folder,
                      valid=VALID)
    assert audit["leaks_found"] == []
    assert statuses(audit)["same prompt in valid and test"]["status"] == "ok"
    assert statuses(audit)["items in train and test"]["count"] == 0


def test_time_order_is_checked_per_user_for_last_n_and_skipped_for_unordered_splits(tmp_path):
    train, test = clean_split()
    test[3] = record("u1", 790, 1, 1003, [(5, True)])  # u1 trained up to 1007: older than u1's training
    test[4] = record("u2", 791, 1, 1003, [(6, True)])
    train = [r for r in train if r["user_id"] != "u2" or r["timestamp"] < 1002]  # u2 trained up to 1001: fine
    for split, status, count in (("last-n", "leak", 1), ("temporal", "leak", 2), ("tallrec", "skipped", None)):
        folder = tmp_path / split
        folder.mkdir()
        write_dataset(folder, train, test, split)
        audit = run_audit(history_share(), test, train, AuditSpec(resamples=0), folder)
        check = statuses(audit)["test older than train"]
        assert (check["status"], check["count"]) == (status, count), split


def test_warm_and_cold_slices_count_training_records():
    warm_user = [record("w", 100 + i, i % 2, i, [(1, True)]) for i in range(12)]  # item 100..111 once each
    rare_user = [record("r", 100, 1, 50 + i, [(1, True)]) for i in range(2)]  # item 100: 3 training records
    train = warm_user + rare_user
    test = [record("w", 100, 1, 90, [(2, True)]), record("w", 105, 0, 91, [(2, True)]),
            record("r", 900, 1, 92, [(2, True)]), record("r", 901, 0, 93, [(2, True)]),
            record("c", 100, 0, 94, [(2, True)]), record("c", 902, 1, 95, [(2, True)])]
    fixed = {"w:90": 0.9, "w:91": 0.1, "r:92": 0.2, "r:93": 0.8, "c:94": 0.3, "c:95": 0.7}
    scorer = Scorer("fixed", "fixed", lambda records, _=None: np.array([fixed[r["id"]] for r in records]))
    audit = run_audit(scorer, test, train, AuditSpec(resamples=0, warm_min=10))
    users = {row["group"]: row for row in audit["slices"]["users"]}
    assert [users[name]["records"] for name in ("cold users", "rare users", "warm users")] == [2, 2, 2]
    assert (users["warm users"]["auc"], users["rare users"]["auc"], users["cold users"]["auc"]) == (1.0, 0.0, 1.0)
    items = {row["group"]: row for row in audit["slices"]["items"]}
    # item 100 has 3 training records, 105 one, 900-902 none: nothing reaches warm_min
    assert [items[name]["records"] for name in ("cold items", "rare items", "warm items")] == [3, 3, 0]
    deciles = audit["slices"]["popularity_deciles"]
    assert sum(row["records"] for row in deciles) == 6
    assert [row["train_records"] for row in deciles] == ["0", "1", "3"]


def last_liked() -> Scorer:
    """Depends on the order of the history: P(like) is whether the most recent item was liked."""
    def score(records, _=None):
        return np.array([0.9 if r["history"] and r["history"][-1]["liked"] else 0.1 for r in records])
    return Scorer("last", "last liked", score)


def test_shuffle_and_ablation_move_only_scorers_that_read_order_or_history():
    train, test = clean_split()
    spec = AuditSpec(resamples=50)
    order_scorer = run_audit(last_liked(), test, train, spec)
    assert order_scorer["history_order"]["records_score_changed"] > 0
    assert order_scorer["history_order"]["records_reordered"] == len(test)
    share = run_audit(history_share(), test, train, spec)
    assert share["history_order"]["records_score_changed"] == 0
    assert share["history_order"]["auc_diff"] == 0
    assert share["history_ablation"]["records_score_changed"] > 0
    assert share["history_ablation"]["auc"] == 0.5  # every record scores (0 + 1) / (0 + 2)
    popularity = run_audit(baseline_scorer("popularity", train), test, train, spec)
    for section in ("history_order", "history_ablation"):
        assert popularity[section]["mean_abs_score_change"] == 0


def test_changed_records_are_re_rendered_through_their_template():
    from tallrec_cli.eval.audit import shuffled_histories, without_history

    _, test = clean_split()
    shuffled, _ = shuffled_histories(test, seed=3)
    ablated = without_history(test)
    for original, changed, empty in zip(test, shuffled, ablated):
        titles = [item["title"] for item in changed["history"]]
        assert sorted(titles) == sorted(item["title"] for item in original["history"])
        assert changed["input"] == render_input(TEMPLATE, 0, [HistoryItem(**item) for item in changed["history"]],
                                                original["target_title"])
        assert empty["history"] == []
        assert empty["input"] == render_input(TEMPLATE, 0, [], original["target_title"]) != original["input"]


def invoke(*args):
    return CliRunner().invoke(app, [str(arg) for arg in args])


def test_cli_audits_a_baseline_and_writes_json_plots_and_manifest(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_dataset(data, *planted(), valid=VALID)
    result = invoke("audit", "--baseline", "gbdt", "--train", data, "--test", data / "test.jsonl",
                    "-o", tmp_path / "audit", "--bootstrap", "50")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "audit"
    assert sorted(p.name for p in folder.iterdir()) == ["audit.json", "history.png", "manifest.json", "slices.png"]
    audit = json.loads((folder / "audit.json").read_text())
    assert audit["scorer"]["baseline"] == "gbdt" and set(audit["leaks_found"]) == PLANTED_LEAKS
    assert audit["scorer"]["cold"]["records"] == len(planted()[1])  # counted when the test was scored
    assert "LEAK" in result.output and "target in own history (test)" in result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80


@pytest.mark.parametrize("args, message", [
    (["--baseline", "gbdt"], "training records: pass --train"),
    (["--baseline", "gbdt", "--model", "m"], "audit one scorer"),
    ([], "audit one scorer"),
    (["--baseline", "nope"], "unknown baseline"),
])
def test_cli_rejects_bad_scorer_choices_before_writing(tmp_path, args, message):
    train, test = planted()
    data = tmp_path / "data"
    data.mkdir()
    write_dataset(data, train, test)
    result = invoke("audit", *args, "--test", data / "test.jsonl", "-o", tmp_path / "audit")
    assert isinstance(result.exception, TallrecError), result.output
    assert message in result.exception.message
    assert not (tmp_path / "audit").exists()


def test_cli_rejects_records_without_structure(tmp_path):
    bare = tmp_path / "bare.jsonl"
    write_jsonl_atomic(bare, [{"instruction": "i", "input": "x", "output": "Yes.", "user_id": "u"}])
    result = invoke("audit", "--baseline", "history-share", "--test", bare, "-o", tmp_path / "audit")
    assert isinstance(result.exception, TallrecError), result.output
    assert "carry no history structure" in result.exception.message
    assert not (tmp_path / "audit").exists()


def test_cli_audits_the_tiny_offline_model(tiny_model_dir, tmp_path):
    train, test = planted()
    data = tmp_path / "data"
    data.mkdir()
    write_dataset(data, train, test)
    result = invoke("audit", "--model", tiny_model_dir, "--train", data, "--test", data / "test.jsonl",
                    "-o", tmp_path / "audit", "--bootstrap", "20", "--dtype", "float32")
    assert result.exit_code == 0, result.output
    audit = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert audit["scorer"]["name"] == "model" and audit["overall"]["records"] == len(test)
    # the prompts really changed: a model reading them gives different P(yes) without the history
    assert audit["history_ablation"]["records_score_changed"] > 0


def test_training_records_without_structure_skip_only_their_own_history_check():
    train, test = clean_split()
    bare = [{key: r[key] for key in ("instruction", "input", "output", "id", "user_id", "item_id", "label",
                                     "timestamp")} for r in train]
    audit = run_audit(last_liked(), test, bare, AuditSpec(resamples=0))
    checks = statuses(audit)
    assert checks["target in own history (train)"]["status"] == "skipped"
    assert checks["same prompt in train and test"]["status"] == "ok"
    assert sum(row["records"] for row in audit["slices"]["users"]) == len(test)
