"""Records carry their structure: every shipped template round-trips, shortening re-renders through the
record's own template and keeps the target and the answer, imported TALLRec JSON is parsed once."""

from __future__ import annotations

import json

import pytest

from data_builders import load_split
from data_builders.build import build_config, build_dataset
from data_builders.importer import import_tallrec
from data_builders.structure import (
    HistoryItem,
    drop_history,
    find_template,
    history,
    parse_input,
    render_input,
    shortened,
    structure_fields,
)
from data_builders.templates import load_record_template, template_names
from tallrec_cli.train.data import fit_record

TITLES = ["Toy Story (1995)", "Heat (1995)", "Fargo (1996)", "Casino (1995)", "Babe (1995)", "Se7en (1995)"]


def structured_record(template_name: str, variant: int, length: int = 12) -> dict:
    template = load_record_template(template_name)
    # book templates print item texts as they are: TALLRec's book texts open with the quoted title
    form = '"{}" written by A. Author' if template.history_item == "{item}" else "{}"
    items = [HistoryItem(form.format(TITLES[k % len(TITLES)] + f" #{k}"), k % 3 != 0, str(k)) for k in range(length)]
    return {"instruction": template.variants[variant]["instruction"],
            "input": render_input(template, variant, items, "Jumanji (1995)"), "output": template.yes, "label": 1,
            "id": f"{template_name}-{variant}", **structure_fields(items, "Jumanji (1995)", template.name, variant)}


def every_variant():
    return [(name, variant) for name in template_names() for variant in range(len(load_record_template(name).variants))]


@pytest.mark.parametrize(("name", "variant"), every_variant())
def test_every_shipped_template_round_trips_through_its_text(name, variant):
    record = structured_record(name, variant)
    parsed = parse_input(record, [load_record_template(name)])
    assert parsed is not None
    assert [item["title"] for item in parsed["history"] if item["liked"]] == \
        [item.title for item in history(record) if item.liked]
    assert [item["title"] for item in parsed["history"] if not item["liked"]] == \
        [item.title for item in history(record) if not item.liked]
    assert parsed["target_title"] == "Jumanji (1995)" and parsed["template"] == name and parsed["variant"] == variant


@pytest.mark.parametrize(("name", "variant"), every_variant())
def test_shortening_re_renders_through_the_record_template(name, variant):
    template = load_record_template(name)
    record = structured_record(name, variant)
    short = shortened(record, 5, template)
    kept = history(short)
    assert len(kept) == 7 and short["target_title"] == record["target_title"]
    assert short["input"] == render_input(template, variant, kept, record["target_title"])
    assert short["input"] != record["input"] and template.target_item.format(item="Jumanji (1995)") in short["input"]
    assert short["output"] == record["output"] and short["instruction"] == record["instruction"]


def test_drop_history_takes_the_oldest_of_the_longer_side():
    items = [HistoryItem("a", True), HistoryItem("b", False), HistoryItem("c", True), HistoryItem("d", True)]
    assert [i.title for i in drop_history(items, 1)] == ["b", "c", "d"]
    assert [i.title for i in drop_history(items, 2)] == ["b", "d"]
    assert [i.title for i in drop_history(items, 9)] == []


@pytest.mark.parametrize("name", template_names())
def test_fit_record_shortens_every_template_and_keeps_answer_and_target(name, tiny_model_dir):
    from tallrec_cli.model.loading import load_tokenizer, resolve_model_source
    from tallrec_cli.model.prompts import load_template

    tokenizer = load_tokenizer(resolve_model_source(str(tiny_model_dir)))
    prompt = load_template("alpaca")
    for variant in range(len(load_record_template(name).variants)):
        record = structured_record(name, variant, length=30)
        completion = record["output"] + tokenizer.eos_token
        full = len(tokenizer(prompt.render(record, tokenizer) + completion)["input_ids"])
        fitted, cut = fit_record(record, tokenizer, prompt, completion, full - 40, load_record_template(name))
        assert cut and len(history(fitted)) < 30
        assert len(tokenizer(prompt.render(fitted, tokenizer) + completion)["input_ids"]) <= full - 40
        assert fitted["input"] == render_input(load_record_template(name), variant, history(fitted), "Jumanji (1995)")
        assert fitted["output"] == record["output"]


def test_a_custom_template_travels_with_the_dataset(tmp_path):
    custom = tmp_path / "mine.yaml"
    custom.write_text((load_record_template.__globals__["TEMPLATES_DIR"] / "tallrec-movie.yaml").read_text()
                      .replace("name: tallrec-movie", "name: mine").replace("User Preference", "Loved"))
    build_dataset(build_config("movielens-latest", None, {"output": str(tmp_path / "data"), "template": str(custom),
                                                          "max_records": 200}))
    record = load_split(tmp_path / "data", "train")[0]
    assert record["template"] == "mine" and record["input"].startswith("Loved: ")
    template = find_template("mine", tmp_path / "data")
    assert template is not None and shortened(record, 2, template)["input"].startswith("Loved: ")
    assert find_template("mine", tmp_path) is None


def test_built_records_render_from_their_structure(tmp_path):
    build_dataset(build_config("movielens-latest", None, {"output": str(tmp_path / "d"), "max_records": 300,
                                                          "template": "paraphrase-movie"}))
    for record in load_split(tmp_path / "d", "train"):
        template = find_template(record["template"])
        assert record["input"] == render_input(template, record["variant"], history(record), record["target_title"])
        assert len(record["history"]) == 10 and all(item["item_id"] for item in record["history"])


def test_imported_tallrec_json_is_parsed_once_into_the_same_fields(tmp_path):
    book = {"instruction": load_record_template("tallrec-book").variants[0]["instruction"], "output": "No.",
            "input": 'User Preference: "The Bean Trees" written by Barbara Kingsolver, "Sula" written by Toni Morrison\n'
                     'User Unpreference: \nWhether the user will like the target book ""Beloved" written by Toni '
                     'Morrison"?'}
    odd = dict(book, input="free text the template cannot give back")
    (tmp_path / "test.json").write_text(json.dumps([book, odd]))
    manifest = import_tallrec([tmp_path / "test.json"], tmp_path / "out")
    first, second = load_split(tmp_path / "out", "test")
    assert [item["title"] for item in first["history"]] == ['"The Bean Trees" written by Barbara Kingsolver',
                                                           '"Sula" written by Toni Morrison']
    assert first["target_title"] == '"Beloved" written by Toni Morrison' and first["template"] == "tallrec-book"
    assert "history" not in second and manifest["splits"]["test"]["structured"] == 1
    assert "time order lost" in manifest["structure"]


def test_tallrec_book_release_is_fully_structured(real_data, tmp_path):
    manifest = import_tallrec([real_data / "tallrec-book" / "test.json"], tmp_path / "book")
    assert manifest["splits"]["test"]["structured"] == manifest["splits"]["test"]["records"] == 2427
