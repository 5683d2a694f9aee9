"""Is there anything in SmolLM2-135M's reading of the titles that the full-data GBDT lacks?

The tuned model's blends with the GBDT and its training as the GBDT's residual (lab notebook part 7) add
nothing on the many-user MovieLens splits. This asks the question without any tuning: the base model's
mean-pooled hidden states of each title (the `--set similarity=text` item vectors of `tallrec data build`) give
two content scorers per record,

- title affinity: mean cosine of the target's title with the liked history titles minus the disliked ones
  (no fitting);
- content LR: a logistic regression, fitted on the train split, on target vector * (liked mean - disliked mean)
  and the target vector (a per-dimension user x title match and what the title says by itself),

each shown alone and blended with the GBDT exactly as `tallrec eval --ensemble` blends (logistic regression on
the two logits, fitted on the validation split), with paired 95% intervals against the GBDT on the whole test.
Same data as the cf recipe (relevant histories, 10 of 50).

    .venv/bin/python -m experiments.title_signal          # ~5 min on the 2-core CPU (title vectors cached after)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent

from experiments.blend_ceiling import build  # the cf recipe's data

from experiments.common import print_difference_table, rows_against

SOURCES = {"ml-100k": ("movielens-100k", "ml-100k"), "ml-latest-small": ("movielens-latest", "ml-latest-small")}
MODEL = "smollm2-135m"


class TitleVectors:
    """Unit vectors of the base model's reading of each title."""

    def __init__(self, records: list[dict]):
        from data_builders.selection import text_vectors

        titles = sorted({r["target_title"] for r in records} | {i["title"] for r in records for i in r["history"]})
        self.row = {title: index for index, title in enumerate(titles)}
        self.vectors = text_vectors(titles, MODEL).vectors

    def __call__(self, title: str) -> np.ndarray:
        return self.vectors[self.row[title]]

    def parts(self, record: dict) -> tuple[np.ndarray, np.ndarray]:
        """(target vector, liked mean - disliked mean of the history's vectors)."""
        def mean(liked: bool) -> np.ndarray:
            chosen = [self(i["title"]) for i in record["history"] if i["liked"] is liked]
            return np.mean(chosen, axis=0) if chosen else np.zeros(self.vectors.shape[1])
        return self(record["target_title"]), mean(True) - mean(False)


def affinity(vectors: TitleVectors, records: list[dict]) -> np.ndarray:
    target_and_profile = [vectors.parts(r) for r in records]
    raw = np.array([float(target @ profile) for target, profile in target_and_profile])
    return 1 / (1 + np.exp(-raw * 10))  # a monotone squash to (0, 1): blends read logits


def content_features(vectors: TitleVectors, records: list[dict]) -> np.ndarray:
    return np.array([np.concatenate([target * profile, target]) for target, profile in map(vectors.parts, records)])


def measure(folder: Path) -> list[tuple[str, dict]]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from data_builders import load_split
    from data_builders.structure import labels_of
    from tallrec_cli.eval.baselines import make_baseline
    from tallrec_cli.eval.compare import Scored
    from tallrec_cli.eval.ensemble import fit_blend

    train, valid, test = (load_split(folder, split) for split in ("train", "valid", "test"))
    vectors = TitleVectors(train + valid + test)
    gbdt = make_baseline("gbdt").fit(train)
    gbdt_valid, gbdt_test = gbdt.score(valid), gbdt.score(test)
    content = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    content.fit(content_features(vectors, train), labels_of(train))
    scorers = {"title affinity": (affinity(vectors, valid), affinity(vectors, test)),
               "content LR": tuple(content.predict_proba(content_features(vectors, split))[:, 1]
                                   for split in (valid, test))}
    scored = []
    for label, (on_valid, on_test) in scorers.items():
        blend = fit_blend("gbdt", labels_of(valid), on_valid, gbdt_valid, {}, {})
        scored += [Scored(label, label, on_test),
                   Scored(f"{label}+gbdt", f"{label} + GBDT (blend)", blend.apply(on_test, gbdt_test))]
    return rows_against(test, Scored("gbdt", "GBDT", gbdt_test), scored)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    args = parser.parse_args()

    from tallrec_cli.core.quiet import quiet_libraries

    quiet_libraries()
    with tempfile.TemporaryDirectory() as work:
        for name, (source, folder) in SOURCES.items():
            rows = measure(build(source, Path(args.data) / folder, Path(work) / source))
            print(f"\n### {name}: whole test ({rows[0][1]['metrics']['records']} records)\n")
            print_difference_table(rows, "- GBDT")


if __name__ == "__main__":
    main()
