"""The reference table: every baseline (and optionally the zero-shot and a tuned model) on TALLRec's movie
and book tests and on many-user splits, AUC and GAUC with 95% intervals, all on the same records.

Baselines that learn are fitted on each dataset's train split (TALLRec's book release has no train split:
its valid file stands in). Models are scored through `tallrec_cli.eval.score` on the first ``--model-limit``
records of each test (whole users on the many-user splits, since records are grouped by user).

    .venv/bin/python -m experiments.references                                 # baselines only, ~2 min
    .venv/bin/python -m experiments.references --adapter runs/demo/run --model-limit 500
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

BASELINES = ("history-share", "popularity", "logreg", "bias", "gbdt", "mf")


def build_sets(data: Path, work: Path) -> dict[str, tuple[list[dict], list[dict]]]:
    """(train records, test records) per test set, built from the raw data with tallrec's own builders."""
    from data_builders import load_split
    from data_builders.build import build_config, build_dataset
    from data_builders.importer import import_tallrec

    builds = {
        "TALLRec movie test (ml-100k)": ("movielens-100k", "tallrec", data / "ml-100k"),
        "many-user ml-100k (last 5/user)": ("movielens-100k", "many-users", data / "ml-100k"),
        "many-user ml-latest-small (last 5/user)": ("movielens-latest", "many-users", data / "ml-latest-small"),
    }
    sets = {}
    for name, (source, preset, path) in builds.items():
        folder = work / f"{source}-{preset}"
        build_dataset(build_config(source, preset, {"path": str(path), "output": str(folder)}))
        sets[name] = (load_split(folder, "train"), load_split(folder, "test"))
    import_tallrec([data / "tallrec-book" / "valid.json", data / "tallrec-book" / "test.json"], work / "book")
    sets["TALLRec book test (train: its valid file)"] = (load_split(work / "book", "valid"),
                                                        load_split(work / "book", "test"))
    return sets


def model_rows(adapter: str, records: list[dict], train: list[dict]) -> list[dict]:
    """Tuned model and zero-shot base (adapter off) on ``records``, compared with history-share and GBDT."""
    from tallrec_cli.eval.compare import BASE_MODEL, Scored, compare, score_baselines
    from tallrec_cli.eval.score import evaluate_records
    from tallrec_cli.model.loading import load_for_inference
    from tallrec_cli.model.scoring import resolve_scoring

    inference = load_for_inference(None, adapter, merge_adapter=False)  # the base is scored with the adapter off
    spec = resolve_scoring(inference)
    tuned, _ = evaluate_records(inference, records, spec, resamples=0)
    with inference.model.disable_adapter():
        base, _ = evaluate_records(inference, records, spec, resamples=0)
    scorers = [Scored("model", "tuned SmolLM2 (make demo)", tuned), Scored(BASE_MODEL, "zero-shot SmolLM2", base)]
    scorers += score_baselines(["history-share", "gbdt"], train, records)
    return compare(records, scorers[0], scorers[1:])["rows"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--adapter", help="a train run (e.g. make demo's runs/demo/run) to score beside the baselines")
    parser.add_argument("--model-limit", type=int, default=500, help="records per test scored by the models")
    parser.add_argument("--json", help="write every number here")
    args = parser.parse_args()

    from tallrec_cli.core.formatting import short_interval
    from tallrec_cli.core.metrics import compute_metrics

    results = {}
    with tempfile.TemporaryDirectory() as work:
        sets = build_sets(Path(args.data), Path(work))
        for name, (train, test) in sets.items():
            from data_builders.structure import users_of
            from tallrec_cli.eval.compare import score_baselines

            users = users_of(test)
            rows = []
            for scored in score_baselines(BASELINES, train, test):
                metrics = compute_metrics([r["label"] for r in test], scored.scores, users)
                rows.append({"label": scored.label, "records": len(test), "metrics": metrics})
            if args.adapter:
                subset = test[:args.model_limit]
                for row in model_rows(args.adapter, subset, train):
                    rows.append({"label": row["label"] + f" (first {len(subset)})", "records": len(subset),
                                 "metrics": row["metrics"], "difference": row.get("difference")})
            results[name] = {"train_records": len(train), "test_records": len(test), "rows": rows}

    for name, result in results.items():
        first = result["rows"][0]["metrics"]
        print(f"\n### {name}\n\ntrain {result['train_records']} records, test {result['test_records']} records, "
              f"{first['users'] or '-'} users ({first['gauc_users'] or '-'} with both labels)\n")
        print("| scorer | records | AUC | 95% CI | GAUC | 95% CI |\n|---|---:|---:|---:|---:|---:|")
        for row in result["rows"]:
            metrics = row["metrics"]
            gauc = "-" if metrics["gauc"] is None else f"{metrics['gauc']:.4f}"
            print(f"| {row['label']} | {row['records']} | {metrics['auc']:.4f} | {short_interval(metrics['auc_ci95'])} "
                  f"| {gauc} | {short_interval(metrics['gauc_ci95'])} |")
        differences = [row for row in result["rows"] if row.get("difference")]
        if differences:
            print("\ntuned model minus each reference on the same records (paired 95% CI):\n")
            print("| reference | ΔAUC | 95% CI | ΔGAUC | 95% CI |\n|---|---:|---:|---:|---:|")
            for row in differences:
                diff = row["difference"]
                gauc = "-" if diff["gauc_diff"] is None else f"{diff['gauc_diff']:+.4f}"
                print(f"| {row['label']} | {diff['auc_diff']:+.4f} | {short_interval(diff['auc_diff_ci95'], True)} "
                      f"| {gauc} | {short_interval(diff['gauc_diff_ci95'], True)} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
