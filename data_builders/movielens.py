"""MovieLens 100K (u.data, u.item), 1M (ratings.dat, movies.dat) and latest (ratings.csv, movies.csv)."""

from __future__ import annotations

import csv
from pathlib import Path

from data_builders.interactions import Interactions, assemble
from data_builders.readers import (
    Report,
    parse_numbers,
    read_csv_fast,
    read_delimited,
    require_files,
    resolve_encoding,
)

COLUMNS = ["user_id", "item_id", "rating", "timestamp"]
ID_TYPES = {"user_id": str, "item_id": str}
BUNDLED_LATEST = Path(__file__).parent / "bundled" / "ml-latest-small"
FILES = {
    "movielens-100k": ["u.data", "u.item"],
    "movielens-1m": ["ratings.dat", "movies.dat"],
    "movielens-latest": ["ratings.csv", "movies.csv"],
}


def read_100k(folder: Path, encoding: str, report: Report) -> Interactions:
    data, item = require_files(folder, FILES["movielens-100k"], "movielens-100k")
    # u.data: user \t item \t rating \t timestamp; u.item: id|title|date|...; titles may hold quotes
    ratings = read_delimited(data, report, sep="\t", names=COLUMNS, header=False, quoting=csv.QUOTE_NONE,
                             encoding=resolve_encoding(data, encoding, report), dtype=ID_TYPES)
    ratings = parse_numbers(ratings, {"rating": False, "timestamp": True}, data, report, first_line=1)
    items = read_delimited(item, report, sep="|", usecols=[0, 1], header=False, quoting=csv.QUOTE_NONE,
                           encoding=resolve_encoding(item, encoding, report))
    return assemble(ratings, items.set_index(0)[1], [data, item], report, item.name)


def read_1m(folder: Path, encoding: str, report: Report) -> Interactions:
    data, movies = require_files(folder, FILES["movielens-1m"], "movielens-1m")

    def read_dat(path: Path, names: list[str], dtype: type | dict = str):
        # '::' never occurs inside a field, so it becomes a tab for pandas' fast C parser
        text = path.read_text(encoding=resolve_encoding(path, encoding, report)).replace("::", "\t")
        return read_delimited(path, report, sep="\t", names=names, header=False, quoting=csv.QUOTE_NONE,
                              encoding="utf-8", text=text, dtype=dtype)

    ratings = parse_numbers(read_dat(data, COLUMNS, ID_TYPES), {"rating": False, "timestamp": True}, data, report, 1)
    items = read_dat(movies, ["item_id", "title", "genres"])
    return assemble(ratings, items.set_index("item_id")["title"], [data, movies], report, movies.name)


def read_latest(folder: Path | None, encoding: str, report: Report) -> Interactions:
    if folder is None:
        folder = BUNDLED_LATEST
        report.note("no --path given: using the bundled ml-latest-small (GroupLens licence in its README.txt)")
    data, movies = require_files(folder, FILES["movielens-latest"], "movielens-latest")
    # the full ml-latest has 33M ratings: pyarrow's parser keeps that quick
    ratings = read_csv_fast(data, report, sep=",", columns=["userId", "movieId", "rating", "timestamp"],
                            text=["userId", "movieId"], encoding=resolve_encoding(data, encoding, report))
    ratings.columns = COLUMNS
    ratings = parse_numbers(ratings, {"rating": False, "timestamp": True}, data, report, first_line=2)
    items = read_delimited(movies, report, sep=",", header=True, usecols=["movieId", "title"],
                           encoding=resolve_encoding(movies, encoding, report))
    return assemble(ratings, items.set_index("movieId")["title"], [data, movies], report, movies.name)
