"""P(yes) scoring: one forward pass per batch, logits at the answer position only.

Shared by training-time validation and `tallrec eval` / `predict`, so a checkpoint is chosen with
exactly the number that evaluation reports. Two modes:
- ``pair`` (default): softmax over the two label-token logits, i.e. p_yes / (p_yes + p_no).
- ``tallrec``: TALLRec's number: softmax over the whole vocabulary, then a second softmax over the
  two resulting probabilities (ranks by p_yes - p_no, so its AUC can differ from ``pair``).

Speed: prompts are sorted by length (little padding), and the token prefix every prompt shares
(template header + instruction) is run once; its key/value cache is broadcast to each batch, which
then only runs its suffixes (with sliding-window layers, such as Gemma 3's, the shared part stops short of the
window; a cache of another kind is not shared). Out-of-memory halves the batch and retries.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tallrec_cli.core.errors import ConfigError, ModelError, ResourceError
from tallrec_cli.model.prompts import LabelTokens, PromptTemplate, load_template, resolve_label_tokens

SCORE_MODES = ("pair", "tallrec")
PREFIX_CACHE_MODES = ("auto", "on", "off")
# Below this many shared tokens the cache bookkeeping costs about what it saves.
MIN_PREFIX_TOKENS = 16
# On CPU larger batches add no throughput (the matmuls are already big enough), only padding.
CPU_BATCH_SIZE = 16
MAX_AUTO_BATCH_SIZE = 512


@dataclass
class ScoringResult:
    """Scores in input order plus how they were computed (recorded in eval manifests)."""
    scores: np.ndarray
    mode: str
    batch_size: int  # the batch size in use at the end (after any out-of-memory back-off)
    oom_retries: int
    prefix_tokens: int  # tokens served from the shared-prefix cache (0: plain path)
    prompt_tokens: int
    seconds: float
    tokenize_seconds: float = 0.0  # the part of ``seconds`` spent in the tokenizer

    def describe(self) -> dict:
        return {"score_mode": self.mode, "batch_size": self.batch_size, "oom_retries": self.oom_retries,
                "prefix_tokens": self.prefix_tokens, "prompt_tokens": self.prompt_tokens,
                "seconds": round(self.seconds, 3), "tokenize_seconds": round(self.tokenize_seconds, 3),
                "prompts_per_s": round(len(self.scores) / self.seconds, 3) if self.seconds else None}


@dataclass(frozen=True)
class ScoringSpec:
    """How records become P(yes): resolved once (template and label tokens checked against the tokenizer,
    `resolve_scoring`) and handed to validation, eval, predict and audit alike."""
    template: PromptTemplate
    labels: LabelTokens
    mode: str = "pair"
    batch_size: int | None = None  # None: the largest expected to fit
    prefix_cache: str = "auto"

    def __post_init__(self):
        if self.mode not in SCORE_MODES:
            raise ConfigError(f"score mode {self.mode!r} is not one of {', '.join(SCORE_MODES)}")
        if self.prefix_cache not in PREFIX_CACHE_MODES:
            raise ConfigError(f"prefix cache {self.prefix_cache!r} is not one of {', '.join(PREFIX_CACHE_MODES)}")

    def score(self, model, tokenizer, prompts: Sequence[str],
              on_batch: Callable[[int], None] | None = None) -> ScoringResult:
        """P(yes) for rendered ``prompts`` (see `score_prompts_detailed`)."""
        return score_prompts_detailed(model, tokenizer, prompts, self.labels, self.mode, self.batch_size, on_batch,
                                      self.prefix_cache)

    def render(self, records: Sequence[dict], tokenizer) -> list[str]:
        return [self.template.render(record, tokenizer) for record in records]

    def describe(self) -> dict:
        """What results record about how they were scored."""
        return {"score_mode": self.mode, "template": self.template.name, "labels": self.labels.as_dict()}


# Vocabulary rows projected at a time in ``tallrec`` mode: the fp32 copy of the head stays bounded
# (8192 x 4096 x 4 bytes = 128 MiB) instead of a whole fp32 lm_head (2.2 GB for Qwen2.5-7B).
HEAD_CHUNK_ROWS = 8192


def label_logits(last_hidden, output_weight, labels: LabelTokens):
    """[logit_yes, logit_no] per row of the final hidden state at the answer position ([batch, hidden]), in
    float32 with autocast off (training and its validation run under it): a bf16 logit near 20 is only resolved
    to 0.125, which turns many distinct P(yes) into ties and blunts AUC. Differentiable (the pair loss trains
    on it)."""
    import torch

    hidden = last_hidden.float()
    with torch.autocast(hidden.device.type, enabled=False):
        return hidden @ output_weight[[labels.positive_id, labels.negative_id]].float().T


def label_probability(last_hidden, output_weight, labels: LabelTokens, mode: str = "pair"):
    """P(yes) from the final hidden state at the answer position (shape [batch, hidden]), projected in float32
    (see `label_logits`). Pair mode needs just two rows; ``tallrec`` mode projects the vocabulary in chunks of
    HEAD_CHUNK_ROWS rows.
    """
    import torch

    hidden = last_hidden.float()
    label_rows = [labels.positive_id, labels.negative_id]
    with torch.autocast(hidden.device.type, enabled=False):
        if mode == "pair":
            pair = label_logits(hidden, output_weight, labels)
        elif mode == "tallrec":
            logits = torch.cat([hidden @ output_weight[start:start + HEAD_CHUNK_ROWS].float().T
                                for start in range(0, output_weight.shape[0], HEAD_CHUNK_ROWS)], dim=-1)
            pair = logits.softmax(dim=-1)[:, label_rows]
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


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by every sequence."""
    if not sequences:
        return 0
    first, shortest = sequences[0], min(len(ids) for ids in sequences)
    length = 0
    while length < shortest and all(ids[length] == first[length] for ids in sequences):
        length += 1
    return length


