"""`tallrec eval` (metrics on labelled test sets) and `tallrec predict` (P(yes) for new candidates)."""

from __future__ import annotations

from pathlib import Path

import typer

from tallrec_cli.cli.commands._common import (
    Domain,
    Dtype,
    PrefixCache,
    Quantization,
    ScoreMode,
    adapter_option,
    batch_size_option,
    bootstrap_option,
    command_app,
    dtype_option,
    flag,
    label_words_option,
    limit_option,
    model_option,
    output_option,
    overwrite_option,
    prefix_cache_option,
    quantization_option,
    score_option,
    seed_option,
    split_option,
    template_option,
    trust_remote_code_option,
)
from tallrec_cli.cli.console import Column, ResultTable, console, progress, table
from tallrec_cli.cli.render import comparison_table
from tallrec_cli.core.errors import ConfigError
from tallrec_cli.core.files import check_output_file, refuse_overlap
from tallrec_cli.core.formatting import format_value, value_with_interval
from tallrec_cli.eval.calibration import calibration_for
from tallrec_cli.eval.compare import cold_note, parse_names
from tallrec_cli.eval.ensemble import load_blend, refit_baseline
from tallrec_cli.eval.predict import predict_rows, read_candidates, write_predictions
from tallrec_cli.eval.run import EvalRequest, run_eval
from tallrec_cli.eval.score import load_scoring_model, local_path
from tallrec_cli.model.scoring import resolve_scoring

app = command_app()



def _label_words(text: str | None) -> list[str] | None:
    return [word.strip() for word in text.split(",")] if text else None



def metrics_table(title: str, rows: list[tuple[str, dict]]):
    """AUC and GAUC with their 95% intervals (under the value), users carrying GAUC, log-loss and ECE."""

    lines = []
    for name, metrics in rows:
        users = "-" if metrics.get("users") is None else f"{metrics['users']}\n({metrics['gauc_users']})"
        lines.append([name, str(metrics["records"]), users, value_with_interval(metrics["auc"], metrics["auc_ci95"]),
                      value_with_interval(metrics["gauc"], metrics.get("gauc_ci95")), format_value(metrics["log_loss"]),
                      format_value(metrics["ece"])])
    return ResultTable(title, [Column("test"), *(Column(name, True) for name in (
        "records", "users\n(GAUC)", "AUC\n95% CI", "GAUC\n95% CI", "log-loss", "ECE"))], lines, lines=True)



