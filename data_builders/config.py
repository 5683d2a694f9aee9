"""The one typed config of `tallrec data build`; every field is settable with ``--set key=value``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tallrec_cli.core.config import option

HISTORY_STRATEGIES = ("recent", "relevant", "mixed")
SIMILARITIES = ("collaborative", "text")

SOURCES = ("movielens-100k", "movielens-1m", "movielens-latest", "bookcrossing", "amazon", "csv")
SPLITS = ("tallrec", "leave-last-out", "last-n", "temporal", "user")
FORMATS = ("jsonl", "tallrec-json")
PRESETS_DIR = Path(__file__).parent / "presets"


@dataclass
class ColumnMap:
    """Column names of a `csv` source log and of its item-title file."""

    user: str = option("user_id", "column with the user id")
    item: str = option("item_id", "column with the item id")
    rating: str = option("rating", "column with the numeric rating")
    timestamp: str | None = option("timestamp", "column with the time (epoch seconds or a date); null: file order")
    item_id: str | None = option(None, "item-title file: id column (null: same name as `item`)")
    title: str = option("title", "item-title file: title column")
    sep: str | None = option(None, "field separator (null: from the extension, ',' or tab for .tsv)")


@dataclass
class BuildConfig:
    source: str = option("movielens-latest", "raw data format", choices=SOURCES)
    path: str | None = option(
        None, "folder (or file for amazon/csv) with the raw data; null: the bundled ml-latest-small for "
        "movielens-latest, or the download cache with `download: true`")
    items_path: str | None = option(None, "item-title file: Amazon meta JSON lines, or a CSV/Parquet for `csv`")
    output: str | None = option(None, "output folder (null: data/<source>)")
    format: str = option("jsonl", "jsonl (records with metadata) or tallrec-json (TALLRec's JSON arrays)",
                         choices=FORMATS)
    split: str = option("tallrec", "tallrec: by position 80/10/10 like TALLRec; leave-last-out: each user's last "
                        "record to test, second last to valid; last-n: each user's last `split_last` records to "
                        "test and the `split_last` before them to valid (many users, per-user AUC); temporal: by "
                        "time quantiles; user: random users", choices=SPLITS)
    split_last: int = option(5, "records per user in test, and in valid, for the last-n split")
    split_ratios: list[float] = option([0.8, 0.1, 0.1], "train/valid/test fractions (tallrec, temporal, user)")
    history_len: int = option(10, "previous interactions shown per record (K)")
    history: str = option("recent", "which K: recent (the last K), relevant (the K of the last history_pool most "
                          "similar to the target, in time order, ReLLa-style) or mixed (training records in both "
                          "views, validation and test relevant)", choices=HISTORY_STRATEGIES)
    history_pool: int | None = option(None, "N: interactions before the target that relevant/mixed choose from "
                                      "(null: 3 x history_len)")
    similarity: str = option("collaborative", "item vectors for relevance: collaborative (training split only) "
                             "or text (embed_model's mean-pooled title states)", choices=SIMILARITIES)
    embed_model: str | None = option(None, "model for similarity=text (e.g. smollm2-135m or a local folder)")
    min_history: int | None = option(
        None, "fewest previous interactions a record needs (null: history_len; 3 for bookcrossing like TALLRec)")
    like_threshold: float | None = option(
        None, "liked = rating > threshold (null: 3 on 1-5 scales, 5 on Book-Crossing's 1-10)")
    keep_implicit: bool = option(False, "keep Book-Crossing's implicit rating 0 (it is then a dislike)")
    max_records: int | None = option(10000, "keep the last N records in user order, like TALLRec (null: all)")
    template: str | None = option(None, "template name in data_builders/templates or a YAML path "
                                  "(null: tallrec-movie, tallrec-book or tallrec-item by source)")
    domain: str | None = option(None, "domain recorded per record (null: movie, book or item by source)")
    seed: int = option(42, "seed for the user split and for drawing paraphrased templates")
    skip_bad_rows: bool = option(False, "skip malformed rows (counted in the manifest) instead of failing")
    encoding: str = option("auto", "text encoding of the raw files; auto: UTF-8, else latin-1 with a note")
    download: bool = option(False, "download the MovieLens archive (cached, sha256-verified)")
    download_url: str | None = option(None, "MovieLens base URL (null: $TALLREC_MOVIELENS_URL or grouplens.org)")
    sha256: str | None = option(None, "expected sha256 of the downloaded archive (needed for ml-1m pinning)")
    overwrite: bool = option(False, "replace an existing non-empty output folder")
    columns: ColumnMap = option(help="column names for the csv source", default_factory=ColumnMap)

    def check(self) -> list[str]:
        problems = []
        if self.history_len < 1:
            problems.append("history_len: must be at least 1")
        if self.history_pool is not None and self.history_pool < self.history_len:
            problems.append(f"history_pool: N={self.history_pool} is smaller than history_len K={self.history_len}; "
                            "relevant histories pick K of the last N")
        if self.history != "recent" and self.similarity == "text" and not self.embed_model:
            problems.append("embed_model: similarity=text needs a model for the title embeddings "
                            "(--set embed_model=smollm2-135m)")
        if self.min_history is not None and not 0 <= self.min_history <= self.history_len:
            problems.append("min_history: must be between 0 and history_len")
        if self.split_last < 1:
            problems.append("split_last: must be at least 1")
        if self.max_records is not None and self.max_records < 1:
            problems.append("max_records: must be at least 1 (null for all records)")
        if len(self.split_ratios) != 3 or any(r < 0 for r in self.split_ratios) or \
                abs(sum(self.split_ratios) - 1) > 1e-6:
            problems.append("split_ratios: three non-negative fractions that add up to 1, e.g. [0.8, 0.1, 0.1]")
        return problems


def preset_names() -> list[str]:
    return sorted(path.stem for path in PRESETS_DIR.glob("*.yaml"))