def auto_batch_size(model, longest_tokens: int, prefix_tokens: int = 0) -> int:
    """A batch size expected to fit: fixed on CPU, estimated from free memory on CUDA (``cuda_free_bytes``: under
    a per-process memory cap, the cap minus what this process has reserved).

    Per row: one layer's activations over the suffix (``longest_tokens``) plus, with a shared prefix of
    ``prefix_tokens``, the key/value cache of every layer over prefix + suffix (each layer's cache update
    concatenates the broadcast prefix into a full per-row copy, kept until the forward ends). SDPA keeps no
    seq^2 attention scores. The out-of-memory back-off in ``score_prompts`` corrects an overestimate.
    """
    device = next(model.parameters()).device
    if device.type != "cuda":
        return CPU_BATCH_SIZE
    free_bytes = cuda_free_bytes(device)
    per_row = scoring_row_bytes(model.config, model.get_input_embeddings().weight.element_size(), longest_tokens,
                                prefix_tokens)
    return max(1, min(int(0.6 * free_bytes / per_row), MAX_AUTO_BATCH_SIZE))


# A cap on this process's CUDA memory in bytes, for a torch that cannot report its per-process fraction:
# acceptance/gpu_check.py sets it beside `torch.cuda.set_per_process_memory_fraction` when it emulates a 24 GiB card.
MEMORY_CAP_ENV = "TALLREC_GPU_MEMORY_CAP"


