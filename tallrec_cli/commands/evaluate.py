"""`tallrec eval` (metrics on labelled test sets) and `tallrec predict` (P(yes) for new candidates)."""

from __future__ import annotations

from pathlib import Path

import typer

from tallrec_cli.console import console, err_console, progress, table

MODEL_HELP = "Base model: smollm2-135m, a local folder, a .gguf file, a hub id, or a merged export folder."
ADAPTER_HELP = "A train run folder, an adapter export folder (their manifests name base model, template, labels)."


def _label_words(text: str | None) -> list[str] | None:
    return [word.strip() for word in text.split(",")] if text else None


def _load(model, adapter, dtype, quantization, trust_remote_code):
    from tallrec_cli.models import load_for_inference

    with err_console.status("loading the model"):
        return load_for_inference(model, adapter, dtype, quantization, trust_remote_code)


def _check_choice(value: str, choices: tuple[str, ...], option: str) -> str:
    from tallrec_cli.errors import ConfigError

    if value not in choices:
        raise ConfigError(f"{option} {value!r} is not one of {', '.join(choices)}")
    return value


def eval_command(
    test: list[str] = typer.Option(..., "--test", "-t", help="Test file (.jsonl, TALLRec .json) or dataset folder; repeatable."),
    model: str = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    adapter: str = typer.Option(None, "--adapter", "-a", help=ADAPTER_HELP),
    output: str = typer.Option(None, "--output", "-o", help="Results root (default: RUN/eval); one sub-folder per test."),
    split: str = typer.Option("test", help="Split to read from dataset folders."),
    score: str = typer.Option("pair", "--score", help="pair: softmax over the two label logits; tallrec: TALLRec's "
                              "full-vocabulary softmax then softmax over the two probabilities."),
    template: str = typer.Option(None, help="Prompt template (default: the run's, else alpaca)."),
    label_words: str = typer.Option(None, help="Positive,negative label words (default: the run's, else Yes,No)."),
    batch_size: int = typer.Option(None, help="Prompts per forward pass (default: the largest expected to fit; "
                                   "halved on out-of-memory)."),
    prefix_cache: str = typer.Option("auto", help="Run the prompt prefix all records share once: auto, on, off."),
    dtype: str = typer.Option("auto", help="auto (bf16 where fast), bfloat16, float16, float32."),
    quantization: str = typer.Option("none", help="none, 8bit, 4bit."),
    limit: int = typer.Option(None, help="Evaluate only the first N records of each test."),
    bootstrap: int = typer.Option(1000, help="Bootstrap resamples for the AUC 95% interval (0: none)."),
    seed: int = typer.Option(0, help="Bootstrap seed."),
    plots: bool = typer.Option(False, "--plots", help="Also write roc.png and reliability.png."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing results of the same test."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow model code from the hub."),
) -> None:
    """Score labelled test records and report AUC, GAUC, log-loss, accuracy, Brier, ECE (one row per test).

    Examples:

    `tallrec eval --adapter runs/m64 --test data/movielens-100k --test data/book/test.jsonl --plots`

    `tallrec eval --model smollm2-135m --test data/movielens-100k --limit 200 --score tallrec -o evals/zero-shot`
    """
    from tallrec_cli.evaluate import eval_output_root, evaluate_tests, load_tests
    from tallrec_cli.scoring import PREFIX_CACHE_MODES, SCORE_MODES

    _check_choice(score, SCORE_MODES, "--score")
    _check_choice(prefix_cache, PREFIX_CACHE_MODES, "--prefix-cache")
    root = eval_output_root(adapter, output)
    tests = load_tests(test, split, limit)
    inference = _load(model, adapter, dtype, quantization, trust_remote_code)
    with progress() as bar:
        def on_start(name: str, records: int):
            task = bar.add_task(f"scoring {name}", total=records)
            return lambda done: bar.advance(task, done)

        results = evaluate_tests(inference, tests, root, template, _label_words(label_words), score, batch_size,
                                 prefix_cache, bootstrap, seed, plots, overwrite, on_start)
    rows = []
    for result in results:
        metrics = result["metrics"]
        interval = metrics["auc_ci95"]
        rows.append([result["test"], metrics["records"], metrics["positives"], metrics["auc"],
                     f"{interval[0]:.4f}-{interval[1]:.4f}" if interval else "-", metrics["gauc"],
                     metrics["log_loss"], metrics["accuracy"], metrics["brier"], metrics["ece"]])
    console.print(table(f"eval ({score} scores)", ["test", "records", "positives", "AUC", "AUC 95% CI", "GAUC",
                                                    "log-loss", "acc@0.5", "Brier", "ECE"], rows))
    for result in results:
        for note in result["metrics"]["notes"]:
            console.print(f"[yellow]{result['test']}:[/] {note}", highlight=False)
        console.print(f"{result['test']}: {result['folder']}", highlight=False)


