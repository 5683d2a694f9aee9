"""`tallrec eval` (metrics on labelled test sets) and `tallrec predict` (P(yes) for new candidates)."""

from __future__ import annotations

from pathlib import Path

import typer

from tallrec_cli.commands._common import Domain, Dtype, PrefixCache, Quantization, ScoreMode, command_app
from tallrec_cli.console import console, err_console, progress, table

app = command_app()

MODEL_HELP = "Base model: smollm2-135m, a local folder, a .gguf file, a hub id, or a merged export folder."
ADAPTER_HELP = "A train run folder, an adapter export folder (their manifests name base model, template, labels)."


def _label_words(text: str | None) -> list[str] | None:
    return [word.strip() for word in text.split(",")] if text else None


def _load(model, adapter, dtype, quantization, trust_remote_code, template, label_words, merge_adapter: bool = True):
    """The model, after the template and label words were checked against its tokenizer (no weights yet)."""
    from tallrec_cli.evaluate import resolve_scoring
    from tallrec_cli.models import load_for_inference

    with err_console.status("loading the model"):
        return load_for_inference(model, adapter, dtype, quantization, trust_remote_code,
                                  merge_adapter=merge_adapter,
                                  before_weights=lambda partial: resolve_scoring(partial, template, label_words))


def _local(model: str | None) -> str | None:
    """``model`` when it is a local path (an input to protect), not a hub id or the embedded model's name."""
    return model if model and Path(model).exists() else None


def metrics_table(title: str, rows: list[tuple[str, dict]]):
    """AUC and GAUC with their 95% intervals (under the value), users carrying GAUC, log-loss and ECE."""
    from tallrec_cli.console import Column, ResultTable, format_value, value_with_interval

    lines = []
    for name, metrics in rows:
        users = "-" if metrics.get("users") is None else f"{metrics['users']}\n({metrics['gauc_users']})"
        lines.append([name, str(metrics["records"]), users, value_with_interval(metrics["auc"], metrics["auc_ci95"]),
                      value_with_interval(metrics["gauc"], metrics.get("gauc_ci95")), format_value(metrics["log_loss"]),
                      format_value(metrics["ece"])])
    return ResultTable(title, [Column("test"), *(Column(name, True) for name in (
        "records", "users\n(GAUC)", "AUC\n95% CI", "GAUC\n95% CI", "log-loss", "ECE"))], lines, lines=True)


def _run_manifest(adapter: str | None) -> dict | None:
    from tallrec_cli.io import read_manifest

    return read_manifest(adapter) if adapter and (Path(adapter) / "manifest.json").is_file() else None


def _train_records(train: str | None, adapter: str | None):
    """Training records for baselines: --train, else the train split the run was trained on."""
    from data_builders import load_split

    manifest = _run_manifest(adapter)
    if train is None and manifest and manifest.get("kind") == "train-run":
        train = (manifest.get("config") or {}).get("data", {}).get("train")
    return (load_split(train, "train"), train) if train else (None, None)


