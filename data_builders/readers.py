"""Reading raw publisher files: encodings, expected files, malformed rows (file:line or counted skips)."""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tallrec_cli.core.errors import DataError

_SKIP_HINT = "fix the row, or pass --skip-bad-rows to skip and count malformed rows"


@dataclass
class Report:
    """What a build noticed on the way: encoding fallbacks, skipped or dropped rows."""

    skip_bad_rows: bool = False
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def bad_row(self, where: str, reason: str, file: Path) -> None:
        """Fail on a malformed row, or count it when skipping is allowed."""
        if not self.skip_bad_rows:
            raise DataError(f"{where}: {reason}", _SKIP_HINT)
        self.skip(file, 1)

    def skip(self, file: Path, count: int) -> None:
        if count:
            self.skipped[file.name] = self.skipped.get(file.name, 0) + count

    def note(self, text: str) -> None:
        self.notes.append(text)


def require_files(folder: Path, names: list[str], source: str) -> list[Path]:
    """The raw files a source needs, or one error naming all of them and where they were looked for."""
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder (the {source} source expects one holding {', '.join(names)})",
                        "pass the folder that holds the raw files with --path, or use --download for MovieLens")
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{folder} lacks {', '.join(missing)} (the {source} source expects {', '.join(names)})",
                        "pass the folder that holds the raw files with --path, or use --download for MovieLens")
    return [folder / name for name in names]


def read_chunks(path: Path) -> Iterator[bytes]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        yield from iter(lambda: handle.read(1 << 22), b"")


def resolve_encoding(path: Path, requested: str, report: Report) -> str:
    """``auto``: UTF-8 when the whole file decodes as UTF-8, else latin-1 (with a note in the manifest)."""
    if requested != "auto":
        try:
            codecs.lookup(requested)
        except LookupError:
            raise DataError(f"unknown encoding '{requested}'", "use e.g. --set encoding=latin-1 or utf-8") from None
        return requested
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        for chunk in read_chunks(path):
            decoder.decode(chunk)
        decoder.decode(b"", final=True)
        return "utf-8"
    except UnicodeDecodeError:
        report.note(f"{path.name} is not valid UTF-8: read as latin-1 (pass --set encoding=... to choose)")
        return "latin-1"


_FIELD_COUNT = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


def read_delimited(path: Path, report: Report, *, sep: str, names: list[str] | None = None,
                   usecols: list | None = None, header: bool, encoding: str, dtype: type | dict = str,
                   quoting: int = csv.QUOTE_MINIMAL, escapechar: str | None = None,
                   text: str | None = None) -> pd.DataFrame:
    """Read a delimited file (text columns unless ``dtype`` says which are text: pandas' C parser reads
    numbers far faster than ``to_numeric`` on text); rows with too many fields fail (file:line) or are counted.

    ``text`` replaces the file's content (already decoded), e.g. after turning MovieLens-1M's ``::`` into tabs.
    """
    source = io.StringIO(text) if text is not None else path
    kwargs = dict(sep=sep, header=0 if header else None, names=names, usecols=usecols, dtype=dtype,
                  keep_default_na=False, na_filter=False, quoting=quoting, escapechar=escapechar,
                  encoding=None if text is not None else encoding, engine="c")
    try:
        if report.skip_bad_rows:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                frame = pd.read_csv(source, on_bad_lines="warn", **kwargs)
            report.skip(path, sum(str(w.message).count("Skipping line") for w in caught))
            return frame
        return pd.read_csv(source, on_bad_lines="error", **kwargs)
    except pd.errors.ParserError as exc:
        match = _FIELD_COUNT.search(str(exc))
        if match:
            expected, line, seen = match.groups()
            raise DataError(f"{path}:{line}: expected {expected} fields, found {seen}", _SKIP_HINT) from None
        raise DataError(f"{path}: cannot be parsed ({str(exc).strip().splitlines()[-1]})", _SKIP_HINT) from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty", "pass the complete raw file") from None
    except ValueError as exc:  # usecols naming columns the file lacks
        raise DataError(f"{path}: {exc}", "check the column names") from None


def read_csv_fast(path: Path, report: Report, *, sep: str, columns: list[str], text: list[str],
                  encoding: str) -> pd.DataFrame:
    """Read named columns of a headed CSV with pyarrow's multi-threaded parser (large logs).

    A malformed row is only counted here: when rows may not be skipped the file is re-read with
    ``read_delimited``, whose error names the file and line.
    """
    import pyarrow as pa
    from pyarrow import csv as pa_csv

    invalid = 0

    def on_invalid(row) -> str:
        nonlocal invalid
        invalid += 1
        return "skip"

    try:
        table = pa_csv.read_csv(
            path, read_options=pa_csv.ReadOptions(encoding=encoding),
            parse_options=pa_csv.ParseOptions(delimiter=sep, invalid_row_handler=on_invalid),
            convert_options=pa_csv.ConvertOptions(include_columns=columns,
                                                  column_types={name: pa.string() for name in text},
                                                  strings_can_be_null=False, quoted_strings_can_be_null=False))
    except pa.ArrowInvalid as exc:
        raise DataError(f"{path}: cannot be parsed ({str(exc).splitlines()[0]})", _SKIP_HINT) from None
    if invalid and not report.skip_bad_rows:
        read_delimited(path, report, sep=sep, header=True, encoding=encoding)  # all columns: counts are checked
        raise DataError(f"{path}: {invalid} malformed row(s)", _SKIP_HINT)
    report.skip(path, invalid)
    return table.to_pandas()[columns]


def parse_numbers(frame: pd.DataFrame, columns: dict[str, bool], path: Path, report: Report,
                  first_line: int) -> pd.DataFrame:
    """Parse text columns as numbers (``{column: integer?}``); a row with a bad value fails naming
    file:line, or is dropped and counted once."""
    bad = pd.Series(False, index=frame.index)
    reasons = {}
    for column, integer in columns.items():
        raw = frame[column]
        values = pd.to_numeric(raw, errors="coerce")
        column_bad = values.isna()
        if integer:
            column_bad |= values.notna() & (values != values.round())
        if column_bad.any():
            position = int(column_bad.to_numpy().argmax())
            value = raw.iloc[position]
            kind = "an integer" if integer else "a number"
            reasons[position] = f"{column} is missing" if pd.isna(value) or value == "" else \
                f"{column} {value!r} is not {kind}"
        frame[column] = values
        bad |= column_bad
    if reasons and not report.skip_bad_rows:
        position = min(reasons)
        report.bad_row(f"{path}:{position + first_line}", reasons[position], path)
    report.skip(path, int(bad.sum()))
    return frame[~bad]


def require_complete(frame: pd.DataFrame, path: Path, report: Report, first_line: int) -> pd.DataFrame:
    """Drop (or fail on) rows whose last field is empty: with every field quoted, that means a stray
    quote merged fields (a known Book-Crossing defect such as ``...Readers)\\";"Author"``)."""
    short = frame[frame.columns[-1]] == ""
    if short.any():
        position = int(short.to_numpy().argmax())
        if not report.skip_bad_rows:
            report.bad_row(f"{path}:{position + first_line}",
                           f"expected {len(frame.columns)} fields, found fewer (a stray quote?)", path)
        report.skip(path, int(short.sum()))
    return frame[~short]
