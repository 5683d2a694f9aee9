"""Book-Crossing (BX-CSV-Dump): ``;``-separated, every field quoted, latin-1, ``\\"`` inside titles.

BX has no timestamps, so a user's ratings are ordered as they appear in BX-Book-Ratings.csv (file
order); records carry ``timestamp: null``. BX-Users.csv holds only location and age and is not read.
"""

from __future__ import annotations

from pathlib import Path

from data_builders.interactions import Interactions, assemble
from data_builders.readers import (
    Report,
    parse_numbers,
    read_delimited,
    require_complete,
    require_files,
    resolve_encoding,
)
from tallrec_cli.core.errors import DataError

FILES = ["BX-Book-Ratings.csv", "BX-Books.csv"]


def read(folder: Path, encoding: str, report: Report, keep_implicit: bool) -> Interactions:
    ratings_file, books_file = require_files(folder, FILES, "bookcrossing")
    ratings = read_delimited(ratings_file, report, sep=";", header=True, escapechar="\\",
                             encoding=resolve_encoding(ratings_file, encoding, report))
    _expect_columns(ratings, ["User-ID", "ISBN", "Book-Rating"], ratings_file)
    ratings = ratings.rename(columns={"User-ID": "user_id", "ISBN": "item_id", "Book-Rating": "rating"})
    ratings = parse_numbers(ratings, {"rating": True}, ratings_file, report, first_line=2)
    if not keep_implicit:
        implicit = ratings["rating"] == 0
        report.note(f"{int(implicit.sum())} implicit ratings (0) left out (--set keep_implicit=true keeps them)")
        ratings = ratings[~implicit]
    ratings["timestamp"] = None
    books = read_delimited(books_file, report, sep=";", header=True, escapechar="\\",
                           encoding=resolve_encoding(books_file, encoding, report))
    _expect_columns(books, ["ISBN", "Book-Title", "Book-Author"], books_file)
    books = require_complete(books, books_file, report, first_line=2)
    # TALLRec's item text: "<title>" written by <author>
    text = '"' + books["Book-Title"] + '" written by ' + books["Book-Author"]
    return assemble(ratings, text.set_axis(books["ISBN"]), [ratings_file, books_file], report, books_file.name)


def _expect_columns(frame, names: list[str], path: Path) -> None:
    missing = [name for name in names if name not in frame.columns]
    if missing:
        raise DataError(f"{path} lacks the column(s) {', '.join(missing)}; found {', '.join(map(str, frame.columns))}",
                        "pass the original BX-CSV-Dump files (';'-separated with a header row)")
