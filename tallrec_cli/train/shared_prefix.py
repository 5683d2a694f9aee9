"""Shared-prefix training: the tokens that every record of a micro-batch starts with (the template's header and
instruction: 70 of the default recipe's ~231 tokens) run through the model once per micro-batch instead of once
per record, forward and backward.

``install_shared_prefix`` wraps the forward of the model's transformer body. In training (gradients on, no cache
given), when the rows of a right-padded micro-batch share at least MIN_PREFIX_TOKENS leading tokens, the body
runs on that prefix for one row, keeping its key/value cache, then on every row's suffix with that cache
broadcast to the batch (``expand``: each layer concatenates it with the suffix's keys and values into per-row
tensors), and returns the prefix's hidden states broadcast in front of the suffix's. Forward values are those
of the full rows (the suffix attends to the same keys and values at the same positions); in backward, autograd
sums every row's gradient into the one prefix computation, which is what the per-row computations' gradients
add up to. One thing differs: a LoRA dropout mask on the prefix tokens is drawn once per micro-batch instead
of once per row.

Skipped (the plain forward runs) under gradient checkpointing (the checkpointed layers keep no cache), for a
model whose cache cannot be shared (`tallrec_cli.model.scoring.shareable_prefix_tokens`), and in evaluation
(validation has its own prefix cache).
"""

from __future__ import annotations

import types

import torch
from transformers import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast

from tallrec_cli.model.scoring import MIN_PREFIX_TOKENS, _cache_kwarg, shareable_prefix_tokens, split_lm_head


def shared_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> int:
    """Leading tokens that every row has, unpadded, with at least one token of each row left after them."""
    same = (input_ids == input_ids[:1]).all(dim=0)
    if attention_mask is not None:
        same &= attention_mask.bool().all(dim=0)
        shortest = int(attention_mask.sum(dim=1).min())
    else:
        shortest = input_ids.shape[1]
    return min(int(same.int().cumprod(dim=0).sum()), shortest - 1)


def install_shared_prefix(model, min_prefix_tokens: int = MIN_PREFIX_TOKENS) -> bool:
    """Wrap the transformer body of ``model`` (a causal LM or its peft wrapper); False (nothing changed) when
    the model's key/value cache cannot be shared across rows."""
    body, _ = split_lm_head(model)
    longest = shareable_prefix_tokens(body.config)
    if longest is None:
        return False
    plain = body.forward
    cache_name = _cache_kwarg()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, **kwargs):
        prefix = 0
        if (self.training and torch.is_grad_enabled() and not getattr(self, "gradient_checkpointing", False)
                and input_ids is not None and input_ids.shape[0] > 1 and inputs_embeds is None
                and position_ids is None and kwargs.get(cache_name) is None and kwargs.get("past_key_values") is None):
            prefix = min(shared_prefix_length(input_ids, attention_mask), longest)
        if prefix < min_prefix_tokens:
            return plain(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         inputs_embeds=inputs_embeds, **kwargs)
        # none given (older transformers pass cache_position=None): the cache and its positions are made here
        for name in ("use_cache", cache_name, "past_key_values", "cache_position"):
            kwargs.pop(name, None)
        return _prefix_then_suffix(plain, self.config, input_ids, attention_mask, prefix, cache_name, kwargs)

    body.forward = types.MethodType(forward, body)
    return True


def _prefix_then_suffix(plain, config, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, prefix: int,
                        cache_name: str, kwargs: dict) -> BaseModelOutputWithPast:
    rows, width = input_ids.shape
    cache = DynamicCache(config=config)
    head = plain(input_ids=input_ids[:1, :prefix], use_cache=True, **{cache_name: cache}, **kwargs)
    shared = DynamicCache(ddp_cache_data=[(layer.keys.expand(rows, -1, -1, -1), layer.values.expand(rows, -1, -1, -1))
                                          for layer in cache.layers], config=config)
    positions = torch.arange(prefix, width, device=input_ids.device)
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    tail = plain(input_ids=input_ids[:, prefix:], attention_mask=mask, position_ids=positions.expand(rows, -1),
                 cache_position=positions, use_cache=True, **{cache_name: shared}, **kwargs)
    hidden = torch.cat([head.last_hidden_state.expand(rows, -1, -1), tail.last_hidden_state], dim=1)
    return BaseModelOutputWithPast(last_hidden_state=hidden)