def cuda_memory_cap(device) -> int | None:
    """This process's CUDA memory limit in bytes, None when uncapped: the per-process memory fraction (when torch
    reports it and it is below 1) times the card, or ``TALLREC_GPU_MEMORY_CAP``, the lower of the two."""
    import torch

    caps = []
    getter = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    try:
        fraction = 1.0 if getter is None else float(getter(device))
    except (RuntimeError, AssertionError):  # no CUDA runtime to ask (a CPU build with mocked mem_get_info)
        fraction = 1.0
    if 0 < fraction < 1:
        caps.append(int(fraction * torch.cuda.get_device_properties(device).total_memory))
    value = os.environ.get(MEMORY_CAP_ENV, "").strip()
    if value:
        try:
            caps.append(int(float(value)))
        except ValueError:
            raise ConfigError(f"{MEMORY_CAP_ENV}={value!r} is not a number of bytes",
                              f"set it to an integer (24 GiB: {24 * 1024 ** 3}) or unset it") from None
    return min(caps) if caps else None


def cuda_free_bytes(device) -> int:
    """Memory this process can still take on ``device``. `mem_get_info` reports the whole card's free memory and
    knows nothing of `set_per_process_memory_fraction`, whose limit the caching allocator holds against what it has
    reserved: under a cap, free is the cap minus what is reserved (and never more than the card has free)."""
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    cap = cuda_memory_cap(device)
    if cap is None:
        return int(free)
    return max(0, min(int(free), cap - int(torch.cuda.memory_reserved(device))))


def scoring_row_bytes(config, width: int, suffix_tokens: int, prefix_tokens: int = 0) -> int:
    """Memory one prompt adds to a scoring batch (see ``auto_batch_size``); also used by the --dry-run estimate."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden, heads = text.hidden_size, text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    kv_width = 2 * (getattr(text, "num_key_value_heads", None) or heads) * head_dim
    intermediate = getattr(text, "intermediate_size", 4 * hidden)
    layer_activations = suffix_tokens * width * (8 * hidden + 3 * intermediate)
    kv_cache = text.num_hidden_layers * (prefix_tokens + suffix_tokens) * kv_width * width if prefix_tokens else 0
    return max(1, layer_activations + kv_cache)


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    # CUDA raises OutOfMemoryError; the CPU allocator raises a RuntimeError saying it cannot allocate; cuBLAS and
    # cuDNN, when the allocator cannot give them a workspace, report *_STATUS_ALLOC_FAILED.
    message = str(exc).lower()
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(exc, RuntimeError) and any(sign in message for sign in (
            "out of memory", "can't allocate memory", "cublas_status_alloc_failed", "cudnn_status_alloc_failed")))


@functools.cache
def _cache_kwarg() -> str:
    """transformers 5.2x renamed `past_key_values` (argument and output field) to `cache`; the old name warns
    and goes away in 5.40."""
    from transformers.modeling_outputs import BaseModelOutputWithPast

    return "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def shareable_prefix_tokens(config) -> int | None:
    """How many leading prompt tokens one key/value cache, computed once, can serve exactly to every row of a
    batch, for a model with ``config``: any number when every layer attends to all tokens, one less than the
    smallest sliding window otherwise (a sliding-window layer keeps only its last window - 1 tokens, so a longer
    prefix could not be rebuilt per row); None when the model's cache has layers of another kind."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    layers = DynamicCache(config=config).layers
    if not layers or any(type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers):
        return None
    windows = [layer.sliding_window for layer in layers if isinstance(layer, DynamicSlidingWindowLayer)]
    return min(windows) - 1 if windows else sys.maxsize


class _PrefixCache:
    """Keys/values of the shared prompt prefix, computed once in the model's own cache layout (full and
    sliding-window layers alike) and broadcast to each batch. The prefix must fit `shareable_prefix_tokens`."""

    def __init__(self, body, prefix_ids: list[int], device):
        import torch
        from transformers import DynamicCache

        self.config = body.config
        self.length = len(prefix_ids)
        cache = DynamicCache(config=self.config)
        body(input_ids=torch.tensor([prefix_ids], device=device), use_cache=True, **{_cache_kwarg(): cache})
        self.layers = [(layer.keys, layer.values) for layer in cache.layers]

    def for_batch(self, rows: int):
        from transformers import DynamicCache

        # Each layer copies the broadcast prefix into its own per-row tensors (the prefix stays intact); built from
        # the config, sliding-window layers count the prefix as seen, so their masks and positions line up.
        return DynamicCache(ddp_cache_data=[(keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1))
                                            for keys, values in self.layers], config=self.config)


