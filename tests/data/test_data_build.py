"""`data build`: TALLRec byte-exactness, every source's raw format, and clean failures."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from data_builders import load_split
from data_builders.build import build_config, build_dataset
from tallrec_cli.core.errors import ConfigError, DataError, TallrecError
from tallrec_cli.core.files import read_jsonl, sha256_file
from tallrec_cli.core.manifests import read_manifest

FIXTURES = Path(__file__).parents[1] / "fixtures" / "data"
TALLREC_MOVIE_SHA256 = {
    "train.json": "460a86393450916596057967c7672c909edc9e73c7f61571c6a274659ffbdc53",
    "valid.json": "d4aa0c005868aef9b8a85583db946662a2be9c2e0e09f810fe3a7ad31d89274f",
    "test.json": "474e02cde467c8c7001168a4a390a581217edcd8f4726c39aa88c9aa37c54d5e",
}
RECORD_KEYS = ["instruction", "input", "output", "id", "user_id", "item_id", "label", "timestamp",
               "history", "target_title", "template", "variant", "domain"]


def build(source: str, output: Path, preset: str | None = None, **values) -> dict:
    return build_dataset(build_config(source, preset, {"output": str(output), **values}))


def records(folder: Path) -> dict[str, list[dict]]:
    return {split: read_jsonl(folder / f"{split}.jsonl") for split in ("train", "valid", "test")}


def test_movielens_100k_tallrec_preset_is_byte_exact(real_data, tmp_path):
    build("movielens-100k", tmp_path / "movie", "tallrec", path=str(real_data / "ml-100k"), format="tallrec-json")
    assert {name: sha256_file(tmp_path / "movie" / name) for name in TALLREC_MOVIE_SHA256} == TALLREC_MOVIE_SHA256


def test_movielens_100k_jsonl_records_and_manifest(real_data, tmp_path):
    manifest = build("movielens-100k", tmp_path / "movie", path=str(real_data / "ml-100k"))
    splits = records(tmp_path / "movie")
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [8000, 1000, 1000]
    first = splits["train"][0]
    assert list(first) == RECORD_KEYS
    assert len(first["history"]) == 10 and first["domain"] == "movie" and first["template"] == "tallrec-movie"
    assert first["label"] == (first["output"] == "Yes.") and isinstance(first["timestamp"], int)
    assert len({r["id"] for s in splits.values() for r in s}) == 10000
    # the JSONL prompt parts equal TALLRec's file
    tallrec_dir = tmp_path / "tallrec"
    build("movielens-100k", tallrec_dir, "tallrec", path=str(real_data / "ml-100k"), format="tallrec-json")
    original = json.loads((tallrec_dir / "test.json").read_text())
    assert [{k: r[k] for k in ("instruction", "input", "output")} for r in splits["test"]] == original
    saved = read_manifest(tmp_path / "movie", "dataset")
    assert saved["splits"]["train"]["records"] == 8000
    assert saved["splits"]["test"]["positives"] == sum(r["label"] for r in splits["test"])
    assert saved["template"] == {"name": "tallrec-movie", "variants": 1, "outputs": {"yes": "Yes.", "no": "No."}}
    assert saved["config"]["like_threshold"] == 3.0 and saved["config"]["min_history"] == 10
    assert {Path(f["path"]).name: f["sha256"] for f in saved["source_files"]}["u.data"] == \
        "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"
    assert any("u.item is not valid UTF-8" in note for note in manifest["notes"])


def test_movielens_latest_bundled_is_the_default_and_matches_shared(real_data, tmp_path):
    bundled = build("movielens-latest", tmp_path / "bundled")
    shared = build("movielens-latest", tmp_path / "shared", path=str(real_data / "ml-latest-small"))
    assert [f["sha256"] for f in bundled["source_files"]] == [f["sha256"] for f in shared["source_files"]]
    assert (tmp_path / "bundled" / "train.jsonl").read_bytes() == (tmp_path / "shared" / "train.jsonl").read_bytes()
    titles = [r["input"] for r in records(tmp_path / "bundled")["train"]]
    assert any(', The (' in text for text in titles)  # quoted CSV titles with commas survive


def test_movielens_1m_reads_double_colon_latin1_and_keeps_tie_order(tmp_path):
    build("movielens-1m", tmp_path / "m1", path=str(FIXTURES / "ml-1m"), history_len=3,
          split="leave-last-out", max_records=None)
    rows = [r for split in records(tmp_path / "m1").values() for r in split]
    assert any("Misérables, Les (1995)" in r["input"] for r in rows)
    ratings = pd.read_csv(FIXTURES / "ml-1m" / "ratings.dat", sep="::", engine="python", header=None, dtype=str)
    user1 = ratings[ratings[0] == "1"].reset_index(drop=True)
    # stable sort by time: ties stay in file order
    expected = user1.assign(t=user1[3].astype(int)).sort_values("t", kind="stable")[1].tolist()
    by_id = {r["id"]: r for r in rows if r["user_id"] == "1"}
    assert [item["item_id"] for item in by_id["1:8"]["history"]] == expected[5:8] and by_id["1:8"]["item_id"] == expected[8]


def test_bookcrossing_published_format(tmp_path):
    manifest = build("bookcrossing", tmp_path / "bx", path=str(FIXTURES / "bookcrossing"), split="user")
    rows = [r for split in records(tmp_path / "bx").values() for r in split]
    texts = "\n".join(r["input"] for r in rows)
    assert manifest["config"]["like_threshold"] == 5.0 and manifest["config"]["min_history"] == 3
    assert all(r["timestamp"] is None and r["domain"] == "book" for r in rows)
    assert all(r["item_id"] != "034545104X" for r in rows)  # not in BX-Books.csv: dropped and noted
    assert any("no title in BX-Books.csv" in note for note in manifest["notes"])
    assert any("implicit ratings (0) left out" in note for note in manifest["notes"])
    ratings = pd.read_csv(FIXTURES / "bookcrossing" / "BX-Book-Ratings.csv", sep=";", dtype=str, encoding="latin-1")
    explicit = ratings[ratings["Book-Rating"] != "0"]
    for record in rows:
        rating = explicit[(explicit["User-ID"] == record["user_id"]) & (explicit["ISBN"] == record["item_id"])]
        assert record["label"] == int(int(rating["Book-Rating"].iloc[0]) > 5)
    assert "written by" in texts and "\\" not in texts


def test_bookcrossing_item_text_and_target_quoting(tmp_path):
    build("bookcrossing", tmp_path / "bx", path=str(FIXTURES / "bookcrossing"), keep_implicit=True,
          max_records=None, split="leave-last-out")
    rows = [r for split in records(tmp_path / "bx").values() for r in split]
    texts = "\n".join(r["input"] for r in rows)
    assert '"Our Dumb Century; The Onion Presents 100 Years of Headlines" written by The Onion' in texts
    assert '"New Vegetarian: Bold and Beautiful Recipes for Every Occasion "Celia" Edition" written by' in texts
    assert '"Les Misérables" written by Victor Hugo' in texts
    target = next(r for r in rows if r["item_id"] == "0002005018")
    assert target["input"].endswith('target book ""Clara Callan" written by Richard Bruce Wright"?')


def test_bookcrossing_malformed_row_names_file_and_line_or_is_skipped(tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(FIXTURES / "bookcrossing", raw)
    with open(raw / "BX-Books.csv", "ab") as handle:  # a real BX defect: a stray \" before the separator
        handle.write(b'"078946697X";"DK Readers: Creating the X-Men, How It All Began (Level 4)\\";'
                     b'"Michael Teitelbaum";"2000";"DK Publishing Inc";"http://x/a.jpg";"http://x/b.jpg";'
                     b'"http://x/c.jpg"\r\n')
    with pytest.raises(DataError) as failure:
        build("bookcrossing", tmp_path / "out", path=str(raw))
    assert "BX-Books.csv:29" in failure.value.message and "--skip-bad-rows" in failure.value.hint
    assert not (tmp_path / "out").exists()
    manifest = build("bookcrossing", tmp_path / "out", path=str(raw), skip_bad_rows=True)
    assert manifest["skipped_rows"] == {"BX-Books.csv": 1}


def test_amazon_json_lines_gz_and_python_literal_meta(tmp_path):
    raw = tmp_path / "amazon"
    raw.mkdir()
    reviews = (FIXTURES / "amazon" / "reviews_Toys_and_Games_5.json").read_bytes()
    (raw / "reviews_Toys_and_Games_5.json.gz").write_bytes(gzip.compress(reviews))
    shutil.copy(FIXTURES / "amazon" / "meta_Toys_and_Games.json", raw)
    manifest = build("amazon", tmp_path / "out", path=str(raw), history_len=3, split="temporal", max_records=None)
    splits = records(tmp_path / "out")
    rows = [r for split in splits.values() for r in split]
    assert {r["domain"] for r in rows} == {"item"}
    assert any("Rubik's Cube" in r["input"] for r in rows)  # the one JSON meta line
    assert any('LEGO "Classic" Bricks \u2013 Deluxe' in r["input"] for r in rows)  # literal_eval meta line
    assert all(r["item_id"] != "B0000CBK1L" for r in rows)  # meta without a title
    assert max(r["timestamp"] for r in splits["train"]) <= min(r["timestamp"] for r in splits["test"])
    assert manifest["splits"]["train"]["records"] + manifest["splits"]["valid"]["records"] + \
        manifest["splits"]["test"]["records"] == manifest["records"] == len(rows)


def test_amazon_bad_review_line(tmp_path):
    raw = tmp_path / "amazon"
    shutil.copytree(FIXTURES / "amazon", raw)
    with open(raw / "reviews_Toys_and_Games_5.json", "a") as handle:
        handle.write('{"reviewerID": "A1", "asin": "B00004U9V2", "overall": 5.0}\n{"truncated": \n')
    with pytest.raises(DataError, match=r"reviews_Toys_and_Games_5.json:31: missing unixReviewTime"):
        build("amazon", tmp_path / "out", path=str(raw), history_len=3)
    manifest = build("amazon", tmp_path / "out", path=str(raw), history_len=3, skip_bad_rows=True)
    assert manifest["skipped_rows"] == {"reviews_Toys_and_Games_5.json": 2}


def test_csv_source_column_mapping_dates_and_parquet(tmp_path):
    columns = {"user": "uid", "item": "iid", "rating": "stars", "timestamp": "when", "title": "name"}
    common = dict(items_path=str(FIXTURES / "csv" / "items.csv"), columns=columns, history_len=4, max_records=None)
    build("csv", tmp_path / "csv", path=str(FIXTURES / "csv" / "log.csv"), **common)
    log = pd.read_csv(FIXTURES / "csv" / "log.csv")
    log.to_parquet(tmp_path / "log.parquet")
    build("csv", tmp_path / "pq", path=str(tmp_path / "log.parquet"), **common)
    from_csv, from_parquet = records(tmp_path / "csv"), records(tmp_path / "pq")
    assert from_csv == from_parquet
    first = from_csv["train"][0]
    assert first["timestamp"] == int(pd.Timestamp(log["when"].iloc[4], tz="UTC").timestamp())
    assert '"Item ' in first["input"] and ", volume " in first["input"]


def test_csv_unknown_columns_list_the_columns_found(tmp_path):
    with pytest.raises(DataError) as failure:
        build("csv", tmp_path / "out", path=str(FIXTURES / "csv" / "log.csv"))
    assert "columns found: uid, iid, stars, when" in failure.value.message
    assert "--user-col" in failure.value.hint


def test_malformed_value_names_file_and_line(tmp_path):
    raw = tmp_path / "ml"
    shutil.copytree(FIXTURES / "ml-1m", raw)
    text = (raw / "ratings.dat").read_text().splitlines()
    text[4] = "2::3::five::978302000"
    (raw / "ratings.dat").write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=r"ratings.dat:5: rating 'five' is not a number"):
        build("movielens-1m", tmp_path / "out", path=str(raw), history_len=3)
    manifest = build("movielens-1m", tmp_path / "out", path=str(raw), history_len=3, skip_bad_rows=True)
    assert manifest["skipped_rows"] == {"ratings.dat": 1}


def test_too_many_fields_names_file_and_line(real_data, tmp_path):
    raw = tmp_path / "ml"
    raw.mkdir()
    shutil.copy(real_data / "ml-100k" / "u.item", raw)
    lines = (real_data / "ml-100k" / "u.data").read_text().splitlines()[:2000]
    lines[9] += "\textra"
    (raw / "u.data").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"u.data:10: expected 4 fields, found 5"):
        build("movielens-100k", tmp_path / "out", path=str(raw))


def test_missing_files_are_named(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "u.data").write_text("1\t1\t5\t1\n")
    with pytest.raises(DataError) as failure:
        build("movielens-100k", tmp_path / "out", path=str(tmp_path / "raw"))
    assert "lacks u.item" in failure.value.message and str(tmp_path / "raw") in failure.value.message
    with pytest.raises(DataError, match="BX-Book-Ratings.csv, BX-Books.csv"):
        build("bookcrossing", tmp_path / "out", path=str(tmp_path / "raw"))
    with pytest.raises(DataError) as failure:
        build("movielens-1m", tmp_path / "out")
    assert "--path" in failure.value.hint and "--download" in failure.value.hint


def test_one_class_and_empty_results_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="every record is disliked"):
        build("movielens-1m", tmp_path / "out", path=str(FIXTURES / "ml-1m"), history_len=3, like_threshold=5)
    with pytest.raises(DataError, match="no records: no user has more than 20 ratings"):
        build("movielens-1m", tmp_path / "out", path=str(FIXTURES / "ml-1m"), history_len=20)
    assert not (tmp_path / "out").exists()


def test_encoding_override_and_latin1_fallback(tmp_path):
    auto = build("movielens-1m", tmp_path / "auto", path=str(FIXTURES / "ml-1m"), history_len=3)
    assert any("movies.dat is not valid UTF-8" in note for note in auto["notes"])
    forced = build("movielens-1m", tmp_path / "cp", path=str(FIXTURES / "ml-1m"), history_len=3, encoding="cp1252")
    assert not forced["notes"]
    with pytest.raises(DataError, match="unknown encoding"):
        build("movielens-1m", tmp_path / "bad", path=str(FIXTURES / "ml-1m"), encoding="klingon")


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    build("movielens-1m", out, path=str(FIXTURES / "ml-1m"), history_len=3)  # --overwrite replaces a dataset only
    (out / "keep.txt").write_text("mine")
    with pytest.raises(TallrecError, match="already exists"):
        build("movielens-1m", out, path=str(FIXTURES / "ml-1m"), history_len=3)
    assert (out / "keep.txt").read_text() == "mine"
    build("movielens-1m", out, path=str(FIXTURES / "ml-1m"), history_len=3, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "manifest.json").exists()


def test_config_problems_are_reported_together(tmp_path):
    with pytest.raises(ConfigError) as failure:
        build_config("movielens-1m", None, {"split": "random", "history_len": "ten", "bogus": 1})
    message = failure.value.message
    assert "split" in message and "history_len" in message and "unknown key 'bogus'" in message
    with pytest.raises(ConfigError, match="unknown preset"):
        build_config("movielens-1m", "nope")
    with pytest.raises(ConfigError, match="temporal split needs timestamps"):
        build("bookcrossing", tmp_path / "out", path=str(FIXTURES / "bookcrossing"), split="temporal")


def test_paraphrase_template_is_seeded_and_custom_templates_load(tmp_path):
    common = dict(path=str(FIXTURES / "ml-1m"), history_len=3, max_records=None, template="paraphrase-movie")
    build("movielens-1m", tmp_path / "a", seed=1, **common)
    build("movielens-1m", tmp_path / "b", seed=1, **common)
    build("movielens-1m", tmp_path / "c", seed=2, **common)
    a, b, c = (load_split(tmp_path / name, "train") for name in "abc")
    assert a == b and a != c
    assert len({r["instruction"] for r in a}) > 1
    custom = tmp_path / "mine.yaml"
    custom.write_text("name: mine\nhistory_item: '<{item}>'\ntarget_item: '[{item}]'\nseparator: ' | '\n"
                      "outputs: {yes: 'Y', no: 'N'}\nvariants:\n  - instruction: Rate.\n"
                      "    input: '+{liked} -{disliked} ?{target}'\n")
    manifest = build("movielens-1m", tmp_path / "d", path=str(FIXTURES / "ml-1m"), history_len=3,
                     template=str(custom))
    rows = load_split(tmp_path / "d", "train")
    assert manifest["template"]["outputs"] == {"yes": "Y", "no": "N"}
    assert {r["output"] for r in rows} == {"Y", "N"} and rows[0]["input"].startswith(("+<", "+ -"))
    with pytest.raises(ConfigError, match="not found"):
        build("movielens-1m", tmp_path / "e", path=str(FIXTURES / "ml-1m"), template="nope")


def test_csv_malformed_row_is_located_or_skipped(tmp_path):
    log = tmp_path / "log.csv"
    lines = (FIXTURES / "csv" / "log.csv").read_text().splitlines()
    lines[6] += ",surplus"
    log.write_text("\n".join(lines) + "\n")
    common = dict(path=str(log), columns={"user": "uid", "item": "iid", "rating": "stars", "timestamp": "when"},
                  history_len=3)
    with pytest.raises(DataError, match=r"log.csv:7: expected 4 fields, found 5"):
        build("csv", tmp_path / "out", **common)
    manifest = build("csv", tmp_path / "out", skip_bad_rows=True, **common)
    assert manifest["skipped_rows"] == {"log.csv": 1}
    assert any("prompts show item ids" in note for note in manifest["notes"])
