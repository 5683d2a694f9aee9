"""Shared-prefix training gives the per-row forward's loss, log-probabilities and LoRA gradients, and runs the
prefix once."""

from __future__ import annotations

import pytest
import torch

from tallrec_cli.model.scoring import split_lm_head
from tallrec_cli.train.lm_head import install_compact_lm_head
from tallrec_cli.train.shared_prefix import install_shared_prefix, shared_prefix_length
from tests.train.test_lm_head import _peft_model as lora_model

PREFIX = 20


def _peft_model(model_dir):
    model = lora_model(model_dir)
    install_compact_lm_head(model.get_base_model(), torch.device("cpu"))
    return model.train()


def _batch(vocab: int):
    """Three rows sharing PREFIX tokens, right-padded to 32 (as trl's collator pads), answer-only labels."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(4, vocab, (3, 32), generator=generator)
    ids[:, :PREFIX] = ids[0, :PREFIX]
    ids[1, PREFIX] = ids[0, PREFIX] + 1  # the rows part right after the prefix
    mask = torch.ones_like(ids)
    mask[0, -6:] = 0
    mask[2, -2:] = 0
    labels = torch.where(mask.bool(), ids, -100)
    labels[:, :24] = -100
    return ids, mask, labels


def _embedded_shapes(model) -> list:
    """The shape of every batch of ids the transformer body embeds, from now on."""
    shapes = []
    split_lm_head(model)[0].get_input_embeddings().register_forward_hook(
        lambda module, args, output: shapes.append(tuple(args[0].shape)))
    return shapes


def _run(model, ids, mask, labels, fused: bool = True):
    model.zero_grad()
    out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=fused, use_cache=False)
    out.loss.backward()
    return out, {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("fused", [True, False])  # the compact head (trl's loss), the model's own full-logits loss
def test_shared_prefix_matches_per_row_forward(tiny_model_dir, fused):
    model = _peft_model(tiny_model_dir)
    ids, mask, labels = _batch(model.config.vocab_size)
    expected, expected_grads = _run(model, ids, mask, labels, fused)
    assert install_shared_prefix(model)
    embedded = _embedded_shapes(model)
    actual, actual_grads = _run(model, ids, mask, labels, fused)

    assert embedded == [(1, PREFIX), (3, 32 - PREFIX)]  # the prefix once, then the suffixes
    torch.testing.assert_close(actual.loss, expected.loss, rtol=1e-5, atol=1e-6)
    if fused:
        torch.testing.assert_close(actual.log_probs, expected.log_probs, rtol=1e-5, atol=1e-5)
    else:
        torch.testing.assert_close(actual.logits, expected.logits, rtol=1e-5, atol=1e-5)
    assert expected_grads.keys() == actual_grads.keys() and len(expected_grads) == 8  # 2 layers x q, v x A, B
    for name, grad in expected_grads.items():
        torch.testing.assert_close(actual_grads[name], grad, rtol=1e-4, atol=1e-6)


def test_shared_prefix_stays_out_of_evaluation(tiny_model_dir):
    model = _peft_model(tiny_model_dir)
    ids, mask, _ = _batch(model.config.vocab_size)
    assert install_shared_prefix(model)
    calls = _embedded_shapes(model)
    model.eval()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    model.train()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    assert calls == [(3, 32), (3, 32)]


@pytest.mark.parametrize(("rows", "mask_row", "expected"), [
    ([[5, 6, 7, 8], [5, 6, 7, 9]], None, 3),
    ([[5, 6, 7, 8], [5, 6, 7, 8]], None, 3),  # identical rows: the last token stays in the suffix
    ([[5, 6, 7, 8], [5, 6, 0, 0]], [1, 1, 0, 0], 1),  # a padded row keeps one of its own tokens
    ([[5, 6], [4, 6]], None, 0),
])
def test_shared_prefix_length(rows, mask_row, expected):
    ids = torch.tensor(rows)
    mask = None if mask_row is None else torch.stack([torch.ones(len(rows[0]), dtype=torch.long),
                                                      torch.tensor(mask_row)])
    assert shared_prefix_length(ids, mask) == expected


def test_training_runs_the_shared_prefix_and_the_validation_schedule_leaves_it_unchanged(tmp_path, tiny_model_dir,
                                                                                       monkeypatch):
    """A real run shares the prefix of its micro-batches and learns what the per-row run learns (LoRA dropout off,
    so both compute the same thing); validating every step or every other step gives the same rows at the steps
    both validate (validation changes nothing in training), so a coarser schedule keeps those AUCs exactly."""
    from tallrec_cli.train import shared_prefix
    from tallrec_cli.train.run import run_training
    from tests.train_helpers import tiny_config, write_dataset

    data = write_dataset(tmp_path / "data")
    shared_calls = []
    plain_forward = shared_prefix._prefix_then_suffix
    monkeypatch.setattr(shared_prefix, "_prefix_then_suffix",
                        lambda *args: shared_calls.append(args[4]) or plain_forward(*args))

    def rows(name: str, **overrides) -> dict[int, dict]:
        summary = run_training(tiny_config(tiny_model_dir, data, tmp_path / name, lora__dropout=0.0, **overrides))
        return {row["step"]: row for row in summary["evaluations"]}

    every_step = rows("every", training__eval_every=1)
    assert len(shared_calls) == 8 and min(shared_calls) >= 16  # 4 steps x 2 micro-batches, each prefix run once
    every_other = rows("other", training__eval_every=2)
    per_row = rows("plain", training__eval_every=2, training__shared_prefix=False)
    assert len(shared_calls) == 16
    assert sorted(every_step) == [0, 1, 2, 3, 4] and sorted(every_other) == [0, 2, 4]
    for step in (0, 2, 4):
        assert (every_other[step]["val_auc"], every_other[step]["val_loss"]) == (
            every_step[step]["val_auc"], every_step[step]["val_loss"])
        assert per_row[step]["val_loss"] == pytest.approx(every_other[step]["val_loss"], abs=1e-5)
    assert every_other[4]["val_loss"] < every_other[0]["val_loss"]  # it learned
