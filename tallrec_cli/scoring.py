"""P(yes) scoring: one forward pass per batch, logits at the answer position only.

Shared by training-time validation and `tallrec eval` / `predict`, so a checkpoint is chosen with
exactly the number that evaluation reports. Two modes:
- ``pair`` (default): softmax over the two label-token logits, i.e. p_yes / (p_yes + p_no).
- ``tallrec``: TALLRec's number: softmax over the whole vocabulary, then a second softmax over the
  two resulting probabilities (ranks by p_yes - p_no, so its AUC can differ from ``pair``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from tallrec_cli.prompts import LabelTokens

SCORE_MODES = ("pair", "tallrec")


def label_probability(last_hidden, output_weight, labels: LabelTokens, mode: str = "pair"):
    """P(yes) from the final hidden state at the answer position (shape [batch, hidden]).

    The output projection is done here in float32: a bf16 logit near 20 is only resolved to 0.125,
    which turns many distinct P(yes) into ties and blunts AUC. Pair mode needs just two rows.
    """
    import torch

    hidden = last_hidden.float()
    label_rows = [labels.positive_id, labels.negative_id]
    if mode == "pair":
        pair = hidden @ output_weight[label_rows].float().T
    elif mode == "tallrec":
        probs = (hidden @ output_weight.float().T).softmax(dim=-1)
        pair = probs[:, label_rows]
    else:
        raise ValueError(f"unknown score mode {mode!r}")
    return torch.softmax(pair, dim=-1)[:, 0].cpu().numpy()


def split_lm_head(model):
    """(transformer body, lm_head weight) of a causal LM, looking through a PEFT wrapper.

    LoRA layers are injected in place, so the body carries the adapter. An adapter on the lm_head
    itself would be skipped here, hence the refusal.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    if not hasattr(head, "weight") or head.weight.ndim != 2 or "lora" in type(head).__name__.lower():
        raise ValueError("scoring needs a plain linear lm_head (adapters on lm_head are not supported)")
    return base.model, head.weight


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first, so memory trouble shows early)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def score_prompts(model, tokenizer, prompts: Sequence[str], labels: LabelTokens, mode: str = "pair",
                  batch_size: int = 16, on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """P(yes) for each prompt, in input order.

    Prompts are tokenized once, sorted by length and left-padded per batch, so the answer position is
    the last column for every row and only that column is projected to label logits.
    """
    import torch

    if mode not in SCORE_MODES:
        raise ValueError(f"unknown score mode {mode!r}")
    encoded = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    scores = np.empty(len(encoded), dtype=np.float32)
    device = next(model.parameters()).device
    body, output_weight = split_lm_head(model)
    pad_id = tokenizer.pad_token_id
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in length_sorted_batches([len(ids) for ids in encoded], batch_size):
                width = max(len(encoded[i]) for i in batch)
                input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                attention = torch.zeros((len(batch), width), dtype=torch.long)
                for row, index in enumerate(batch):
                    ids = encoded[index]
                    input_ids[row, width - len(ids):] = torch.tensor(ids)
                    attention[row, width - len(ids):] = 1
                # Left padding shifts positions; derive them from the mask so scores match unpadded runs.
                position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
                output = body(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                              position_ids=position_ids.to(device), use_cache=False)
                scores[batch] = label_probability(output.last_hidden_state[:, -1], output_weight, labels, mode)
                if on_batch is not None:
                    on_batch(len(batch))
    finally:
        model.train(was_training)
    return scores
