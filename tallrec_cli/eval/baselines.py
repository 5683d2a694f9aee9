"""Reference scorers a tuned model must beat, behind one interface: ``fit(train records)``, then
``score(records)`` -> P(like) per record. They read the structure records carry (``history``,
``target_title``, ``user_id``, ``item_id``), never the prompt text.

- ``history-share``: the share of liked items in the record's own history, (liked + 1) / (n + 2). No
  training. On TALLRec's movie test it beats TALLRec-7B's published 256-shot AUC.
- ``popularity``: smoothed like-rate of the target item, counting its labelled occurrences as a
  training target and its mentions in training histories.
- ``logreg``: logistic regression on one-hot user / item / liked-history / disliked-history / target
  (and target-title word) features; the few-shot reference TALLRec used.
- ``bias``: mu + b_user + b_item, a logistic regression on one-hot user and item (L2): the classic
  bias-only collaborative model, hard to beat on MovieLens.
- ``gbdt``: scikit-learn's ``HistGradientBoostingClassifier`` on user and item like-rates and counts
  (ordered statistics inside training: a training row sees only earlier rows), history share, the
  like-share of the three most recent history items, the mean like-rate of the history's items, and
  the target's age in days since its first training rating.
- ``mf``: logistic matrix factorisation (biases + 32 factors, torch, AdamW) of the training split's
  user x item like matrix.
- ``prompt-numbers``: logistic regression on what a record's prompt says in numbers: the like share of
  the history it lists and its ``context`` fields (the collaborative filter's ``cf_like``, the item's and the user's
  like counts). It asks whether a tuned model reads anything its prompt's numbers do not already say.

Items are keyed by ``item_id``, else by title (TALLRec's imported JSON has titles only); users by
``user_id``. Users and items absent from training are cold: their statistics fall back to the
training prior, and ``info()`` counts them.

Fitted ``with_histories`` (a sweep's equal-data references), a learned model reads a few-shot sample the
way a prompt does: its records and every rating their histories list (``sample_interactions``), nothing
from outside the sample.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from data_builders.bias import C_BIAS, OneHotModel, bias_features, history_key, item_key, user_key
from data_builders.structure import labels_of, users_of
from tallrec_cli.core.errors import ConfigError, DataError
from tallrec_cli.core.metrics import compute_metrics, logit, safe_auc

PRIOR_WEIGHT = 5.0  # pseudo-ratings at the training mean that shrink small user/item counts
RECENT = 3  # history items that count as "recent"


def require_structure(records: Sequence[dict], what: str) -> None:
    missing = sum(record.get("history") is None or record.get("target_title") is None for record in records)
    if missing:
        raise DataError(f"{what}: {missing} of {len(records)} records carry no history structure",
                        "build them with `tallrec data build` or `tallrec data import` (which store history, "
                        "target_title and template beside the prompt)")


class Baseline:
    """A reference scorer. ``needs_train``: ``fit`` needs labelled training records; ``reads_histories``:
    ``fit`` already learns from the ratings training histories list."""

    name: ClassVar[str]
    label: ClassVar[str]
    needs_train: ClassVar[bool] = True
    reads_histories: ClassVar[bool] = False

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.notes: list[str] = []
        self.cold: dict[str, int] = {}
        self.train_size = 0

    def fit(self, train: Sequence[dict]) -> Baseline:
        require_structure(train, f"{self.name} training records")
        self.train_size = len(train)
        self._fit(list(train))
        return self

    def score(self, records: Sequence[dict]) -> np.ndarray:
        require_structure(records, f"{self.name} scoring")
        return np.asarray(self._score(list(records)), dtype=np.float64)

    def info(self) -> dict[str, Any]:
        return {"baseline": self.name, "label": self.label, "train_records": self.train_size,
                "cold": self.cold, "notes": self.notes}

    def _fit(self, train: list[dict]) -> None:
        pass

    def _score(self, records: list[dict]) -> np.ndarray:
        raise NotImplementedError


class HistoryShare(Baseline):
    name, label, needs_train = "history-share", "History share", False

    def _score(self, records: list[dict]) -> np.ndarray:
        return np.array([history_share(record["history"]) for record in records])


def history_share(items: Sequence[dict]) -> float:
    liked = sum(bool(item["liked"]) for item in items)
    return (liked + 1) / (len(items) + 2)


class RateTable:
    """Like counts per key from training. Training rows read *ordered* statistics (only rows before
    them in time, CatBoost's ordered target statistics): leave-one-out rates are anti-correlated with a
    row's own label, which a tree model learns and then loses on every test set."""

    def __init__(self, keys: Sequence[str | None], labels: np.ndarray, prior: float):
        self.positives: dict[str, float] = defaultdict(float)
        self.counts: dict[str, float] = defaultdict(float)
        for key, label in zip(keys, labels.tolist()):
            if key is not None:
                self.positives[key] += label
                self.counts[key] += 1
        self.prior = prior

    def _smooth(self, positives: np.ndarray, counts: np.ndarray) -> np.ndarray:
        return (positives + PRIOR_WEIGHT * self.prior) / (counts + PRIOR_WEIGHT)

    def read(self, keys: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """Smoothed like-rate and count per key over all of training (for records scored later)."""
        positives = np.array([self.positives.get(key, 0.0) if key is not None else 0.0 for key in keys])
        counts = np.array([self.counts.get(key, 0.0) if key is not None else 0.0 for key in keys])
        return self._smooth(positives, counts), counts

    def ordered(self, keys: Sequence[str | None], labels: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rate and count per training row from the rows before it in ``order``."""
        positives, counts = np.zeros(len(keys)), np.zeros(len(keys))
        seen_positives: dict[str, float] = defaultdict(float)
        seen: dict[str, float] = defaultdict(float)
        for row in order.tolist():
            key = keys[row]
            if key is None:
                continue
            positives[row], counts[row] = seen_positives[key], seen[key]
            seen_positives[key] += labels[row]
            seen[key] += 1
        return self._smooth(positives, counts), counts

    def known(self, key: str | None) -> bool:
        return key is not None and key in self.counts


def _cold_counts(records: Sequence[dict], users: RateTable | None, items: RateTable) -> dict[str, int]:
    cold = {"records": len(records),
            "cold_items": len({item_key(r) for r in records if not items.known(item_key(r))}),
            "records_with_cold_item": sum(not items.known(item_key(r)) for r in records)}
    if users is not None:
        cold.update(cold_users=len({user_key(r) for r in records if not users.known(user_key(r))}),
                    records_with_cold_user=sum(not users.known(user_key(r)) for r in records))
    return cold


class Popularity(Baseline):
    name, label, reads_histories = "popularity", "Popularity", True

    def _fit(self, train: list[dict]) -> None:
        keys, labels = [], []
        for record in train:
            keys.append(item_key(record))
            labels.append(int(record["label"]))
            for item in record["history"]:
                keys.append(history_key(item))
                labels.append(int(item["liked"]))
        labels = np.asarray(labels, dtype=np.float64)
        self.items = RateTable(keys, labels, float(labels.mean()) if labels.size else 0.5)

    def _score(self, records: list[dict]) -> np.ndarray:
        self.cold = _cold_counts(records, None, self.items)
        return self.items.read([item_key(record) for record in records])[0]


class OneHotLogistic(Baseline):
    """Logistic regression over the one-hot features ``_features`` names; a single-class training set
    gets its positive rate for every record (noted)."""

    C: ClassVar[float] = 1.0

    def _features(self, record: dict) -> list[str]:
        raise NotImplementedError

    def _fit(self, train: list[dict]) -> None:
        self.model = OneHotModel.fit([self._features(record) for record in train], labels_of(train), self.C, self.seed)
        if self.model.constant is not None:
            self.notes.append("single-class training sample: constant score")

    def _score(self, records: list[dict]) -> np.ndarray:
        return self.model.score([self._features(record) for record in records])


class LogReg(OneHotLogistic):
    name, label = "logreg", "LogReg"

    def _features(self, record: dict) -> list[str]:
        features = [f"target={item_key(record)}"]
        features.extend(f"word={word}" for word in set(str(record["target_title"]).lower().split()))
        if record.get("user_id") is not None:
            features.append(f"user={record['user_id']}")
        features.extend(("liked=" if item["liked"] else "disliked=") + history_key(item) for item in record["history"])
        return features


class Bias(OneHotLogistic):
    name, label = "bias", "Bias (user+item)"
    C = C_BIAS

    def _features(self, record: dict) -> list[str]:
        return bias_features(user_key(record), item_key(record))


GBDT_FEATURES = ("user_rate", "user_count", "item_rate", "item_count", "history_share", "history_len",
                 "recent_share", "history_item_rate", "item_age_days")


class GradientBoosting(Baseline):
    name, label = "gbdt", "GBDT"

    def _fit(self, train: list[dict]) -> None:
        from sklearn.ensemble import HistGradientBoostingClassifier

        labels = labels_of(train).astype(np.float64)
        prior = float(labels.mean()) if labels.size else 0.5
        self.users = RateTable([user_key(r) for r in train], labels, prior)
        self.items = RateTable([item_key(r) for r in train], labels, prior)
        self.first_seen: dict[str, int] = {}
        for record in train:
            if record.get("timestamp") is not None:
                key = item_key(record)
                self.first_seen[key] = min(self.first_seen.get(key, record["timestamp"]), record["timestamp"])
        self.constant = prior if np.unique(labels).size < 2 else None
        if self.constant is not None:  # a few-shot sample may hold one class: nothing to split on
            self.notes.append("single-class training sample: constant score")
            return
        self.model = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, random_state=self.seed)
        # time order where records have times (stable: record order breaks ties and stands in without them)
        order = np.argsort([r.get("timestamp") or 0 for r in train], kind="stable")
        matrix = self.features(train, (labels, order))
        # a feature the source cannot give (no timestamps: no item age) is all missing: left out
        self.usable = ~np.all(np.isnan(matrix), axis=0)
        self.notes.append("features: " + ", ".join(np.asarray(GBDT_FEATURES)[self.usable]))
        self.model.fit(matrix[:, self.usable], labels.astype(np.int64))

    def features(self, records: Sequence[dict], training: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """One row of GBDT_FEATURES per record, from training statistics only. ``training`` (labels, time
        order) marks the training rows themselves: their user/item rates are ordered statistics."""
        users, items = [user_key(r) for r in records], [item_key(r) for r in records]
        if training is None:
            (user_rate, user_count), (item_rate, item_count) = self.users.read(users), self.items.read(items)
        else:
            (user_rate, user_count), (item_rate, item_count) = (self.users.ordered(users, *training),
                                                                self.items.ordered(items, *training))
        rows = []
        for record in records:
            history = record["history"]
            recent = history[-RECENT:]
            seen = self.first_seen.get(item_key(record))
            stamp = record.get("timestamp")
            rows.append([
                history_share(history), len(history),
                (sum(i["liked"] for i in recent) + 1) / (len(recent) + 2),
                float(np.mean(self.items.read([history_key(i) for i in history])[0])) if history else np.nan,
                (stamp - seen) / 86400 if seen is not None and stamp is not None else np.nan,
            ])
        return np.column_stack([user_rate, user_count, item_rate, item_count, np.asarray(rows, dtype=np.float64)])

    def _score(self, records: list[dict]) -> np.ndarray:
        self.cold = _cold_counts(records, self.users, self.items)
        if self.constant is not None:
            return np.full(len(records), self.constant)
        return self.model.predict_proba(self.features(records)[:, self.usable])[:, 1]


class PromptNumbers(Baseline):
    """Standardised logistic regression on the prompt's numbers, on the logit scale where they are
    rates. Training records carry only honest numbers (ordered counts, cross-fitted ``cf_like``:
    data_builders.context), so fitting on them reads no record's own label."""

    name, label = "prompt-numbers", "Prompt numbers"

    def _fit(self, train: list[dict]) -> None:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.fields = context_fields(train[0]) if train else ()
        labels = labels_of(train)
        self.prior = float(labels.mean()) if labels.size else 0.5
        self.notes.append("features: history like share" + "".join(f", {field}" for field in self.fields))
        if labels.size == 0 or labels.min() == labels.max():
            self.constant = float(labels[0]) if labels.size else 0.5
            self.notes.append("single-class training sample: constant score")
            return
        self.constant = None
        self.model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
        self.model.fit(self.features(train, "training"), labels)

    def features(self, records: Sequence[dict], what: str) -> np.ndarray:
        missing = sum(context_fields(record) != self.fields for record in records)
        if missing:
            raise DataError(f"prompt-numbers: {missing} {what} records carry other context fields than the "
                            f"training records ({', '.join(self.fields) or 'none'})",
                            "score records built with the same template as the training records")
        columns = [logit([history_share(record["history"]) for record in records])]
        contexts = [record.get("context") or {} for record in records]
        def field(name: str) -> np.ndarray:
            return np.array([context[name] for context in contexts], dtype=np.float64)

        if "cf_like" in self.fields:
            columns.append(logit(field("cf_like") / 100))
        for side in ("item", "user"):
            # a template may print any of the counts: a rate needs both, a lone count enters as log(1 + n)
            likes, ratings = f"{side}_likes" in self.fields, f"{side}_ratings" in self.fields
            if likes and ratings:
                columns.append(logit((field(f"{side}_likes") + PRIOR_WEIGHT * self.prior)
                                     / (field(f"{side}_ratings") + PRIOR_WEIGHT)))
            columns += [np.log1p(field(name)) for name, present in
                        ((f"{side}_ratings", ratings), (f"{side}_likes", likes and not ratings)) if present]
        return np.column_stack(columns)

    def _score(self, records: list[dict]) -> np.ndarray:
        features = self.features(records, "scored")
        if self.constant is not None:
            return np.full(len(records), self.constant)
        return self.model.predict_proba(features)[:, 1]


def context_fields(record: dict) -> tuple[str, ...]:
    """The context fields a record's prompt prints, sorted."""
    return tuple(sorted(record.get("context") or {}))


class MatrixFactorization(Baseline):
    name, label = "mf", "MF"
    factors, epochs, weight_decay = 32, 60, 0.05

    def _fit(self, train: list[dict]) -> None:
        import torch

        self.user_index = {key: i for i, key in enumerate(dict.fromkeys(user_key(r) for r in train)) if key is not None}
        self.item_index = {key: i for i, key in enumerate(dict.fromkeys(item_key(r) for r in train))}
        users, items = self._indices(train)
        labels = torch.tensor(labels_of(train), dtype=torch.float32)
        generator = torch.Generator().manual_seed(self.seed)
        # one extra zero row for cold users/items: never in a training batch, so it stays zero
        self.user_factors = torch.nn.Parameter(
            torch.cat([torch.randn(len(self.user_index), self.factors, generator=generator) * 0.01,
                       torch.zeros(1, self.factors)]))
        self.item_factors = torch.nn.Parameter(
            torch.cat([torch.randn(len(self.item_index), self.factors, generator=generator) * 0.01,
                       torch.zeros(1, self.factors)]))
        self.user_bias = torch.nn.Parameter(torch.zeros(len(self.user_index) + 1))
        self.item_bias = torch.nn.Parameter(torch.zeros(len(self.item_index) + 1))
        rate = float(labels.mean()) if len(labels) else 0.5
        self.global_bias = torch.nn.Parameter(torch.tensor(float(np.log(rate / (1 - rate))) if 0 < rate < 1 else 0.0))
        parameters = [self.user_factors, self.item_factors, self.user_bias, self.item_bias, self.global_bias]
        optimizer = torch.optim.AdamW(parameters, lr=0.05, weight_decay=0.0)
        for _ in range(self.epochs):
            optimizer.zero_grad()
            logits = self._logits(users, items)
            # L2 on the rows in use only, scaled per rating like the usual MF objective
            penalty = (self.user_factors[users].pow(2).sum(1) + self.item_factors[items].pow(2).sum(1)).mean()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels) + self.weight_decay * penalty
            loss.backward()
            optimizer.step()

    def _indices(self, records: Sequence[dict]):
        import torch

        users = [self.user_index.get(user_key(r), len(self.user_index)) for r in records]
        items = [self.item_index.get(item_key(r), len(self.item_index)) for r in records]
        return torch.tensor(users), torch.tensor(items)

    def _logits(self, users, items):
        return (self.global_bias + self.user_bias[users] + self.item_bias[items]
                + (self.user_factors[users] * self.item_factors[items]).sum(1))

    def _score(self, records: list[dict]) -> np.ndarray:
        import torch

        self.cold = {"records": len(records),
                     "records_with_cold_user": sum(user_key(r) not in self.user_index for r in records),
                     "records_with_cold_item": sum(item_key(r) not in self.item_index for r in records)}
        with torch.no_grad():
            return torch.sigmoid(self._logits(*self._indices(records))).numpy()


BASELINES: dict[str, type[Baseline]] = {cls.name: cls for cls in (
    HistoryShare, Popularity, LogReg, Bias, GradientBoosting, MatrixFactorization, PromptNumbers)}
# fitted on each sweep cell's records and their histories (with_histories), scored beside the tuned model
EQUAL_DATA_REFERENCES = ("popularity", "logreg", "bias", "gbdt", "mf")
FULL_DATA_REFERENCES = ("history-share", "bias", "gbdt", "mf")  # fitted on the whole training split, beside every sweep


def full_data_references(train: Sequence[dict], test: Sequence[dict]) -> tuple[str, ...]:
    """The references a sweep shows: FULL_DATA_REFERENCES, and prompt-numbers where training and test
    prompts print the same context numbers (without any it ranks exactly as the history-share rule)."""
    fields = context_fields(train[0]) if train else ()
    same = bool(test) and context_fields(test[0]) == fields
    return FULL_DATA_REFERENCES + ((PromptNumbers.name,) if fields and same else ())


def make_baseline(name: str, seed: int = 0) -> Baseline:
    if name not in BASELINES:
        raise ConfigError(f"unknown baseline {name!r}", f"use one of {', '.join(BASELINES)}")
    return BASELINES[name](seed)


def check_baseline_names(names: Sequence[str], has_train: bool) -> list[str]:
    """Problems with the requested baselines before any work (unknown names, training data missing)."""
    problems = [f"unknown baseline {name!r} (use {', '.join(BASELINES)})" for name in names if name not in BASELINES]
    needing = [name for name in names if name in BASELINES and BASELINES[name].needs_train]
    if needing and not has_train:
        problems.append(f"{', '.join(needing)} need{'s' if len(needing) == 1 else ''} training records: pass --train "
                        "DATASET (a dataset folder or records file; its train split is used)")
    return problems


def sample_interactions(records: Sequence[dict]) -> list[dict]:
    """What a few-shot sample says about its users and items, as records: every rating the records'
    histories list (label = liked, history = the items listed before it; no timestamp), then the records
    themselves, so ordered statistics read a history before its record. Each (user, item) once: a rating
    that is also a record of the sample stays that record. Without a ``user_id`` a record's history ratings
    stay its own (they cannot be tied to other records of the same user)."""
    rows = []
    seen = {(user_key(record), item_key(record)) for record in records if user_key(record) is not None}
    for index, record in enumerate(records):
        owner = user_key(record)
        for position, item in enumerate(record["history"]):
            key = (owner if owner is not None else f"record {index}", history_key(item))
            if key in seen:
                continue
            seen.add(key)
            rows.append({"id": f"{record.get('id', index)}#history{position}", "user_id": record.get("user_id"),
                         "item_id": item.get("item_id"), "target_title": item["title"], "label": int(item["liked"]),
                         "history": record["history"][:position]})
    return rows + list(records)


def fit_and_score(name: str, train: Sequence[dict] | None, records: Sequence[dict], seed: int = 0,
                  with_histories: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """``name`` fitted on ``train`` (``with_histories``: on ``sample_interactions(train)``, unless the
    baseline reads histories itself) and scored on ``records``: (P(like) per record, info)."""
    baseline = make_baseline(name, seed)
    if baseline.needs_train:
        if not train:
            raise ConfigError(f"baseline {name} needs training records", "pass --train DATASET")
        require_structure(train, f"{name} training records")
        expand = with_histories and not baseline.reads_histories
        baseline.fit(sample_interactions(train) if expand else train)
        if expand:
            baseline.notes.append(f"fitted on {len(train)} records and their histories: {baseline.train_size} ratings")
    return baseline.score(records), baseline.info()


def score_and_evaluate(train_records: Sequence[dict], test_records: Sequence[dict], seed: int = 0,
                       names: Sequence[str] = EQUAL_DATA_REFERENCES,
                       with_histories: bool = False) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    """Each baseline's scores on ``test_records`` and its AUC / GAUC (no intervals), by label."""
    labels, users = labels_of(test_records), users_of(test_records)
    results = {}
    for name in names:
        scores, info = fit_and_score(name, train_records, test_records, seed, with_histories)
        metrics = compute_metrics(labels, scores, users, resamples=0)
        results[BASELINES[name].label] = (scores, {"n": len(labels), "positives": int(labels.sum()),
                                                   "auc": safe_auc(labels, scores), "gauc": metrics["gauc"], **info})
    return results


def evaluate_baselines(train_records: Sequence[dict], test_records: Sequence[dict], seed: int = 0,
                       names: Sequence[str] = EQUAL_DATA_REFERENCES, with_histories: bool = False) -> dict[str, dict[str, Any]]:
    """AUC and GAUC of each baseline on ``test_records`` after fitting on ``train_records``, by label."""
    return {label: metrics for label, (_, metrics) in
            score_and_evaluate(train_records, test_records, seed, names, with_histories).items()}
