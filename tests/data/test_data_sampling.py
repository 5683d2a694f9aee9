"""Few-shot sampling: identical to TALLRec's datasets shuffle/select, nested, stratified."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_builders import sample_records
from tallrec_cli.core.errors import DataError


def pool(size: int, positives: int) -> list[dict]:
    return [{"id": str(i), "label": int(i < positives), "instruction": "", "input": str(i),
             "output": "Yes." if i < positives else "No."} for i in range(size)]


@pytest.mark.parametrize("seed", [0, 1, 2, 42])
def test_matches_datasets_shuffle_select(seed):
    from datasets import Dataset

    records = pool(300, 120)
    dataset = Dataset.from_list(records)
    for shots in (16, 64, 256):
        expected = dataset.shuffle(seed=seed).select(range(shots))
        assert [r["id"] for r in sample_records(records, shots, seed)] == expected["id"]


def test_plain_subsets_are_nested():
    records = pool(500, 200)
    small, large = sample_records(records, 16, 3), sample_records(records, 256, 3)
    assert large[:16] == small


@settings(max_examples=80, deadline=None)
@given(size=st.integers(2, 120), data=st.data())
def test_stratified_keeps_balance_and_is_nested(size, data):
    positives = data.draw(st.integers(0, size))
    seed = data.draw(st.integers(0, 1000))
    records = pool(size, positives)
    previous: set[str] = set()
    for shots in sorted(set(data.draw(st.lists(st.integers(1, size), min_size=1, max_size=4)))):
        chosen = sample_records(records, shots, seed, stratify=True)
        ids = {r["id"] for r in chosen}
        assert len(chosen) == len(ids) == shots
        assert previous <= ids
        previous = ids
        taken = sum(r["label"] for r in chosen)
        assert abs(taken - shots * positives / size) <= 1


def test_too_many_shots_is_a_clear_error():
    with pytest.raises(DataError, match="cannot draw 11 records from a pool of 10"):
        sample_records(pool(10, 5), 11, 0)
