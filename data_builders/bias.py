"""The bias-only collaborative model, mu + b_user + b_item: a logistic regression on one-hot user and item
keys. Data builds use it for the ``cf_like`` context number; eval offers it as the ``bias`` reference."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def item_key(record: dict) -> str | None:
    if record.get("item_id") is not None:
        return f"id:{record['item_id']}"
    return None if record.get("target_title") is None else f"title:{record['target_title']}"


def history_key(item: dict) -> str:
    return f"id:{item['item_id']}" if item.get("item_id") is not None else f"title:{item['title']}"


def user_key(record: dict) -> str | None:
    return None if record.get("user_id") is None else str(record["user_id"])


C_BIAS = 1.0  # the bias model's inverse L2 strength (cf_like here, the `bias` reference in eval)


def bias_features(user: str | None, item: str | None) -> list[str]:
    """The bias model's features: one-hot item and user (keys as ``user_key`` / ``item_key`` make them)."""
    return [f"item={item}"] + ([f"user={user}"] if user is not None else [])


class OneHotModel:
    """A fitted logistic regression over one-hot feature names (or a constant for one-class labels)."""

    def __init__(self, vocabulary: dict[str, int], model: Any, constant: float | None):
        self.vocabulary, self.model, self.constant = vocabulary, model, constant

    @classmethod
    def fit(cls, rows: Sequence[list[str]], labels: np.ndarray, C: float, seed: int) -> OneHotModel:
        from sklearn.linear_model import LogisticRegression  # heavy: kept out of `tallrec --help`

        if np.unique(labels).size < 2:
            return cls({}, None, float(labels.mean()) if labels.size else 0.5)
        vocabulary = {name: index for index, name in enumerate(sorted({f for row in rows for f in row}))}
        model = LogisticRegression(C=C, solver="liblinear", max_iter=1000, random_state=seed)
        return cls(vocabulary, model.fit(_one_hot(rows, vocabulary), labels), None)

    def score(self, rows: Sequence[list[str]]) -> np.ndarray:
        if self.constant is not None:
            return np.full(len(rows), self.constant)
        return self.model.predict_proba(_one_hot(rows, self.vocabulary))[:, 1]


def _one_hot(rows: Sequence[list[str]], vocabulary: dict[str, int]):
    """Binary CSR matrix over ``vocabulary``; unknown features are dropped (they would carry no weight)."""
    from scipy.sparse import csr_matrix

    indices, indptr = [], [0]
    for features in rows:
        indices.extend(sorted({vocabulary[name] for name in features if name in vocabulary}))
        indptr.append(len(indices))
    data = np.ones(len(indices), dtype=np.float64)
    return csr_matrix((data, np.asarray(indices, dtype=np.int32), np.asarray(indptr, dtype=np.int32)),
                      shape=(len(rows), max(len(vocabulary), 1)))
