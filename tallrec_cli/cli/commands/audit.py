"""`tallrec audit`: slices, history sensitivity and leakage checks for a model or a baseline on a test set."""

from __future__ import annotations

from pathlib import Path

import typer

from data_builders.dataset import split_file
from tallrec_cli.cli.commands._common import (
    Dtype,
    ScoreMode,
    adapter_option,
    batch_size_option,
    bootstrap_option,
    command_app,
    dtype_option,
    limit_option,
    model_option,
    output_option,
    overwrite_option,
    score_option,
    seed_option,
    split_option,
    template_option,
    trust_remote_code_option,
)
from tallrec_cli.cli.console import console, err_console, progress
from tallrec_cli.cli.render import audit_summary_lines, audit_tables
from tallrec_cli.core.errors import ConfigError
from tallrec_cli.core.files import sha256_file
from tallrec_cli.eval.audit import (
    AuditSpec,
    baseline_scorer,
    check_output,
    model_scorer,
    run_audit,
    valid_records,
    write_audit,
)
from tallrec_cli.eval.baselines import check_baseline_names
from tallrec_cli.eval.records import load_test_records
from tallrec_cli.eval.run import read_adapter_manifest, training_records
from tallrec_cli.eval.score import load_scoring_model

app = command_app()


@app.command("audit")
def audit_command(
    test: str = typer.Option(..., "--test", "-t", help="Test file (.jsonl, TALLRec .json) or dataset folder."),
    output: str = output_option("Folder for audit.json, the PNGs and manifest.json.", required=True),
    model: str = model_option(),
    adapter: str = adapter_option(),
    baseline: str = typer.Option(None, "--baseline", "-b", help="Audit a baseline instead of a model: "
                                 "history-share, popularity, logreg, bias, gbdt, mf, prompt-numbers."),
    train: str = typer.Option(None, "--train", help="Training data (dataset folder or records file; its train "
                              "split): warm/cold slices, leakage checks, baselines that learn. Default: the run's."),
    split: str = split_option(),
    limit: int = limit_option("test records"),
    warm_min: int = typer.Option(10, min=1, help="Training records from which a user or item counts as warm."),
    score: ScoreMode = score_option(),
    template: str = template_option(),
    batch_size: int = batch_size_option(),
    dtype: Dtype = dtype_option(),
    bootstrap: int = bootstrap_option(),
    seed: int = seed_option("Seed of the history shuffle and the bootstrap"),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write slices.png and history.png."),
    overwrite: bool = overwrite_option("an existing audit folder"),
    trust_remote_code: bool = trust_remote_code_option(),
) -> None:
    """Audit a scorer on a test set: AUC/GAUC of warm and cold users and items and by item-popularity
    decile, the AUC change when histories are shuffled or removed (paired 95% CI), and leakage checks
    (target in its own history, records repeated across splits, user/item overlap, time order).

    Examples:

    `tallrec audit --baseline gbdt --train data/mu --test data/mu/test.jsonl -o audits/gbdt`

    `tallrec audit --adapter runs/m64 --test data/movie/test.jsonl -o audits/m64`
    """

    if sum(bool(choice) for choice in (model or adapter, baseline)) != 1:
        raise ConfigError("audit one scorer: a model (--model and/or --adapter) or --baseline NAME",
                          "e.g. --baseline gbdt --train DATASET, or --adapter RUN")
    records = load_test_records(test, split, limit)
    train_records, train_source = training_records(train, read_adapter_manifest(adapter), adapter)
    valid = valid_records(train_source)
    if baseline:
        problems = check_baseline_names([baseline], train_records is not None)
        if problems:
            raise ConfigError("; ".join(problems))
    check_output(output, overwrite)
    test_path = split_file(test, split) if Path(test).is_dir() else Path(test)
    if baseline:
        with err_console.status(f"fitting {baseline}"):
            scorer = baseline_scorer(baseline, train_records, seed)
    else:
        scorer = model_scorer(load_scoring_model(model, adapter, dtype, "none", trust_remote_code, template), template, None,
                              score, batch_size)
    with progress() as bar:
        def on_stage(what: str, count: int):
            task = bar.add_task(f"scoring {what}", total=count)
            return lambda done: bar.advance(task, done)

        audit = run_audit(scorer, records, train_records, AuditSpec(bootstrap, seed, warm_min), test, train_source,
                          on_stage, valid)
    inputs = {"scorer": audit["scorer"], "train": train_source,
              "test": {"path": str(Path(test).resolve()), "split": split, "limit": limit,
                       "sha256": sha256_file(test_path) if test_path.is_file() else None}}
    folder = write_audit(output, audit, inputs, plots, overwrite)
    console.print(f"[bold]audit: {scorer.label} on {Path(test).name}[/] ({len(records)} records)", highlight=False)
    for table in audit_tables(audit):
        console.print(table)
    for line in audit_summary_lines(audit):
        console.print(line, highlight=False)
    console.print(f"written to {folder}", highlight=False)
