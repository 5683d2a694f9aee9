"""`tallrec data`: build, import, sample and describe recommendation datasets (logic in data_builders)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from data_builders.build import build_config, build_dataset
from data_builders.importer import import_tallrec
from data_builders.sampling import parse_int_list, write_samples
from data_builders.stats import dataset_stats
from tallrec_cli.cli.commands._common import (
    DataFormat,
    HistoryStrategy,
    Source,
    Split,
    command_app,
    flag,
    output_option,
    overwrite_option,
    seed_option,
    set_option,
)
from tallrec_cli.cli.console import console, err_console, progress, table
from tallrec_cli.core.config import deep_merge, parse_overrides
from tallrec_cli.model.loading import load_tokenizer, resolve_model_source

app = command_app("data", help="Build, import, sample and describe recommendation datasets.")


@contextmanager
def _progress_callback():
    """A ``(task, total, done)`` callback drawing one transient rich bar per task."""
    with progress(transient=True) as bars:
        tasks: dict[str, Any] = {}

        def update(task: str, total: int | None, done: int) -> None:
            if task not in tasks:
                tasks[task] = bars.add_task(task, total=total)
            bars.update(tasks[task], completed=done, total=total)

        yield update


def _print_notes(manifest: dict) -> None:
    for note in manifest.get("notes", []):
        err_console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    for name, count in manifest.get("skipped_rows", {}).items():
        err_console.print(f"[yellow]note:[/] skipped {count} malformed row(s) of {name}", highlight=False)


def _split_table(title: str, manifest: dict):
    rows = [(split, s["records"], s["positives"], s["positive_rate"], s.get("users"))
            for split, s in manifest["splits"].items()]
    return table(title, ["split", "records", "positives", "positive rate", "users"], rows)


@app.command("build")
def build_command(
    source: Source = typer.Argument(..., help="Raw data format.", show_default=False),
    path: Path = typer.Option(None, "--path", help="Folder with the raw files (a file for amazon/csv); default: "
                              "bundled ml-latest-small for movielens-latest.", show_default=False),
    output: Path = output_option("Output folder [default: data/SOURCE]."),
    preset: str = typer.Option(None, "--preset", help="Settings bundle: tallrec, many-users or full (flags and --set win).",
                               show_default=False),
    fmt: DataFormat = typer.Option(None, "--format", help="Record files [default: jsonl].", show_default=False),
    split: Split = typer.Option(None, "--split", help="How records go to train/valid/test [default: tallrec]; last-n "
                                "takes --set split_last=N.", show_default=False),
    history_len: int = typer.Option(None, "--history-len", min=1, help="Previous interactions per record "
                                    "[default: 10].", show_default=False),
    history: HistoryStrategy = typer.Option(None, "--history", help="Which K history items: recent (default), relevant (K of "
                                "the last N most similar to the target; --set history_pool=N similarity=text|"
                                "collaborative) or mixed (training records in both views).", show_default=False),
    max_records: int = typer.Option(None, "--max-records", min=0, help="Keep the last N records, 0 for all "
                                    "[default: 10000].", show_default=False),
    template: str = typer.Option(None, "--template", help="Template name (tallrec-movie, tallrec-book, "
                                 "tallrec-item, paraphrase-movie, paraphrase-book) or YAML path.",
                                 show_default=False),
    seed: int = seed_option("Seed for the user split and paraphrase draws [default: 42]", default=None),
    items: Path = typer.Option(None, "--items", help="Item-title file: Amazon meta, or CSV/Parquet for csv.",
                               show_default=False),
    user_col: str = typer.Option(None, "--user-col", help="csv: user column [default: user_id].",
                                 show_default=False),
    item_col: str = typer.Option(None, "--item-col", help="csv: item column [default: item_id].",
                                 show_default=False),
    rating_col: str = typer.Option(None, "--rating-col", help="csv: rating column [default: rating].",
                                   show_default=False),
    time_col: str = typer.Option(None, "--time-col", help="csv: time column [default: timestamp].",
                                 show_default=False),
    items_id_col: str = typer.Option(None, "--items-id-col", help="csv: id column of --items [default: the "
                                     "item column's name].", show_default=False),
    items_title_col: str = typer.Option(None, "--items-title-col", help="csv: title column of --items "
                                        "[default: title].", show_default=False),
    encoding: str = typer.Option(None, "--encoding", help="Raw file encoding [default: auto = UTF-8, else "
                                 "latin-1].", show_default=False),
    sha256: str = typer.Option(None, "--sha256", help="Expected sha256 of the downloaded archive.",
                               show_default=False),
    skip_bad_rows: bool = flag("--skip-bad-rows", "Skip and count malformed rows."),
    download: bool = flag("--download", "Download the MovieLens archive (cached, verified)."),
    overwrite: bool = overwrite_option("an existing dataset folder"),
    overrides: list[str] = set_option("like_threshold=4"),
) -> None:
    """Build train/valid/test records from a raw rating log.

    Examples:

    `tallrec data build movielens-latest`  (bundled ml-latest-small, no download)

    `tallrec data build movielens-100k --path ml-100k --preset tallrec --format tallrec-json -o data/movie`

    `tallrec data build bookcrossing --path BX-CSV-Dump --split user --skip-bad-rows`

    `tallrec data build csv --path log.parquet --user-col uid --item-col iid --time-col ts --items titles.csv`

    Every setting is also a `--set KEY=VALUE` (e.g. `--set like_threshold=4 --set split_ratios=[0.7,0.15,0.15]`).
    """

    flags = {"path": path, "output": output, "format": fmt, "split": split, "history_len": history_len,
             "history": history,
             "template": template, "seed": seed, "items_path": items, "encoding": encoding, "sha256": sha256}
    values: dict[str, Any] = {key: str(v) if isinstance(v, Path) else v for key, v in flags.items() if v is not None}
    if max_records is not None:
        values["max_records"] = max_records or None
    columns = {"user": user_col, "item": item_col, "rating": rating_col, "timestamp": time_col,
               "item_id": items_id_col, "title": items_title_col}
    if any(v is not None for v in columns.values()):
        values["columns"] = {key: v for key, v in columns.items() if v is not None}
    for key, given in (("skip_bad_rows", skip_bad_rows), ("download", download), ("overwrite", overwrite)):
        if given:
            values[key] = True
    config = build_config(source, preset, deep_merge(values, parse_overrides(overrides)))
    with _progress_callback() as on_progress:
        manifest = build_dataset(config, on_progress)
    _print_notes(manifest)
    console.print(_split_table(f"{manifest['source']} -> {manifest['config']['output']} ({manifest['format']})",
                               manifest))


@app.command("import")
def import_command(
    files: list[Path] = typer.Argument(..., help="TALLRec JSON files (train.json valid.json test.json ...).",
                                       show_default=False),
    output: Path = output_option("Dataset folder to create.", required=True),
    fmt: DataFormat = typer.Option("jsonl", "--format", help="tallrec-json: a byte-identical re-write."),
    overwrite: bool = overwrite_option("an existing dataset folder"),
) -> None:
    """Validate TALLRec's JSON files and turn them into a dataset folder (each file stem is a split).

    Example:

    `tallrec data import TALLRec/data/book/valid.json TALLRec/data/book/test.json -o data/tallrec-book`
    """

    manifest = import_tallrec(files, output, fmt, overwrite)
    console.print(_split_table(f"imported -> {output}", manifest))


@app.command("sample")
def sample_command(
    dataset: Path = typer.Argument(..., help="Dataset folder (or one .jsonl/.json file).", show_default=False),
    output: Path = output_option("Folder for the subsets.", required=True),
    shots: str = typer.Option("16,64,256", "--shots", help="Comma-separated subset sizes."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Comma-separated seeds."),
    stratify: bool = flag("--stratify", "Keep the pool's label balance (nested subsets)."),
    split: str = typer.Option("train", "--split", help="Split to draw from."),
    overwrite: bool = overwrite_option("an existing sample folder"),
) -> None:
    """Draw few-shot training subsets TALLRec's way (`Dataset.shuffle(seed).select(range(k))`).

    Example:

    `tallrec data sample data/movie --shots 16,64,256 --seeds 0,1,2 -o data/movie-shots`
    """

    manifest = write_samples(dataset, output, parse_int_list(shots, "shots", 1), parse_int_list(seeds, "seeds"),
                             stratify, split, overwrite)
    rows = [(name, f["shots"], f["seed"], f["positives"]) for name, f in manifest["files"].items()]
    console.print(table(f"{len(rows)} subsets of {manifest['pool_records']} {split} records -> {output}",
                        ["file", "shots", "seed", "positives"], rows))


@app.command("stats")
def stats_command(
    dataset: Path = typer.Argument(..., help="Dataset folder.", show_default=False),
    tokenizer: str = typer.Option(None, "--tokenizer", help="Model whose tokenizer measures prompt lengths in "
                                  "tokens: a local folder, a .gguf file or smollm2-135m.", show_default=False),
) -> None:
    """Per-split sizes, label balance, history and prompt lengths (characters, and tokens with --tokenizer).

    Example:

    `tallrec data stats data/movie --tokenizer smollm2-135m`
    """

    rows = dataset_stats(dataset, load_tokenizer(resolve_model_source(tokenizer)) if tokenizer else None)
    columns = ["split", "records", "users", "items", "positive_rate", "history_mean",
               "chars_mean", "chars_p95", "chars_max"]
    if tokenizer:
        columns += ["tokens_mean", "tokens_p95", "tokens_max"]
    console.print(table(f"{dataset}", [c.replace("_", " ") for c in columns], [[r[c] for c in columns] for r in rows]))