def _padded(sequences: list[list[int]], pad_id: int, left: bool = True):
    """Padded ids and mask; left padding puts every row's last token in the last column."""
    import torch

    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        columns = slice(width - len(ids), width) if left else slice(0, len(ids))
        input_ids[row, columns] = torch.tensor(ids, dtype=torch.long)
        attention[row, columns] = 1
    return input_ids, attention


def _last_hidden(body, sequences: list[list[int]], pad_id: int, device, prefix: _PrefixCache | None):
    import torch

    if prefix is None:
        input_ids, attention = _padded(sequences, pad_id)
        # Left padding shifts positions; derive them from the mask so scores match unpadded runs.
        position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
        output = body(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                      position_ids=position_ids.to(device), use_cache=False)
        return output.last_hidden_state[:, -1]
    # Row layout [prefix | suffix | pads]: each suffix directly follows the prefix, as in the unshared prompt, so a
    # sliding window counts the same tokens; the pads come last, masked, and the answer position is read per row.
    input_ids, attention = _padded(sequences, pad_id, left=False)
    rows, width = input_ids.shape
    full_mask = torch.cat([torch.ones((rows, prefix.length), dtype=torch.long), attention], dim=1)
    positions = torch.arange(prefix.length, prefix.length + width, device=device)
    output = body(input_ids=input_ids.to(device), attention_mask=full_mask.to(device),
                  position_ids=positions.expand(rows, -1), **{_cache_kwarg(): prefix.for_batch(rows)},
                  cache_position=positions, use_cache=True)
    last = torch.tensor([len(ids) - 1 for ids in sequences], device=device)
    return output.last_hidden_state[torch.arange(rows, device=device), last]


