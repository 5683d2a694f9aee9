"""A compact fused LM head for devices without Triton (CPU): score only the positions that carry a label.

trl's SFTTrainer patches the base model so that ``model(..., labels=..., fused_lm_head=True)`` returns
per-token log-probabilities (`trl.trainer.utils.FusedCausalLMOutput`) instead of full logits. On CUDA its
Triton kernel scores only the labelled positions; elsewhere it scores *every* position through a tiled
torch fallback, so an answer-only loss (3 labelled tokens of ~240) pays for the whole vocabulary
projection, forward and backward recomputation: 7.2 s of a 9.7 s micro-batch for SmolLM2 on this CPU.

``install_compact_lm_head`` wraps trl's patched forward: with ``fused_lm_head=True`` it runs the backbone,
keeps the labelled positions, and projects them in row chunks whose logits are materialised in fp32
(one matmul + log_softmax, the fastest way on a CPU), recomputed in backward when there is more than one
chunk so memory stays bounded. The output keeps trl's contract, so trl's loss normalisation, gradient
accumulation, DDP and metrics are untouched. Models with logit soft-capping / scaling or router logits keep
trl's own path.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

# fp32 logits per chunk: 2**27 values = 512 MiB (a SmolLM2 micro-batch of 8 x 330 tokens with full loss is one
# chunk; answer-only batches are a single small one).
CHUNK_LOGITS = 2 ** 27


def _needs_trl_path(config) -> bool:
    text = config.get_text_config()
    return any(getattr(text, key, None) not in (None, 1.0) for key in
               ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")
               ) or getattr(text, "output_router_logits", False)


def _score_rows(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor):
    """log p(target), entropy and whether the target is the (first) argmax, for rows of ``hidden``."""
    logits = F.linear(hidden, weight, bias).float()
    log_probs = logits.log_softmax(dim=-1)
    target_log_probs = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        is_top1 = logits.argmax(-1) == targets
    return target_log_probs, entropy, is_top1


def compact_log_probs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor):
    """`_score_rows` over row chunks of at most CHUNK_LOGITS logits; chunks are recomputed in backward."""
    rows_per_chunk = max(1, CHUNK_LOGITS // weight.shape[0])
    if hidden.shape[0] <= rows_per_chunk:
        return _score_rows(hidden, weight, bias, targets)
    from torch.utils.checkpoint import checkpoint

    parts = [checkpoint(_score_rows, hidden[start:start + rows_per_chunk], weight, bias,
                        targets[start:start + rows_per_chunk], use_reentrant=False)
             for start in range(0, hidden.shape[0], rows_per_chunk)]
    return tuple(torch.cat(column) for column in zip(*parts))


def install_compact_lm_head(model, device) -> bool:
    """Replace trl's fused-head forward on ``model`` (the base model, already patched by SFTTrainer) with
    the compact one. Returns False (nothing changed) where trl will run its Triton kernel or the model needs
    trl's path.

    ``device`` is the one training runs on (the Trainer's), not where the weights are now: under FSDP they are
    still on the CPU here. trl itself decides per call by device type and whether Triton imports, so CUDA
    without Triton gets its every-position fallback: the compact head is the better choice there too."""
    from trl.kernels.chunked_logprob import _use_triton
    from trl.trainer.utils import FusedCausalLMOutput

    if _use_triton(device) or _needs_trl_path(model.config):
        return False
    trl_forward = model.forward

    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        if not fused_lm_head:
            return trl_forward(*args, fused_lm_head=False, labels=labels, shift_labels=shift_labels,
                               num_items_in_batch=num_items_in_batch, **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        if shift_labels is None:
            hidden, labels = hidden[:, :-1], labels[:, 1:]
        else:
            labels = shift_labels
        mask = labels != -100
        head = self.get_output_embeddings()
        log_probs, entropy, is_top1 = compact_log_probs(hidden[mask], head.weight, head.bias, labels[mask])
        # masked_scatter keeps an all-masked micro-batch connected to the graph (a differentiable zero).
        log_probs, entropy = (x.new_zeros(mask.shape).masked_scatter(mask, x) for x in (log_probs, entropy))
        is_top1 = is_top1.new_zeros(mask.shape).masked_scatter(mask, is_top1)
        loss = -log_probs.sum() / (mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch)
        return FusedCausalLMOutput(loss=loss, log_probs=log_probs, entropy=entropy, is_top1=is_top1, label_mask=mask)

    model.forward = types.MethodType(forward, model)
    return True
