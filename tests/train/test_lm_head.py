"""The compact fused LM head gives trl's loss, metrics and LoRA gradients, in one chunk or several."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
from trl.trainer.utils import add_fused_lm_head

from tallrec_cli.train import lm_head
from tallrec_cli.train.lm_head import install_compact_lm_head

CPU = torch.device("cpu")


def _peft_model(model_dir):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    add_fused_lm_head(base, outputs=("log_probs", "entropy", "is_top1"))  # what SFTTrainer does
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    return model


def _batch(vocab: int, answer_only: bool):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(4, vocab, (3, 20), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, -5:] = 0  # right padding, as trl's collator pads
    labels = torch.where(mask.bool(), ids, -100)
    if answer_only:
        labels[:, :-8] = -100
    return ids, mask, labels


def _run(model, ids, mask, labels, num_items=None):
    model.zero_grad()
    out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True, num_items_in_batch=num_items)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return out, grads


@pytest.mark.parametrize("answer_only", [True, False])
@pytest.mark.parametrize("chunk_logits", [lm_head.CHUNK_LOGITS, 5000])  # one chunk / several with recomputation
def test_compact_head_matches_trl(tiny_model_dir, monkeypatch, answer_only, chunk_logits):
    monkeypatch.setattr(lm_head, "CHUNK_LOGITS", chunk_logits)
    model = _peft_model(tiny_model_dir)
    ids, mask, labels = _batch(model.config.vocab_size, answer_only)
    expected, expected_grads = _run(model, ids, mask, labels, num_items=torch.tensor(40))
    assert install_compact_lm_head(model.get_base_model(), CPU)
    actual, actual_grads = _run(model, ids, mask, labels, num_items=torch.tensor(40))

    torch.testing.assert_close(actual.loss, expected.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(actual.log_probs, expected.log_probs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(actual.entropy, expected.entropy, rtol=1e-4, atol=1e-4)
    assert torch.equal(actual.is_top1, expected.is_top1) and torch.equal(actual.label_mask, expected.label_mask)
    assert expected_grads.keys() == actual_grads.keys()
    for name in expected_grads:
        torch.testing.assert_close(actual_grads[name], expected_grads[name], rtol=1e-4, atol=1e-6)


def test_plain_forward_and_all_masked_batches_still_work(tiny_model_dir):
    model = _peft_model(tiny_model_dir)
    ids, mask, labels = _batch(model.config.vocab_size, answer_only=True)
    logits_before = model(input_ids=ids, attention_mask=mask).logits
    install_compact_lm_head(model.get_base_model(), CPU)
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, logits_before)
    out, grads = _run(model, ids, mask, torch.full_like(labels, -100))
    assert out.loss.item() == 0.0 and all(torch.isfinite(g).all() for g in grads.values())


def test_models_that_scale_their_logits_keep_trls_head(tiny_model_dir):
    model = _peft_model(tiny_model_dir)
    model.config.final_logit_softcapping = 30.0
    assert not install_compact_lm_head(model.get_base_model(), CPU)


@pytest.mark.parametrize("triton", [True, False])
def test_head_choice_follows_the_training_device_and_trls_backend(tiny_model_dir, monkeypatch, triton):
    """Weights still on the CPU (FSDP shards them later) but training on CUDA: trl's Triton kernel runs there,
    so the compact head must stay out; CUDA without Triton gets trl's every-position fallback: compact head."""
    import trl.kernels.chunked_logprob as chunked

    monkeypatch.setattr(chunked, "_TRITON_AVAILABLE", triton)
    model = _peft_model(tiny_model_dir)
    assert install_compact_lm_head(model.get_base_model(), torch.device("cuda", 0)) is not triton