def score_prompts_detailed(model, tokenizer, prompts: Sequence[str], labels: LabelTokens, mode: str = "pair",
                           batch_size: int | None = None, on_batch: Callable[[int], None] | None = None,
                           prefix_cache: str = "auto", min_prefix_tokens: int = MIN_PREFIX_TOKENS) -> ScoringResult:
    """P(yes) for each prompt, in input order, with how it was computed.

    ``batch_size`` None picks one (``auto_batch_size``); on out-of-memory the batch is halved and
    retried. ``prefix_cache``: ``auto`` uses the shared-prefix cache when the prompts share at least
    ``min_prefix_tokens`` tokens, ``on`` whenever they share any, ``off`` never.
    """
    import torch

    if mode not in SCORE_MODES:
        raise ValueError(f"unknown score mode {mode!r}")
    if prefix_cache not in PREFIX_CACHE_MODES:
        raise ValueError(f"prefix_cache must be one of {', '.join(PREFIX_CACHE_MODES)}, not {prefix_cache!r}")
    started = time.perf_counter()
    encoded = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    tokenized = time.perf_counter() - started
    scores = np.empty(len(encoded), dtype=np.float32)
    if not encoded:
        return ScoringResult(scores, mode, batch_size or 0, 0, 0, 0, 0.0)
    device = next(model.parameters()).device
    body, output_weight = split_lm_head(model)
    # The last prompt token must stay in the suffix: its hidden state is the one scored.
    shared = min(common_prefix_length(encoded), min(len(ids) for ids in encoded) - 1)
    if prefix_cache != "off":
        shareable = shareable_prefix_tokens(body.config)
        if shareable is None and prefix_cache == "on":
            raise ConfigError("this model's key/value cache cannot be shared across a batch",
                              "use --prefix-cache auto (it scores without sharing) or off")
        shared = min(shared, shareable or 0)
    use_prefix = prefix_cache == "on" and shared > 0 or prefix_cache == "auto" and shared >= min_prefix_tokens
    longest = max(len(ids) for ids in encoded)
    size = batch_size or (auto_batch_size(model, longest - shared, shared) if use_prefix
                          else auto_batch_size(model, longest))
    retries = 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            prefix = _PrefixCache(body, encoded[0][:shared], device) if use_prefix else None
            sequences = [ids[shared:] for ids in encoded] if use_prefix else encoded
            order = [index for batch in length_sorted_batches([len(ids) for ids in sequences], len(sequences))
                     for index in batch]
            done = 0
            while done < len(order):
                batch = order[done:done + size]
                try:
                    hidden = _last_hidden(body, [sequences[i] for i in batch], tokenizer.pad_token_id, device, prefix)
                    batch_scores = label_probability(hidden, output_weight, labels, mode)
                except (RuntimeError, MemoryError) as exc:
                    if not is_out_of_memory(exc):
                        raise
                    if len(batch) == 1:
                        raise ResourceError(
                            f"out of memory scoring a single prompt of {len(sequences[batch[0]])} tokens",
                            "use a quantized model (--quantization 4bit), a smaller model or shorter prompts",
                        ) from None
                    size, retries = max(1, len(batch) // 2), retries + 1
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    continue
                scores[batch] = batch_scores
                done += len(batch)
                if on_batch is not None:
                    on_batch(len(batch))
    finally:
        model.train(was_training)
    return ScoringResult(scores, mode, size, retries, shared if use_prefix else 0,
                         sum(len(ids) for ids in encoded), time.perf_counter() - started, tokenized)


def score_prompts(model, tokenizer, prompts: Sequence[str], labels: LabelTokens, mode: str = "pair",
                  batch_size: int | None = 16, on_batch: Callable[[int], None] | None = None,
                  prefix_cache: str = "auto") -> np.ndarray:
    """P(yes) for each prompt, in input order (see ``score_prompts_detailed``)."""
    return score_prompts_detailed(model, tokenizer, prompts, labels, mode, batch_size, on_batch,
                                  prefix_cache).scores


DEFAULT_TEMPLATE = "alpaca"
DEFAULT_LABEL_WORDS = ("Yes", "No")


def resolve_scoring(inference, template: str | None = None, label_words: Sequence[str] | None = None,
                    mode: str = "pair", batch_size: int | None = None, prefix_cache: str = "auto") -> ScoringSpec:
    """The scoring spec for ``inference`` (a ``models.InferenceModel``, weights loaded or not yet).

    Template and label words: explicit arguments win; otherwise what the run / export manifest recorded;
    otherwise the defaults (alpaca, Yes/No). Recorded label ids must still be what this tokenizer gives, or
    training and scoring would read different tokens.
    """
    prompt_template = load_template(template or inference.template or DEFAULT_TEMPLATE)
    recorded = inference.labels or {}
    if label_words is None:
        label_words = (recorded.get("positive_word", DEFAULT_LABEL_WORDS[0]),
                       recorded.get("negative_word", DEFAULT_LABEL_WORDS[1]))
    if len(label_words) != 2:
        raise ConfigError(f"expected two label words (positive, negative), got {list(label_words)}",
                          "pass them as --label-words Yes,No")
    labels = resolve_label_tokens(inference.tokenizer, prompt_template, label_words[0], label_words[1])
    if recorded and (recorded.get("positive_word"), recorded.get("negative_word")) == tuple(label_words):
        expected = (recorded.get("positive_id"), recorded.get("negative_id"))
        if expected != (labels.positive_id, labels.negative_id):
            raise ModelError(
                f"the run recorded label ids {expected} for {list(label_words)} but this tokenizer gives "
                f"{(labels.positive_id, labels.negative_id)}",
                "evaluate with the tokenizer the adapter was trained with (the run's base model)")
    return ScoringSpec(prompt_template, labels, mode, batch_size, prefix_cache)
