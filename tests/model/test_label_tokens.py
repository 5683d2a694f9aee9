"""Label tokens on a SentencePiece tokenizer that behaves like LLaMA's: a word at the start of the text gets the
"▁" (space) prefix, the same word after a newline does not, so "Yes" alone is "▁Yes" while the answer after
TALLRec's "### Response:\\n" is "Yes", another id (LLaMA-2: 3869 vs 8241). The byte-level BPE of the shared
tiny fixture gives one id either way, so these tests need their own tokenizer, built offline in code."""

from __future__ import annotations

import string

import pytest

from tallrec_cli.core.errors import ModelError
from tallrec_cli.model.prompts import _PROBE_RECORD, PromptTemplate, load_template, resolve_label_tokens

WORDS = ("Yes", "No", "▁Yes", "▁No")


def sentencepiece_tokenizer(words=WORDS):
    """A Unigram (SentencePiece) tokenizer with LLaMA's Metaspace: "▁" prepended to the first word only, spaces
    as "▁", and no split at spaces, so a piece may start with "▁". Every printable character is a piece; ``words``
    are cheaper pieces. Without byte fallback, a character outside the vocabulary is <unk>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0), ("▁", -5.0)]
    pieces += [(char, -10.0) for char in sorted(set(string.printable) - {" "})]
    pieces += [(word, -3.0 if len(word) == 2 else -2.0) for word in words]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=0, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def pieces_of(tokenizer, text: str) -> list[str]:
    return tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_label_ids_are_the_pieces_after_the_prompt_not_those_of_the_bare_word():
    tokenizer = sentencepiece_tokenizer()
    template = load_template("alpaca")
    prompt = template.render(_PROBE_RECORD)
    assert pieces_of(tokenizer, "Yes") == ["▁Yes"] and pieces_of(tokenizer, "No") == ["▁No"]
    assert pieces_of(tokenizer, prompt + "Yes.")[-3:] == ["\n", "Yes", "."]  # what training appends and learns

    labels = resolve_label_tokens(tokenizer, template, outputs=("Yes.", "No."))
    assert (labels.positive_id, labels.negative_id) == tuple(tokenizer.convert_tokens_to_ids(["Yes", "No"]))
    assert labels.positive_id != tokenizer.convert_tokens_to_ids("▁Yes")


def test_label_words_sharing_one_token_are_refused():
    """Two label words outside a vocabulary without byte fallback are each one <unk>: one token for both."""
    tokenizer = sentencepiece_tokenizer()
    prompt = load_template("alpaca").render(_PROBE_RECORD)
    assert pieces_of(tokenizer, prompt + "是")[-1:] == pieces_of(tokenizer, prompt + "否")[-1:] == ["<unk>"]
    with pytest.raises(ModelError, match="label words '是' and '否' map to the same token"):
        resolve_label_tokens(tokenizer, load_template("alpaca"), positive="是", negative="否")


def test_an_answer_merged_with_the_end_of_the_prompt_is_refused():
    """A prompt ending in a space, in a vocabulary where " Yes" is "▁Y" + "es": the space that ends the prompt
    is absorbed into the answer's first piece, and the only piece after the prompt is "es", not a label."""
    tokenizer = sentencepiece_tokenizer(("Yes", "No", "▁Y", "es"))
    template = PromptTemplate("answer-after-space", "text", "{instruction}\n{input}", "{instruction}", "\nAnswer: ")
    prompt = template.render(_PROBE_RECORD)
    prompt_pieces = pieces_of(tokenizer, prompt)
    assert prompt_pieces[-1] == "▁"
    assert pieces_of(tokenizer, prompt + "Yes")[len(prompt_pieces) - 1:] == ["▁Y", "es"]
    assert pieces_of(tokenizer, prompt + "No")[len(prompt_pieces) - 1:] == ["▁", "No"]  # "No" stays clean
    with pytest.raises(ModelError, match="label word 'Yes' is not a single token"):
        resolve_label_tokens(tokenizer, template)
