"""History selection: the K history items most relevant to the target instead of the K most recent.

ReLLa (WWW'24) picks, from a user's last N interactions before the target, the K most similar to the
target item, kept in time order, and trains on both the recent and the relevant view of each sample
(``mixed``). Similarity is the cosine of item vectors of one of two kinds:

- ``collaborative``: factors of the item x user matrix of the *training split's* records only (+1 liked,
  -1 disliked, rows normalised; truncated SVD, i.e. co-occurrence compressed to a few dimensions), so
  no validation or test interaction shapes any history. Training records are cross-fitted: each gets
  the vectors of the matrix without its fold (``Examples.training_folds``), as a test record's target is
  not in the matrix either. Vectors holding a record's own rating pick the items the user rated the way they rated the
  target, and the history's like-share then leaks the label (it did: the history-share rule scored AUC
  0.89 on such training records and 0.80 on test);
- ``text``: the base model's mean-pooled last hidden states of each item's title, computed once per model
  and item list and cached under $TALLREC_HOME/embeddings keyed by their hash.

Items without a vector (cold in the training split) score 0; ties go to the more recent item.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_builders.records import Examples
from data_builders.structure import history, render_input, structure_fields
from data_builders.templates import Template
from tallrec_cli.core.files import atomic_path, tallrec_home
from tallrec_cli.model.loading import load_model, load_tokenizer, model_identity, resolve_model_source

STRATEGIES = ("recent", "relevant", "mixed")
SIMILARITIES = ("collaborative", "text")
COLLABORATIVE_DIMENSIONS = 32
RELEVANT_SUFFIX = "~relevant"  # id of the second (relevant) view of a mixed training record


@dataclass
class ItemVectors:
    """Unit-length vectors per item code (zero rows: no vector). Cross-fitted vectors also hold, per
    training record (in split order), its fold and, per fold, the vectors fitted without it."""
    vectors: np.ndarray
    source: str
    fold_of_training_record: np.ndarray | None = None
    fold_vectors: tuple[np.ndarray, ...] = ()

    def similarities(self, items: Sequence[int], target: int, training_record: int | None = None) -> np.ndarray:
        """Cosines of ``items`` with ``target``; ``training_record`` (its position in the training split)
        selects the vectors fitted without that record's fold."""
        vectors = self.vectors
        if training_record is not None and self.fold_of_training_record is not None:
            vectors = self.fold_vectors[self.fold_of_training_record[training_record]]
        return vectors[list(items)] @ vectors[target]


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)


def collaborative_vectors(examples: Examples, dimensions: int = COLLABORATIVE_DIMENSIONS) -> ItemVectors:
    """Item factors from the training split's records (their targets: who rated what, liked or not)."""
    from scipy.sparse import csr_matrix
    from sklearn.decomposition import TruncatedSVD
    from sklearn.preprocessing import normalize

    interactions = examples.interactions
    train = examples.target[examples.split == 0]
    rows = examples.order[train]
    items, users = interactions.item_code[rows], interactions.user_code[rows]
    signs = np.where(examples.liked[train], 1.0, -1.0)  # co-liked and co-disliked items point the same way
    shape = (len(interactions.item_ids), len(interactions.user_ids))
    rank = max(1, min(dimensions, min(shape) - 1))

    def factors(kept: np.ndarray) -> np.ndarray:
        incidence = normalize(csr_matrix((signs[kept], (items[kept], users[kept])), shape=shape))
        return _unit_rows(TruncatedSVD(rank, random_state=0).fit_transform(incidence))

    fold_of = examples.training_folds(seed=0)
    every = np.ones(len(train), dtype=bool)
    return ItemVectors(factors(every), f"collaborative: truncated SVD ({rank} factors) of the training split's "
                                       f"item x user matrix ({len(rows)} ratings; training records cross-fitted, "
                                       f"{int(fold_of.max()) + 1} folds)",
                       fold_of, tuple(factors(fold_of != fold) for fold in range(int(fold_of.max()) + 1)))


