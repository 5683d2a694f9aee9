"""P(yes) the plain way, as a reference for tallrec's scorer (batches sorted by length, padding, a shared-prefix
cache): one unpadded prompt at a time through the model's own forward, softmax over the logits of the first token
the tokenizer gives each label word when it follows the prompt."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def answer_token(tokenizer, prompt: str, word: str) -> int:
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt + word, add_special_tokens=False)["input_ids"][len(prompt_ids)]


def plain_p_yes(model, tokenizer, prompts: Sequence[str], words: tuple[str, str] = ("Yes", "No")) -> np.ndarray:
    import torch

    scores = []
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1].float()
        pair = logits[[answer_token(tokenizer, prompt, word) for word in words]]
        scores.append(torch.softmax(pair, dim=-1)[0].item())
    return np.asarray(scores)