@app.command("eval")
def eval_command(
    test: list[str] = typer.Option(..., "--test", "-t", help="Test file (.jsonl, TALLRec .json) or dataset folder; repeatable."),
    model: str = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    adapter: str = typer.Option(None, "--adapter", "-a", help=ADAPTER_HELP),
    output: str = typer.Option(None, "--output", "-o", help="Results root (default: RUN/eval); one sub-folder per test."),
    split: str = typer.Option("test", help="Split to read from dataset folders."),
    score: ScoreMode = typer.Option("pair", "--score", help="pair: softmax over the two label logits; tallrec: TALLRec's "
                              "full-vocabulary softmax then softmax over the two probabilities."),
    template: str = typer.Option(None, help="Prompt template (default: the run's, else alpaca)."),
    label_words: str = typer.Option(None, help="Positive,negative label words (default: the run's, else Yes,No)."),
    batch_size: int = typer.Option(None, min=1, help="Prompts per forward pass (default: the largest expected to "
                                   "fit; halved on out-of-memory)."),
    prefix_cache: PrefixCache = typer.Option("auto", help="Run the prompt prefix all records share once."),
    dtype: Dtype = typer.Option("auto", help="auto: bf16 where fast."),
    quantization: Quantization | None = typer.Option(None, help="Default: the adapter's training.",
                                                      show_default=False),
    limit: int = typer.Option(None, min=1, help="Evaluate only the first N records of each test (and of the "
                              "validation split an --ensemble is fitted on; default: all)."),
    bootstrap: int = typer.Option(1000, min=0, help="Bootstrap resamples for the AUC 95% interval (0: none)."),
    seed: int = typer.Option(0, help="Bootstrap seed."),
    plots: bool = typer.Option(False, "--plots", help="Also write roc.png and reliability.png."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing results of the same test."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow model code from the hub."),
    baseline: list[str] = typer.Option(None, "--baseline", "-b", help="Score with a baseline instead of a model "
                                       "(history-share, popularity, logreg, bias, gbdt, mf, "
                                       "prompt-numbers); repeatable; results in OUTPUT/<baseline>/<test>/."),
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
) -> None:
    """Score labelled test records and report AUC and GAUC with 95% intervals, log-loss and calibration,
    for a model or for baselines, and compare a model with its references.

    Examples:

    `tallrec eval --adapter runs/m64 --test data/movielens-100k --compare base,history-share,gbdt`

    `tallrec eval --adapter runs/m64 --test data/movielens-100k --ensemble gbdt`

    `tallrec eval --baseline history-share --baseline gbdt --train data/movie --test data/movie -o evals/ref`

    `tallrec eval --model smollm2-135m --test data/movielens-100k --limit 200 --score tallrec -o evals/zero-shot`
    """
    from tallrec_cli.calibration import calibration_for
    from tallrec_cli.compare import check_references, comparison_table, evaluate_baseline_tests, parse_names
    from tallrec_cli.ensemble import check_ensemble_request, fit_blends
    from tallrec_cli.errors import ConfigError
    from tallrec_cli.evaluate import eval_output_root, evaluate_tests, load_tests, model_scorer, resolve_scoring
    from tallrec_cli.io import check_output_folder, refuse_overlap

    baselines, references, ensembles = parse_names(baseline), parse_names(compare), parse_names(ensemble)
    has_model = bool(model or adapter)
    if not has_model and not baselines:
        raise ConfigError("nothing to evaluate", "pass --model and/or --adapter, or --baseline NAME")
    if has_model and baselines:
        raise ConfigError("--baseline scores without a model; with a model use --compare",
                          f"e.g. --compare {','.join(baselines)}")
    root = eval_output_root(adapter, output)
    tests = load_tests(test, split, limit)
    train_records, train_source = _train_records(train, adapter)
    problems = check_references(baselines or references, train_records is not None, has_model=bool(adapter))
    problems += check_ensemble_request(ensembles, _run_manifest(adapter), train_source)
    if problems:
        raise ConfigError("; ".join(problems))
    if baselines:
        with err_console.status("fitting baselines") as status:
            results = evaluate_baseline_tests(baselines, train_records, train_source, tests, root, bootstrap, seed,
                                              plots, overwrite, lambda what: status.update(f"scoring {what}"))
        console.print(metrics_table("baselines", [(f"{r['baseline']}\n{r['test']}", r["metrics"]) for r in results]))
        _notes([(f"{r['baseline']}: {r['test']}", r) for r in results])
        return
    for each in tests:  # before the model loads: an existing result or an input in the way ends it now
        refuse_overlap(root / each.name, [each.path, adapter, _local(model)], inside_ok=[adapter])
        check_output_folder(root / each.name, overwrite)
    from tallrec_cli.compare import BASE_MODEL

    # `--compare base` scores with the adapter switched off, so it must stay apart from the weights
    inference = _load(model, adapter, dtype, quantization, trust_remote_code, template, _label_words(label_words),
                      merge_adapter=BASE_MODEL not in references)
    spec = resolve_scoring(inference, template, _label_words(label_words), score, batch_size, prefix_cache)
    calibration = calibration_for(adapter or model) if calibrated else None
    with progress() as bar:
        def on_start(name: str, records: int):
            task = bar.add_task(f"scoring {name}", total=records)
            return lambda done: bar.advance(task, done)

        blends = fit_blends(ensembles, _run_manifest(adapter), train_records, train_source,
                            model_scorer(inference, spec, calibration, on_start), seed, limit) if ensembles else []
        results = evaluate_tests(inference, tests, root, spec, resamples=bootstrap, seed=seed, plots=plots,
                                 overwrite=overwrite, on_start=on_start, references=references,
                                 train_records=train_records, calibration=calibration, ensembles=blends)
    console.print(metrics_table(f"eval ({score} scores)", [(r["test"], r["metrics"]) for r in results]))
    for result in results:
        if result["comparison"]:
            console.print(comparison_table(result["comparison"], f"{result['test']}: model vs references (Δ = model "
                                           "- row, paired 95% CI; sig: AUC/GAUC + win, - loss, = no difference)"))
        for comparison in result["ensembles"]:
            console.print(comparison_table(comparison, f"{result['test']}: {comparison['primary']} blend fitted on "
                                           "validation vs its parts (Δ = blend - row)"))
    _notes([(r["test"], r) for r in results])


