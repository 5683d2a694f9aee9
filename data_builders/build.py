"""`tallrec data build`: raw source -> split records -> dataset folder with manifest (built atomically)."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_builders import amazon, bookcrossing, csv_source, movielens
from data_builders.config import PRESETS_DIR, BuildConfig, preset_names
from data_builders.context import ContextAdder
from data_builders.dataset import write_tallrec_json
from data_builders.download import ARCHIVES, fetch_movielens
from data_builders.interactions import Interactions
from data_builders.readers import Report
from data_builders.records import SPLIT_NAMES, Examples, Renderer, make_examples
from data_builders.selection import HistorySelector, ItemVectors, collaborative_vectors, text_vectors
from data_builders.templates import load_record_template
from tallrec_cli.core.config import deep_merge, from_dict, read_yaml, to_dict
from tallrec_cli.core.errors import ConfigError, DataError
from tallrec_cli.core.files import refuse_overlap, sha256_file, staged_dir, write_jsonl_atomic
from tallrec_cli.core.integrity import RECORDED_FILES, record_files
from tallrec_cli.core.manifests import write_manifest

Progress = Callable[[str, int | None, int], None]


@dataclass(frozen=True)
class SourceDefaults:
    domain: str
    template: str
    like_threshold: float
    min_history: int | None  # None: the history length


SOURCE_DEFAULTS = {
    "movielens-100k": SourceDefaults("movie", "tallrec-movie", 3.0, None),
    "movielens-1m": SourceDefaults("movie", "tallrec-movie", 3.0, None),
    "movielens-latest": SourceDefaults("movie", "tallrec-movie", 3.0, None),
    # TALLRec kept Book-Crossing users with more than 3 ratings: at least 3 earlier ones per record
    "bookcrossing": SourceDefaults("book", "tallrec-book", 5.0, 3),
    "amazon": SourceDefaults("item", "tallrec-item", 3.0, None),
    "csv": SourceDefaults("item", "tallrec-item", 3.0, None),
}


def build_config(source: str, preset: str | None = None, values: dict[str, Any] | None = None) -> BuildConfig:
    """Preset YAML < explicit values (flags and ``--set``) -> validated config for ``source``."""
    data: dict[str, Any] = {}
    if preset:
        path = PRESETS_DIR / f"{preset}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown preset '{preset}'", f"use one of {', '.join(preset_names())}")
        data = read_yaml(path)
    data = deep_merge(data, {**(values or {}), "source": source})
    return from_dict(BuildConfig, data, source=f"data build {source}")


def resolve(config: BuildConfig) -> BuildConfig:
    """Fill every ``null`` that means "the source's default", so the manifest records real values."""
    defaults = SOURCE_DEFAULTS[config.source]
    return dataclasses.replace(
        config,
        like_threshold=defaults.like_threshold if config.like_threshold is None else config.like_threshold,
        min_history=min(config.history_len, config.min_history if config.min_history is not None
                        else defaults.min_history if defaults.min_history is not None else config.history_len),
        template=config.template or defaults.template,
        history_pool=(config.history_len if config.history == "recent" else
                      config.history_pool if config.history_pool is not None else 3 * config.history_len),
        domain=config.domain or defaults.domain,
        output=config.output or str(Path("data") / config.source),
    )


def read_source(config: BuildConfig, report: Report, on_progress: Progress | None = None) -> Interactions:
    path = Path(config.path).expanduser() if config.path else None
    items_path = Path(config.items_path).expanduser() if config.items_path else None
    if config.download:
        if config.source not in ARCHIVES:
            raise ConfigError(f"--download is only for MovieLens, not {config.source}", "pass the files with --path")
        path = fetch_movielens(config.source, report, config.download_url, config.sha256,
                               on_progress and (lambda done, total: on_progress("download", total, done)))
    if config.source == "movielens-latest":
        return movielens.read_latest(path, config.encoding, report)
    if path is None and config.source not in ("amazon", "csv"):
        raise DataError(f"the {config.source} source needs the folder of raw files",
                        "pass it with --path" + (", or use --download" if config.source in ARCHIVES else ""))
    if config.source == "movielens-100k":
        return movielens.read_100k(path, config.encoding, report)
    if config.source == "movielens-1m":
        return movielens.read_1m(path, config.encoding, report)
    if config.source == "bookcrossing":
        return bookcrossing.read(path, config.encoding, report, config.keep_implicit)
    if config.source == "amazon":
        return amazon.read(path, items_path, config.encoding, report)
    return csv_source.read(path, items_path, config.columns, config.encoding, report)


def build_dataset(config: BuildConfig, on_progress: Progress | None = None) -> dict[str, Any]:
    """Build the dataset folder ``config.output``; return its manifest. Nothing is left behind on error."""
    config = resolve(config)
    refuse_overlap(config.output, (config.path, config.items_path))
    template = load_record_template(config.template)
    report = Report(skip_bad_rows=config.skip_bad_rows)
    with staged_dir(config.output, "dataset", overwrite=config.overwrite) as staging:
        interactions = read_source(config, report, on_progress)
        examples = make_examples(interactions, config.like_threshold, config.history_pool, config.min_history,
                                 config.max_records, config.split, config.split_ratios, config.seed,
                                 config.split_last)
        if examples.repeats_dropped:
            report.note(f"{examples.repeats_dropped} repeated (user, item, time) ratings dropped (the last is kept)")
        _check_examples(examples, config)
        if Path(config.template).suffix:  # a custom template file travels with the records it rendered
            shutil.copyfile(config.template, staging / "template.yaml")
        renderer = Renderer(examples, template, config.domain, config.seed)
        context = ContextAdder(examples, template.context_fields, config.seed) if template.uses_context else None
        vectors = _item_vectors(config, examples, on_progress)
        selector = (HistorySelector(config.history, config.history_len, vectors, interactions.item_ids, template)
                    if vectors is not None or context is not None else None)
        advance = on_progress and _counter(on_progress, "records", len(examples.target))
        files = {}
        for code, split in enumerate(SPLIT_NAMES):
            records = renderer.records(code, advance)
            if context is not None:
                records = context.records(code, split, records)
            if selector is not None:
                records = selector.records(records, training=split == "train")
            if config.format == "jsonl":
                files[split] = f"{split}.jsonl"
                write_jsonl_atomic(staging / files[split], records)
            else:
                files[split] = f"{split}.json"
                write_tallrec_json(staging / files[split], records)
        payload = {
            "source": config.source,
            "source_files": [{"path": str(path.resolve()), "sha256": sha256_file(path), "bytes": path.stat().st_size}
                             for path in interactions.files],
            "config": to_dict(config),
            "format": config.format,
            "files": files,
            RECORDED_FILES: record_files(staging, list(files.values())),
            "template": {"name": template.name, "variants": len(template.variants),
                         "outputs": {"yes": template.yes, "no": template.no}},
            "splits": _split_counts(examples),
            "records": int(len(examples.target)),
            "history": {"strategy": config.history, "k": config.history_len, "n": config.history_pool,
                        "similarity": vectors.source if vectors is not None else None,
                        "training_views": 2 if config.history == "mixed" else 1},
            "context": {"fields": list(context.fields),
                        "from": "training split (counts ordered, cf_like cross-fitted for training records)",
                        "cold": context.cold} if context is not None else None,
            "ratings_used": len(interactions),
            "notes": report.notes,
            "skipped_rows": report.skipped,
        }
        write_manifest(staging, "dataset", payload)
    return payload


def _item_vectors(config: BuildConfig, examples: Examples, on_progress: Progress | None) -> ItemVectors | None:
    """Item vectors for relevant/mixed histories: collaborative from the training split, or title texts."""
    if config.history == "recent":
        return None
    if config.similarity == "collaborative":
        return collaborative_vectors(examples)
    titles = examples.interactions.item_text
    if not all(title.strip() for title in titles):
        raise DataError("similarity=text needs every item's text, and this source has items without one",
                        "use --set similarity=collaborative")
    return text_vectors(titles, config.embed_model,
                        on_progress=on_progress and (lambda done, total: on_progress("embeddings", total, done)))


def _counter(on_progress: Progress, task: str, total: int) -> Callable[[int], None]:
    done = 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        on_progress(task, total, done)

    return advance


def _check_examples(examples: Examples, config: BuildConfig) -> None:
    if not len(examples.target):
        interactions = examples.interactions
        raise DataError(f"no records: no user has more than {config.min_history} ratings "
                        f"({len(interactions)} ratings, {len(interactions.user_ids)} users)",
                        "lower --history-len or --set min_history=N")
    positives = int(examples.labels().sum())
    if positives in (0, len(examples.target)):
        which = "liked" if positives else "disliked"
        raise DataError(f"every record is {which} with like_threshold {config.like_threshold} (rating > threshold)",
                        "choose a threshold inside the rating range with --set like_threshold=...")


def _split_counts(examples: Examples) -> dict[str, dict[str, Any]]:
    counts = {}
    labels, users = examples.labels(), examples.target_users()
    for code, split in enumerate(SPLIT_NAMES):
        chosen = examples.split == code
        records, positives = int(chosen.sum()), int(labels[chosen].sum())
        counts[split] = {"records": records, "positives": positives, "negatives": records - positives,
                         "positive_rate": round(positives / records, 6) if records else None,
                         "users": int(len(np.unique(users[chosen])))}
    return counts
