"""What issue 13's bar asks of a blend, measured on classical scorers whose extra signal is known: on the
many-user MovieLens splits with relevant histories and the bias model's P(like) in the prompt (the data of
recipes/smollm2-135m-lora-cf.yaml), does a second scorer blended with the full-data GBDT (the
`tallrec eval --ensemble` blend: logistic regression on the two logits, fitted on the first N validation
records) beat the GBDT alone on both AUC and per-user AUC, paired-bootstrap interval above zero?

The second scorers: the bias model and MF (better per-user AUC than the GBDT) and ``prompt-numbers`` (a
logistic regression on the numbers a record's prompt shows, fitted on the train split), also shown alone:
it is what a tuned model reads from its prompt's numbers without reading any title.

    .venv/bin/python -m experiments.blend_ceiling                 # first 1,000 records, as the LoRA cells; ~3 min
    .venv/bin/python -m experiments.blend_ceiling --limit 0       # whole validation and test splits
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

from experiments.common import print_difference_table, rows_against

SECOND_SCORERS = ("bias", "mf", "prompt-numbers")
PRESET = "many-users"
BUILD = {"history": "relevant", "history_pool": 50, "similarity": "collaborative", "template": "tallrec-movie-cf"}


def build(source: str, path: Path, output: Path) -> Path:
    from data_builders.build import build_config, build_dataset

    build_dataset(build_config(source, PRESET, {**BUILD, "path": str(path), "output": str(output)}))
    return output


def measure(folder: Path, limit: int | None) -> list[tuple[str, dict]]:
    """(primary label, comparison row of the primary and its paired difference with the GBDT) per scorer."""
    from data_builders import load_split
    from data_builders.structure import labels_of
    from tallrec_cli.eval.baselines import make_baseline
    from tallrec_cli.eval.compare import Scored
    from tallrec_cli.eval.ensemble import fit_blend

    train, valid, test = (load_split(folder, split) for split in ("train", "valid", "test"))
    valid, test = valid[:limit], test[:limit]
    fitted = {name: make_baseline(name).fit(train) for name in ("gbdt", *SECOND_SCORERS)}
    gbdt = Scored("gbdt", "GBDT", fitted["gbdt"].score(test))
    gbdt_valid, valid_labels = fitted["gbdt"].score(valid), labels_of(valid)
    primaries = []
    for name in SECOND_SCORERS:
        alone = fitted[name].score(test)
        primaries.append(Scored(name, fitted[name].label, alone))
        blend = fit_blend("gbdt", valid_labels, fitted[name].score(valid), gbdt_valid, {}, {})
        primaries.append(Scored(f"{name}+gbdt", f"{fitted[name].label} + GBDT (blend)", blend.apply(alone, gbdt.scores)))
    return rows_against(test, gbdt, primaries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--limit", type=int, default=1000, help="first N validation and test records (0: all)")
    args = parser.parse_args()

    from tallrec_cli.core.quiet import quiet_libraries

    quiet_libraries()
    sources = {"ml-100k": ("movielens-100k", "ml-100k"), "ml-latest-small": ("movielens-latest", "ml-latest-small")}
    with tempfile.TemporaryDirectory() as work:
        for name, (source, folder) in sources.items():
            dataset = build(source, Path(args.data) / folder, Path(work) / source)
            rows = measure(dataset, args.limit or None)
            records = rows[0][1]["metrics"]["records"]
            print(f"\n### {name}: first {records} test records\n")
            print_difference_table(rows, "- GBDT")


if __name__ == "__main__":
    main()
