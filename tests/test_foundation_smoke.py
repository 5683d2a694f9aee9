from tests.conftest import build_tiny_llama


def test_tiny_llama_tokenizer_labels_single_tokens(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = build_tiny_llama(tmp_path / "m")
    tok = AutoTokenizer.from_pretrained(folder)
    prefix = tok("### Response:\n", add_special_tokens=False)["input_ids"]
    for word in ("Yes", "No"):
        ids = tok("### Response:\n" + word, add_special_tokens=False)["input_ids"]
        assert ids[: len(prefix)] == prefix and len(ids) == len(prefix) + 1
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.vocab_size == len(tok)