def _notes(results) -> None:
    from tallrec_cli.compare import cold_note

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
    output: str = typer.Option(..., "--output", "-o", help="Where to write P(yes) per row (.jsonl or .csv)."),
    model: str = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    adapter: str = typer.Option(None, "--adapter", "-a", help=ADAPTER_HELP),
    domain: Domain = typer.Option("movie", help="Wording of the built prompt."),
    score: ScoreMode = typer.Option("pair", "--score", help="See `tallrec eval --help`."),
    template: str = typer.Option(None, help="Prompt template (default: the run's, else alpaca)."),
    label_words: str = typer.Option(None, help="Positive,negative label words (default: the run's, else Yes,No)."),
    batch_size: int = typer.Option(None, min=1, help="Prompts per forward pass (default: the largest expected to fit)."),
    prefix_cache: PrefixCache = typer.Option("auto", help="Run the prompt prefix all records share once."),
    dtype: Dtype = typer.Option("auto", help="auto: bf16 where fast."),
    quantization: Quantization | None = typer.Option(None, help="Default: the adapter's training.",
                                                      show_default=False),
    rank: bool = typer.Option(False, "--rank", help="Rank each user's candidates by P(yes); HR@K / NDCG@K with labels."),
    k: str = typer.Option("1,3,5,10", "--k", help="Cut-offs for HR@K / NDCG@K."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow model code from the hub."),
    calibrated: bool = typer.Option(True, "--calibrated/--raw", help="Apply the adapter's stored calibration (if any)."),
    ensemble: str = typer.Option(None, "--ensemble", "-e", help="An ensembles.json (or the eval folder holding it) "
                                 "written by `tallrec eval --ensemble`: p_yes becomes the blend's (rows must be "
                                 "built records with user, item and history)."),
    ensemble_baseline: str = typer.Option(None, help="Which blend of that file, when it holds several."),
) -> None:
    """Write P(yes) for new user histories and candidate items; optionally rank candidates per user.

    Example:

    `tallrec predict --adapter runs/m64 --input candidates.csv --rank --k 1,5 -o scores.csv`
    """
    from tallrec_cli.calibration import calibration_for
    from tallrec_cli.ensemble import load_blend, refit_baseline
    from tallrec_cli.errors import ConfigError
    from tallrec_cli.evaluate import predict_rows, read_candidates, resolve_scoring, write_predictions
    from tallrec_cli.io import check_writable, refuse_overlap

    try:
        ks = sorted({int(part) for part in k.split(",") if part.strip()})
    except ValueError:
        raise ConfigError(f"--k {k!r} is not a list of integers", "write it as --k 1,3,5") from None
    if not ks or ks[0] < 1:
        raise ConfigError("--k needs positive cut-offs", "write it as --k 1,3,5")
    if Path(output).suffix not in (".jsonl", ".csv"):
        raise ConfigError(f"--output {output} must end in .jsonl or .csv")
    refuse_overlap(output, [input, adapter, _local(model)])
    check_writable(output)  # a read-only or missing disk fails now, not after scoring every row
    rows = read_candidates(input)
    blend = refit_baseline(load_blend(ensemble, ensemble_baseline)) if ensemble else None
    inference = _load(model, adapter, dtype, quantization, trust_remote_code, template, _label_words(label_words))
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