def predict_command(
    input: str = typer.Option(..., "--input", "-i", help="Candidates (.jsonl or .csv): liked, disliked (titles "
                              "separated by | or JSON lists), candidate, optional user and label; or TALLRec records."),
    output: str = typer.Option(..., "--output", "-o", help="Where to write P(yes) per row (.jsonl or .csv)."),
    model: str = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    adapter: str = typer.Option(None, "--adapter", "-a", help=ADAPTER_HELP),
    domain: str = typer.Option("movie", help="Wording of the built prompt: movie or book."),
    score: str = typer.Option("pair", "--score", help="pair or tallrec (see `tallrec eval --help`)."),
    template: str = typer.Option(None, help="Prompt template (default: the run's, else alpaca)."),
    label_words: str = typer.Option(None, help="Positive,negative label words (default: the run's, else Yes,No)."),
    batch_size: int = typer.Option(None, help="Prompts per forward pass (default: the largest expected to fit)."),
    prefix_cache: str = typer.Option("auto", help="auto, on, off."),
    dtype: str = typer.Option("auto", help="auto, bfloat16, float16, float32."),
    quantization: str = typer.Option("none", help="none, 8bit, 4bit."),
    rank: bool = typer.Option(False, "--rank", help="Rank each user's candidates by P(yes); HR@K / NDCG@K with labels."),
    k: str = typer.Option("1,3,5,10", "--k", help="Cut-offs for HR@K / NDCG@K."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow model code from the hub."),
) -> None:
    """Write P(yes) for new user histories and candidate items; optionally rank candidates per user.

    Example:

    `tallrec predict --adapter runs/m64 --input candidates.csv --rank --k 1,5 -o scores.csv`
    """
    from tallrec_cli.errors import ConfigError
    from tallrec_cli.evaluate import DOMAINS, predict_rows, read_candidates, write_predictions
    from tallrec_cli.scoring import PREFIX_CACHE_MODES, SCORE_MODES

    _check_choice(score, SCORE_MODES, "--score")
    _check_choice(prefix_cache, PREFIX_CACHE_MODES, "--prefix-cache")
    _check_choice(domain, DOMAINS, "--domain")
    try:
        ks = sorted({int(part) for part in k.split(",") if part.strip()})
    except ValueError:
        raise ConfigError(f"--k {k!r} is not a list of integers", "write it as --k 1,3,5") from None
    if not ks or ks[0] < 1:
        raise ConfigError("--k needs positive cut-offs", "write it as --k 1,3,5")
    if Path(output).suffix not in (".jsonl", ".csv"):
        raise ConfigError(f"--output {output} must end in .jsonl or .csv")
    rows = read_candidates(input)
    inference = _load(model, adapter, dtype, quantization, trust_remote_code)
    with progress() as bar:
        task = bar.add_task("scoring", total=len(rows))
        scored, summary = predict_rows(inference, rows, domain, template, _label_words(label_words), score,
                                       batch_size, prefix_cache, rank, ks, lambda done: bar.advance(task, done))
    write_predictions(output, scored)
    console.print(f"wrote P(yes) ({score} scores) for {len(scored)} rows to {output}", highlight=False)
    if "ranking" in summary:
        ranking = summary["ranking"]
        console.print(table(f"ranking ({ranking['users']} users, {ranking['users_skipped']} without a positive skipped)",
                            ["K", "HR@K", "NDCG@K"], [[f"{cut}", ranking[f"hr@{cut}"], ranking[f"ndcg@{cut}"]]
                                                      for cut in ks]))
    elif "ranking_note" in summary:
        console.print(f"[yellow]{summary['ranking_note']}[/]", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `eval` and `predict` to ``app``."""
    app.command("eval")(eval_command)
    app.command("predict")(predict_command)