def _embedding_cache(model: str, titles: Sequence[str]) -> Path:

    digest = hashlib.sha256(json.dumps([model, list(titles)]).encode()).hexdigest()[:24]
    return tallrec_home() / "embeddings" / f"{digest}.safetensors"


def text_vectors(titles: Sequence[str], model: str, batch_size: int = 64,
                 on_progress: Callable[[int, int], None] | None = None) -> ItemVectors:
    """Mean-pooled last hidden states of ``model`` over each title (cached by model and titles)."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers.utils import logging as hf_logging

    source = resolve_model_source(model)
    cache = _embedding_cache(json.dumps(model_identity(source), sort_keys=True), titles)
    if cache.is_file():
        return ItemVectors(_unit_rows(load_file(cache)["vectors"].numpy()), f"text: {model} mean-pooled hidden "
                           f"states (cached {cache.name})")
    hf_logging.disable_progress_bar()  # the build shows its own progress
    tokenizer = load_tokenizer(source, False, padding_side="right")
    network = load_model(source, "float32", "none", False, "cpu")
    body = network.get_decoder() if hasattr(network, "get_decoder") else network.model
    pooled = []
    with torch.inference_mode():
        for start in range(0, len(titles), batch_size):
            batch = tokenizer(list(titles[start:start + batch_size]), return_tensors="pt", padding=True,
                              add_special_tokens=False)
            hidden = body(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1))
            if on_progress:
                on_progress(min(start + batch_size, len(titles)), len(titles))
    vectors = torch.cat(pooled).float()
    vectors = vectors - vectors.mean(0)  # hidden states share a large common direction: cosine needs it gone
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache) as tmp:
        save_file({"vectors": vectors.contiguous()}, str(tmp))
    return ItemVectors(_unit_rows(vectors.numpy()), f"text: {model} mean-pooled hidden states")


def relevant_positions(similarities: np.ndarray, keep: int) -> list[int]:
    """Positions (into the history, oldest first) of the ``keep`` most similar items, in time order;
    ties go to the more recent item."""
    count = len(similarities)
    if count <= keep:
        return list(range(count))
    order = np.lexsort((-np.arange(count), -similarities))  # by similarity, then recency
    return sorted(order[:keep].tolist())


class HistorySelector:
    """Re-cuts the (N-item) histories the renderer wrote down to K items per record, re-rendering inputs."""

    def __init__(self, strategy: str, keep: int, vectors: ItemVectors | None, item_ids: Sequence[str],
                 template: Template):
        self.strategy, self.keep, self.vectors, self.template = strategy, keep, vectors, template
        self.item_code = {item: code for code, item in enumerate(item_ids)}

    def _view(self, record: dict, positions: list[int], suffix: str = "") -> dict:
        items = history(record) or []
        chosen = [items[position] for position in positions]
        fields = structure_fields(chosen, record["target_title"], record["template"], record["variant"])
        return {**record, **fields, "id": record["id"] + suffix,
                "input": render_input(self.template, int(record["variant"] or 0), chosen, record["target_title"],
                                      record.get("context"))}

    def _relevant(self, record: dict, training_record: int | None) -> list[int]:
        codes = [self.item_code[item["item_id"]] for item in record["history"]]
        similarities = self.vectors.similarities(codes, self.item_code[record["item_id"]], training_record)
        return relevant_positions(similarities, self.keep)

    def records(self, records: Iterator[dict], training: bool) -> Iterator[dict]:
        """``records`` of one split in split order (training: the order of ``examples.split == 0``)."""
        for position, record in enumerate(records):
            count = len(record["history"])
            recent = list(range(max(0, count - self.keep), count))
            training_record = position if training else None
            if self.strategy == "recent":
                yield self._view(record, recent)
            elif self.strategy == "relevant" or not training:
                yield self._view(record, self._relevant(record, training_record))
            else:  # mixed: both views of every training record
                yield self._view(record, recent)
                yield self._view(record, self._relevant(record, training_record), RELEVANT_SUFFIX)
