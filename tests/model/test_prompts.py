import pytest

from tallrec_cli.core.errors import ConfigError, ModelError
from tallrec_cli.model.prompts import available_templates, load_template, resolve_label_tokens

RECORD = {"instruction": "Decide.", "input": 'User Preference: "A"\nWhether the user will like "B"?', "output": "Yes."}


def test_tallrec_exact_template_is_byte_exact():
    prompt = load_template("tallrec-exact").render(RECORD)
    assert prompt == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.  # noqa: E501\n\n### Instruction:\nDecide."
        "\n\n### Input:\n" + RECORD["input"] + "\n\n### Response:\n")
    assert "# noqa" not in load_template("alpaca").render(RECORD)
    assert "### Input" not in load_template("alpaca").render({**RECORD, "input": ""})


def test_unknown_template_lists_available():
    assert {"alpaca", "tallrec-exact", "chat"} <= set(available_templates())
    with pytest.raises(ConfigError, match="unknown prompt template 'nope'") as error:
        load_template("nope")
    assert "alpaca" in error.value.hint


def test_chat_template_uses_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = load_template("chat").render(RECORD, tokenizer)
    assert prompt.startswith("<s>user\nDecide.") and prompt.endswith("<s>assistant\n")


def test_label_tokens_resolved_in_context(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    labels = resolve_label_tokens(tokenizer, load_template("alpaca"), outputs=("Yes.", "No."))
    assert labels.positive_id == tokenizer.convert_tokens_to_ids("Yes")
    assert labels.negative_id == tokenizer.convert_tokens_to_ids("No")


def test_label_word_that_splits_is_a_clear_error(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    with pytest.raises(ModelError, match="'Absolutely' is not a single token"):
        resolve_label_tokens(tokenizer, load_template("alpaca"), positive="Absolutely")
    with pytest.raises(ModelError, match="does not start with the label token"):
        resolve_label_tokens(tokenizer, load_template("alpaca"), outputs=("Maybe.", "No."))