@app.command("eval")
def eval_command(
    test: list[str] = typer.Option(..., "--test", "-t", help="Test file (.jsonl, TALLRec .json) or dataset folder; repeatable."),
    model: str = model_option(),
    adapter: str = adapter_option(),
    output: str = output_option("Results root (default: RUN/eval); one sub-folder per test."),
    split: str = split_option(),
    score: ScoreMode = score_option("pair: softmax over the two label logits; tallrec: TALLRec's full-vocabulary "
                                    "softmax then softmax over the two probabilities."),
    template: str = template_option(),
    label_words: str = label_words_option(),
    batch_size: int = batch_size_option(),
    prefix_cache: PrefixCache = prefix_cache_option(),
    dtype: Dtype = dtype_option(),
    quantization: Quantization | None = quantization_option(),
    limit: int = limit_option("records of each test, and of the validation split an --ensemble is fitted on"),
    bootstrap: int = bootstrap_option(),
    seed: int = seed_option("Bootstrap seed"),
    plots: bool = flag("--plots", "Also write roc.png and reliability.png."),
    overwrite: bool = overwrite_option("existing results of the same test"),
    trust_remote_code: bool = trust_remote_code_option(),
    baseline: list[str] = typer.Option(None, "--baseline", "-b", help="Score with a baseline instead of a model "
                                       "(history-share, popularity, logreg, bias, gbdt, mf, "
                                       "prompt-numbers); repeatable; results in OUTPUT/BASELINE/TEST/."),
    compare: list[str] = typer.Option(None, "--compare", "-c", help="References to put beside the model, comma-"
                                      "separated: baselines and `base` (the model without its adapter); paired-"
                                      "bootstrap intervals of the AUC and GAUC differences."),
    train: str = typer.Option(None, "--train", help="Training data for baselines that learn (dataset folder or "
                              "records file; its train split). Default: the run's training data."),
    calibrated: bool = typer.Option(True, "--calibrated/--raw", help="Apply the calibration `tallrec calibrate` "
                                    "stored with the adapter (if any), or report raw P(yes)."),
    ensemble: list[str] = typer.Option(None, "--ensemble", "-e", help="Baselines to blend with the model, comma-"
                                       "separated: a logistic blend of the two logits fitted on the run's "
                                       "validation split, compared with both parts; saved as ensembles.json."),
    timings: bool = flag("--timings", "Also print where the time went: seconds per phase (process start, imports, "
                         "model load, adapter fold, tokenise, score, metrics, write; also in metrics.json)."),
) -> None:
    """Score labelled test records and report AUC and GAUC with 95% intervals, log-loss and calibration,
    for a model or for baselines, and compare a model with its references.

    Examples:

    `tallrec eval --adapter runs/m64 --test data/movielens-100k --compare base,history-share,gbdt`

    `tallrec eval --adapter runs/m64 --test data/movielens-100k --ensemble gbdt`

    `tallrec eval --baseline history-share --baseline gbdt --train data/movie --test data/movie -o evals/ref`

    `tallrec eval --model smollm2-135m --test data/movielens-100k --limit 200 --score tallrec -o evals/zero-shot`
    """
    request = EvalRequest(
        test, model, adapter, output, split, score, template, _label_words(label_words), batch_size, prefix_cache,
        dtype, quantization, limit, bootstrap, seed, plots, overwrite, trust_remote_code, parse_names(baseline),
        parse_names(compare), train, calibrated, parse_names(ensemble))
    with progress() as bar:
        def on_start(name: str, records: int):
            task = bar.add_task(f"scoring {name}", total=records)
            return lambda done: bar.advance(task, done)

        def on_baseline(what: str) -> None:
            bar.add_task(f"scoring {what}", total=None)

        outcome = run_eval(request, on_start, on_baseline)
    results = outcome.results
    if outcome.kind == "baselines":
        console.print(metrics_table("baselines", [(f"{r['baseline']}\n{r['test']}", r["metrics"]) for r in results]))
        _notes([(f"{r['baseline']}: {r['test']}", r) for r in results])
        return
    console.print(metrics_table(f"eval ({score} scores)", [(r["test"], r["metrics"]) for r in results]))
    for result in results:
        if result["comparison"]:
            console.print(comparison_table(result["comparison"], f"{result['test']}: model vs references (Δ = model "
                                           "- row, paired 95% CI; sig: AUC/GAUC + win, - loss, = no difference)"))
        for comparison in result["ensembles"]:
            console.print(comparison_table(comparison, f"{result['test']}: {comparison['primary']} blend fitted on "
                                           "validation vs its parts (Δ = blend - row)"))
    if timings:
        console.print(_timing_table(results))
    _notes([(r["test"], r) for r in results])


def _timing_table(results: list[dict]):
    """Seconds per phase (rows) of each test (columns); phases before the first test repeat in every column."""
    phases = list(dict.fromkeys(name for result in results for name in result["metrics"]["timing"]))
    return table("where the time went (seconds)", ["phase", *(result["test"] for result in results)],
                 [[name, *(result["metrics"]["timing"].get(name) for result in results)] for name in phases])


def _notes(results) -> None:

    for name, result in results:
        infos = [result["metrics"].get("baseline")] + [row["info"] for row in (result.get("comparison") or {})
                                                       .get("rows", []) if row["info"].get("baseline")]
        notes = result["metrics"]["notes"] + [cold_note(info) for info in infos if info]
        for note in filter(None, notes):
            console.print(f"[yellow]{name}:[/] {note}", highlight=False)
        console.print(f"{name}: {result['folder']}", highlight=False)


