"""Classic baselines fitted on exactly the few-shot records an LLM cell trains on.

TALLRec compares against sequential recommenders that stay near AUC 0.5 with 16-256 samples; these
two cheap baselines give a sweep the same kind of reference row, computed on identical records.

Item keys. Metadata records (``tallrec data build``) carry ``user_id``, ``item_id`` and
``history_item_ids``, but the liked / disliked split of the history exists only in the prompt text.
So both baselines also parse the prompt: the quoted titles on the "User Preference:" and
"User Unpreference:" lines and the target after "the target <movie|book|item>". A title key is the
text with double quotes removed, which makes the TALLRec movie (``"Title"``) and book
(``"Title" written by Author``, target wrapped in one more pair of quotes) forms match between
history and target. Records imported from TALLRec JSON have no metadata: they are described by
these parsed titles alone (the ``features`` field of the result says which features were used).

- Popularity: smoothed positive rate of the target item,
  ``(positives + smoothing * global_rate) / (occurrences + smoothing)``. Evidence per item: its
  labelled occurrences as a training target, plus its mentions in training histories (a liked
  mention counts as a positive, a disliked one as a negative). With 16 records almost no test
  target appears as a training target, so the history mentions carry most of the signal. Items
  are keyed by parsed title, else by ``item_id``; unseen items get the global rate.
- LogReg: scikit-learn logistic regression (C=1) on one-hot features: ``user=<id>``,
  ``item=<id>``, ``hist=<id>`` per history item (metadata), ``liked=<title>`` /
  ``disliked=<title>`` / ``target=<title>`` and the target title's lower-cased words (parsed text).
  The vocabulary is the features seen in the training sample: a feature met only at test time would
  get no weight anyway, and exact one-hot columns avoid hashing collisions.
  A single-class training sample cannot fit a classifier: every test record then gets the
  training positive rate (AUC 0.5) and ``note`` says so.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from tallrec_cli.metrics import safe_auc

BASELINE_NAMES = ("Popularity", "LogReg")
_PREFERENCE = re.compile(r"^\s*User Preference:(.*)$", re.M)
_UNPREFERENCE = re.compile(r"^\s*User Unpreference:(.*)$", re.M)
_TARGET = re.compile(r"the target \w+ (.+?)\?\s*$", re.S)
_ITEM_SPLIT = re.compile(r',\s*(?=")')  # items start with a quote; titles with ', "' inside are rare
_WORD = re.compile(r"[a-z0-9]+")


def _title_key(text: str) -> str:
    return " ".join(text.replace('"', "").split())


def _titles(line_match: re.Match | None) -> list[str]:
    if line_match is None:
        return []
    return [key for key in (_title_key(part) for part in _ITEM_SPLIT.split(line_match.group(1))) if key]


def parse_prompt_items(record: dict) -> dict[str, Any]:
    """Liked / disliked history titles and the target title from a TALLRec-style input text."""
    text = record.get("input", "") or ""
    target = _TARGET.search(text.splitlines()[-1] if text.strip() else "")
    return {
        "liked": _titles(_PREFERENCE.search(text)),
        "disliked": _titles(_UNPREFERENCE.search(text)),
        "target": _title_key(target.group(1)) if target else None,
    }


def _target_key(record: dict, parsed: dict) -> str | None:
    if parsed["target"]:
        return "title:" + parsed["target"]
    return None if record.get("item_id") is None else f"id:{record['item_id']}"


def popularity_scores(train_records: Sequence[dict], test_records: Sequence[dict],
                      smoothing: float = 1.0) -> np.ndarray:
    """Smoothed positive rate of each test record's target item (see the module doc for the evidence)."""
    positives: dict[str, float] = defaultdict(float)
    occurrences: dict[str, float] = defaultdict(float)
    for record in train_records:
        parsed = parse_prompt_items(record)
        key = _target_key(record, parsed)
        if key is not None:
            positives[key] += int(record["label"])
            occurrences[key] += 1
        for title in parsed["liked"]:
            positives["title:" + title] += 1
            occurrences["title:" + title] += 1
        for title in parsed["disliked"]:
            occurrences["title:" + title] += 1
    total = sum(occurrences.values())
    if total:
        global_rate = sum(positives.values()) / total
    else:
        global_rate = float(np.mean([int(r["label"]) for r in train_records])) if train_records else 0.5
    scores = np.empty(len(test_records), dtype=np.float64)
    for index, record in enumerate(test_records):
        key = _target_key(record, parse_prompt_items(record))
        count = occurrences.get(key, 0.0)
        scores[index] = (positives.get(key, 0.0) + smoothing * global_rate) / (count + smoothing)
    return scores


def record_features(record: dict) -> tuple[list[str], set[str]]:
    """Feature strings of one record, and the feature families that were available."""
    features: list[str] = []
    families: set[str] = set()
    if record.get("user_id") is not None:
        features.append(f"user={record['user_id']}")
        families.add("user_id")
    if record.get("item_id") is not None:
        features.append(f"item={record['item_id']}")
        families.add("item_id")
    history_ids = record.get("history_item_ids") or []
    if history_ids:
        features.extend(f"hist={item}" for item in history_ids)
        families.add("history_item_ids")
    parsed = parse_prompt_items(record)
    if parsed["liked"] or parsed["disliked"]:
        features.extend(f"liked={title}" for title in parsed["liked"])
        features.extend(f"disliked={title}" for title in parsed["disliked"])
        families.add("history titles (text)")
    if parsed["target"]:
        features.append(f"target={parsed['target']}")
        features.extend(f"word={word}" for word in set(_WORD.findall(parsed["target"].lower())))
        families.add("target title (text)")
    return features, families


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


def logistic_regression_scores(train_records: Sequence[dict], test_records: Sequence[dict],
                               seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """P(like) from a logistic regression on one-hot user / item / history features, and what it used."""
    from sklearn.linear_model import LogisticRegression

    train_features = [record_features(record) for record in train_records]
    families = sorted(set().union(*(found for _, found in train_features)))
    labels = np.array([int(record["label"]) for record in train_records])
    info: dict[str, Any] = {"features": families}
    if np.unique(labels).size < 2:
        rate = float(labels.mean()) if labels.size else 0.5
        info["note"] = "single-class training sample: constant score"
        return np.full(len(test_records), rate), info
    vocabulary = {name: index for index, name in enumerate(sorted({f for features, _ in train_features for f in features}))}
    model = LogisticRegression(C=1.0, solver="liblinear", max_iter=1000, random_state=seed)
    model.fit(_one_hot([features for features, _ in train_features], vocabulary), labels)
    test_matrix = _one_hot([record_features(record)[0] for record in test_records], vocabulary)
    return model.predict_proba(test_matrix)[:, 1], info


def evaluate_baselines(train_records: Sequence[dict], test_records: Sequence[dict],
                       seed: int = 0) -> dict[str, dict[str, Any]]:
    """AUC of every baseline on ``test_records`` after fitting on ``train_records``."""
    labels = [int(record["label"]) for record in test_records]
    base = {"n": len(labels), "positives": int(sum(labels))}
    popularity = popularity_scores(train_records, test_records)
    logreg, info = logistic_regression_scores(train_records, test_records, seed)
    return {
        "Popularity": {**base, "auc": safe_auc(labels, popularity)},
        "LogReg": {**base, "auc": safe_auc(labels, logreg), **info},
    }
