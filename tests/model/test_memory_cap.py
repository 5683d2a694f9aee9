"""Scoring's batch sizing under a per-process CUDA memory cap (a 24 GiB card emulated on an 80 GB one), on CPU with
the torch.cuda calls mocked: `mem_get_info` reports the whole card whatever `set_per_process_memory_fraction` says."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig

from tallrec_cli.core.errors import ConfigError
from tallrec_cli.model import scoring

GIB = 1024 ** 3
CARD = 80 * GIB


class FakeModel:
    """What auto_batch_size reads: the first parameter's device, the config, the embedding width."""

    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=32, vocab_size=32000)

    def parameters(self):
        return iter([SimpleNamespace(device=torch.device("cuda", 0))])

    def get_input_embeddings(self):
        return SimpleNamespace(weight=torch.empty(0, dtype=torch.bfloat16))


@pytest.fixture
def card(monkeypatch):
    """An 80 GiB card, 70 GiB of it free (this process holds 8 GiB reserved, the CUDA context the rest)."""
    state = {"fraction": 1.0, "reserved": 8 * GIB}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (70 * GIB, CARD))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: state["reserved"])
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device=None: state["fraction"])
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: SimpleNamespace(total_memory=CARD))
    monkeypatch.delenv(scoring.MEMORY_CAP_ENV, raising=False)
    return state


def test_without_a_cap_free_memory_is_the_cards(card):
    assert scoring.cuda_memory_cap(0) is None
    assert scoring.cuda_free_bytes(0) == 70 * GIB


def test_under_the_memory_fraction_free_is_the_cap_minus_reserved(card):
    card["fraction"] = 24 * GIB / CARD
    assert scoring.cuda_memory_cap(0) == 24 * GIB
    assert scoring.cuda_free_bytes(0) == 16 * GIB  # not the card's 70 GiB
    card["reserved"] = 30 * GIB  # beyond the cap already: nothing left, never negative
    assert scoring.cuda_free_bytes(0) == 0


def test_the_environment_cap_stands_in_for_a_torch_without_the_getter(card, monkeypatch):
    monkeypatch.delattr(torch.cuda, "get_per_process_memory_fraction")
    monkeypatch.setenv(scoring.MEMORY_CAP_ENV, str(24 * GIB))
    assert scoring.cuda_free_bytes(0) == 16 * GIB
    monkeypatch.setenv(scoring.MEMORY_CAP_ENV, "24GiB")
    with pytest.raises(ConfigError, match="TALLREC_GPU_MEMORY_CAP"):
        scoring.cuda_free_bytes(0)


def test_the_lower_of_the_two_caps_wins(card, monkeypatch):
    card["fraction"] = 0.5  # 40 GiB
    monkeypatch.setenv(scoring.MEMORY_CAP_ENV, str(24 * GIB))
    assert scoring.cuda_memory_cap(0) == 24 * GIB


def test_auto_batch_size_sizes_for_the_cap_not_the_card(card):
    model = FakeModel()
    uncapped = scoring.auto_batch_size(model, 256)
    card["fraction"] = 24 * GIB / CARD
    capped = scoring.auto_batch_size(model, 256)
    per_row = scoring.scoring_row_bytes(model.config, 2, 256)
    assert capped == int(0.6 * 16 * GIB / per_row) and uncapped == min(int(0.6 * 70 * GIB / per_row),
                                                                        scoring.MAX_AUTO_BATCH_SIZE)
    assert capped < uncapped


def test_a_torch_that_cannot_answer_counts_as_uncapped(card, monkeypatch):
    """A CPU build raises from get_per_process_memory_fraction (tests that mock mem_get_info alone run there)."""

    def no_cuda(device=None):
        raise AssertionError("Torch not compiled with CUDA enabled")

    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", no_cuda)
    assert scoring.cuda_free_bytes(0) == 70 * GIB
