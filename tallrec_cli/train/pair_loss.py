"""`prompt.loss: pair`: a binary log-loss on the P(yes) that eval reports.

Eval scores a record by softmax over the two label logits at the answer position
(`scoring.label_probability`, pair mode). The `answer` loss instead trains the whole-vocabulary
cross-entropy of every answer token ("Yes", ".", EOS), so most of its gradient goes to tokens eval never
reads. The pair loss is the cross-entropy over [logit_yes, logit_no] at the first answer position only:
-log P(yes) for a like, -log(1 - P(yes)) for a dislike, optionally class-weighted.

The forward runs through the wrapped model (DDP, FSDP and peft see it as usual); the final hidden state is
taken from its transformer body at each row's answer position and projected onto the two label rows only,
in float32 as the scorer does (`scoring.label_logits`). Per-row `logits_to_keep` indices are not used: before
they were supported (transformers 5.17 and older) a [B, 1] tensor gave logits of shape [B, B, 1, V].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from trl import SFTTrainer

from tallrec_cli.model.prompts import LabelTokens
from tallrec_cli.model.scoring import label_logits, split_lm_head

CLASS_WEIGHTS = ("none", "balanced")


def class_weights(labels: Sequence[int], scheme: str) -> tuple[float, float]:
    """(weight of a dislike, weight of a like): 1 each, or n / (2 n_class) for ``balanced`` (scikit-learn's
    convention, so a balanced set keeps weights 1)."""
    if scheme == "none":
        return 1.0, 1.0
    count = len(labels)
    positives = sum(1 for label in labels if label == 1)
    negatives = count - positives
    if not positives or not negatives:
        return 1.0, 1.0  # one class: nothing to balance
    return count / (2 * negatives), count / (2 * positives)


def answer_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(position whose logits predict the first answer token, that token) per row of ``labels``
    (-100 outside the completion, as trl's collator writes them)."""
    shifted = labels[:, 1:]
    mask = shifted != -100
    if not bool(mask.any(dim=1).all()):
        raise ValueError("a training row has no answer token (pair loss needs prompt/completion records)")
    positions = mask.int().argmax(dim=1)  # first answer token, predicted from the position before it
    return positions, shifted.gather(1, positions.unsqueeze(1)).squeeze(1)


def pair_targets(first_tokens: torch.Tensor, labels: LabelTokens) -> torch.Tensor:
    """1.0 where the answer starts with the positive label token, 0.0 for the negative one."""
    positive = first_tokens == labels.positive_id
    if not bool((positive | (first_tokens == labels.negative_id)).all()):
        raise ValueError("an answer does not start with a label token; the pair loss needs Yes/No answers")
    return positive.float()


def pair_loss(pair_logits: torch.Tensor, targets: torch.Tensor,
              weights: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
    """Mean weighted binary log-loss of P(yes) = softmax(pair_logits)[:, 0] (columns: yes, no).

    softmax over two logits is sigmoid of their difference, so this is BCE on logit_yes - logit_no.
    """
    margin = pair_logits[:, 0].float() - pair_logits[:, 1].float()
    row_weights = torch.where(targets > 0.5, weights[1], weights[0]).to(margin.dtype)
    return (F.binary_cross_entropy_with_logits(margin, targets, reduction="none") * row_weights).mean()


def answer_pair_logits(model, inner, inputs: dict, positions: torch.Tensor, labels: LabelTokens):
    """([logit_yes, logit_no] at each row's answer position in float32, the model's output).

    ``model`` is called (it may be a DDP/FSDP wrapper); ``inner`` is the causal LM (or its peft wrapper) inside
    it, whose body's output is kept by a forward hook. The model's own head runs at one position only
    (``logits_to_keep=1``, which every transformers version takes)."""
    body, _ = split_lm_head(inner)
    kept = []
    handle = body.register_forward_hook(lambda module, args, output: kept.append(output[0]))
    try:
        outputs = model(**inputs, use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    hidden = kept[-1][torch.arange(len(positions), device=positions.device), positions]
    _, weight = split_lm_head(inner)  # read after the forward: FSDP has gathered the head's weight by then
    return label_logits(hidden, weight, labels), outputs


class PairLossTrainer(SFTTrainer):
    """SFTTrainer whose training loss is the pair loss; everything else (data, collation, checkpoints,
    callbacks) is SFTTrainer's."""

    # A per-micro-batch mean: Trainer divides it by the accumulation steps (num_items_in_batch counts
    # answer tokens, which mean nothing to this loss).
    loss_is_scaled_for_ga = False

    def __init__(self, *args, label_tokens: LabelTokens, weights: tuple[float, float] = (1.0, 1.0), **kwargs):
        super().__init__(*args, **kwargs)
        self.label_tokens = label_tokens
        self.class_weights = weights

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        positions, first_tokens = answer_positions(inputs["labels"])
        forward = {key: value for key, value in inputs.items() if key != "labels"}
        pair_logits, outputs = answer_pair_logits(model, self.accelerator.unwrap_model(model), forward, positions,
                                                  self.label_tokens)
        targets = pair_targets(first_tokens, self.label_tokens)
        loss = pair_loss(pair_logits, targets, self.class_weights)
        mode = "train" if model.training else "eval"
        with torch.no_grad():
            correct = ((pair_logits[:, 0] > pair_logits[:, 1]).float() == targets).float().mean()
        self._metrics[mode]["pair_accuracy"].append(self.accelerator.gather_for_metrics(correct).mean().item())
        return (loss, outputs) if return_outputs else loss
