"""Any rating log as CSV/TSV or Parquet, with the column names given in ``columns`` (``--user-col`` ...)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from data_builders.config import ColumnMap
from data_builders.interactions import Interactions, assemble
from data_builders.readers import Report, parse_numbers, read_csv_fast, resolve_encoding
from tallrec_cli.core.errors import DataError


def _read_table(path: Path, wanted: list[str], text: list[str], sep: str | None, encoding: str,
                report: Report, option: str = "--path") -> pd.DataFrame:
    """The ``wanted`` columns; from CSV the ``text`` ones are read as text (ids keep their spelling, "007").
    ``option`` is the one that named ``path``, for the hint when it does not exist."""
    if not path.is_file():
        what = "the item-title file" if option == "--items" else "the rating log"
        raise DataError(f"{path} does not exist", f"pass {what} (CSV, TSV or Parquet) with {option}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        found = pq.read_schema(path).names
        _check_columns(path, wanted, found)
        # ids keep their Parquet type: integer codes are far cheaper to factorize than strings
        return pd.read_parquet(path, columns=wanted)
    sep = sep or ("\t" if path.suffix in (".tsv", ".tab") else ",")
    encoding = resolve_encoding(path, encoding, report)
    _check_columns(path, wanted, list(pd.read_csv(path, sep=sep, nrows=0, encoding=encoding).columns))
    return read_csv_fast(path, report, sep=sep, columns=wanted, text=text, encoding=encoding)


def _check_columns(path: Path, wanted: list[str], found: list[str]) -> None:
    missing = [name for name in wanted if name not in found]
    if missing:
        raise DataError(f"{path} has no column {', '.join(repr(m) for m in missing)}; columns found: "
                        f"{', '.join(map(str, found))}",
                        "name the columns with --user-col/--item-col/--rating-col/--time-col "
                        "(--items-id-col/--items-title-col for the item file)")


def read(path: Path | None, items_path: Path | None, columns: ColumnMap, encoding: str,
         report: Report) -> Interactions:
    if path is None:
        raise DataError("the csv source needs the rating log", "pass --path ratings.csv (or .tsv/.parquet)")
    wanted = [columns.user, columns.item, columns.rating] + ([columns.timestamp] if columns.timestamp else [])
    frame = _read_table(path, wanted, [columns.user, columns.item], columns.sep, encoding, report)
    frame = frame.rename(columns={columns.user: "user_id", columns.item: "item_id", columns.rating: "rating"})
    frame = parse_numbers(frame, {"rating": False}, path, report, first_line=2)
    if columns.timestamp:
        frame = frame.rename(columns={columns.timestamp: "timestamp"})
        frame = _parse_times(frame, path, report)
    else:
        frame["timestamp"] = None
        report.note(f"{path.name}: no time column, each user's ratings are ordered as in the file")
    files = [path]
    if items_path is None:
        report.note("no item file (--items): prompts show item ids")
        titles = pd.Series(frame["item_id"].unique(), index=frame["item_id"].unique())
    else:
        id_column = columns.item_id or columns.item
        items = _read_table(items_path, [id_column, columns.title], [id_column, columns.title], columns.sep, encoding,
                            report, "--items")
        titles = items.set_index(id_column)[columns.title]
        files.append(items_path)
    return assemble(frame, titles, files, report, items_path.name if items_path else path.name)


def _parse_times(frame: pd.DataFrame, path: Path, report: Report) -> pd.DataFrame:
    """Epoch seconds as they are; dates and datetimes become epoch seconds (UTC)."""
    if pd.api.types.is_datetime64_any_dtype(frame["timestamp"]):  # Parquet timestamps
        frame = frame.dropna(subset=["timestamp"]).copy()
        frame["timestamp"] = frame["timestamp"].astype("datetime64[s]").astype("int64")
        return frame
    as_numbers = pd.to_numeric(frame["timestamp"], errors="coerce")
    if as_numbers.notna().mean() >= 0.5:
        return parse_numbers(frame, {"timestamp": True}, path, report, first_line=2)
    dates = pd.to_datetime(frame["timestamp"], errors="coerce", utc=True)
    bad = dates.isna()
    if bad.any():
        position = int(bad.to_numpy().argmax())
        report.bad_row(f"{path}:{position + 2}", f"timestamp {frame['timestamp'].iloc[position]!r} is not a date",
                       path)
        report.skip(path, int(bad.sum()) - 1)
    frame = frame[~bad].copy()
    frame["timestamp"] = (dates[~bad] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    return frame