@app.command("predict")
def predict_command(
    input: str = typer.Option(..., "--input", "-i", help="Candidates (.jsonl or .csv): liked, disliked (titles "
                              "separated by | or JSON lists), candidate, optional user and label; or TALLRec records."),
    output: str = output_option("Where to write P(yes) per row (.jsonl or .csv).", required=True),
    overwrite: bool = overwrite_option("an existing --output file"),
    model: str = model_option(),
    adapter: str = adapter_option(),
    domain: Domain = typer.Option("movie", help="Wording of the built prompt."),
    score: ScoreMode = score_option(),
    template: str = template_option(),
    label_words: str = label_words_option(),
    batch_size: int = batch_size_option(),
    prefix_cache: PrefixCache = prefix_cache_option(),
    dtype: Dtype = dtype_option(),
    quantization: Quantization | None = quantization_option(),
    rank: bool = flag("--rank", "Rank each user's candidates by P(yes); HR@K / NDCG@K with labels."),
    k: str = typer.Option("1,3,5,10", "--k", help="Cut-offs for HR@K / NDCG@K."),
    trust_remote_code: bool = trust_remote_code_option(),
    calibrated: bool = typer.Option(True, "--calibrated/--raw", help="Apply the adapter's stored calibration (if any)."),
    ensemble: str = typer.Option(None, "--ensemble", "-e", help="An ensembles.json (or the eval folder holding it) "
                                 "written by `tallrec eval --ensemble`: p_yes becomes the blend's (rows must be "
                                 "built records with user, item and history)."),
    ensemble_baseline: str = typer.Option(None, help="Which blend of the --ensemble file, when it holds several."),
) -> None:
    """Write P(yes) for new user histories and candidate items; optionally rank candidates per user.

    Example:

    `tallrec predict --adapter runs/m64 --input candidates.csv --rank --k 1,5 -o scores.csv`
    """

    try:
        ks = sorted({int(part) for part in k.split(",") if part.strip()})
    except ValueError:
        raise ConfigError(f"--k {k!r} is not a list of integers", "write it as --k 1,3,5") from None
    if not ks or ks[0] < 1:
        raise ConfigError("--k needs positive cut-offs", "write it as --k 1,3,5")
    if ensemble_baseline and not ensemble:
        raise ConfigError("--ensemble-baseline picks a blend of an --ensemble file, and no --ensemble was given",
                          "pass --ensemble EVAL_FOLDER (written by `tallrec eval --ensemble`), or drop "
                          "--ensemble-baseline")
    if Path(output).suffix not in (".jsonl", ".csv"):
        raise ConfigError(f"--output {output} must end in .jsonl or .csv")
    refuse_overlap(output, [input, adapter, local_path(model)])
    check_output_file(output, overwrite)
    rows = read_candidates(input)
    blend = refit_baseline(load_blend(ensemble, ensemble_baseline)) if ensemble else None
    inference = load_scoring_model(model, adapter, dtype, quantization, trust_remote_code, template,
                                   _label_words(label_words))
    spec = resolve_scoring(inference, template, _label_words(label_words), score, batch_size, prefix_cache)
    with progress() as bar:
        task = bar.add_task("scoring", total=len(rows))
        scored, summary = predict_rows(inference, rows, spec, domain=domain, rank=rank, ks=ks,
                                       on_batch=lambda done: bar.advance(task, done),
                                       calibration=calibration_for(adapter or model) if calibrated else None,
                                       blend=blend)
    write_predictions(output, scored)
    if summary["calibration_note"]:
        console.print(summary["calibration_note"], highlight=False)
    console.print(f"wrote P(yes) ({score} scores) for {len(scored)} rows to {output}", highlight=False)
    if "ranking" in summary:
        ranking = summary["ranking"]
        console.print(table(f"ranking ({ranking['users']} users, {ranking['users_skipped']} without a positive skipped)",
                            ["K", "HR@K", "NDCG@K"], [[f"{cut}", ranking[f"hr@{cut}"], ranking[f"ndcg@{cut}"]]
                                                      for cut in ks]))
    elif "ranking_note" in summary:
        console.print(f"[yellow]{summary['ranking_note']}[/]", highlight=False)
