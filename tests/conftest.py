"""Shared fixtures: real data location, and a tiny LLaMA (config + tokenizer) built offline."""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _test_data_root() -> Path:
    return Path(os.environ.get("TALLREC_TEST_DATA", REPO.parent / "shared" / "data")).resolve()


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_or_fail(message: str) -> None:
    """Skip a test that lacks something it needs, except under CI=true, where it fails: CI never passes by skipping."""
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


def require_module(name: str, why: str):
    """Import ``name``, a package the test extra installs; a missing one skips locally (see `skip_or_fail`)."""
    if importlib.util.find_spec(name) is None:
        skip_or_fail(f"{name} is not installed ({why})")
    return importlib.import_module(name)


@pytest.fixture(scope="session")
def real_data() -> Path:
    """Folder with ml-100k/, ml-latest-small/, tallrec-book/ (TALLREC_TEST_DATA, default ../shared/data).

    Missing data skips locally but fails under CI=true, so CI can never pass by skipping real-data tests.
    """
    root = _test_data_root()
    if not (root / "ml-100k" / "u.data").exists():
        skip_or_fail(f"real data not found at {root} (set TALLREC_TEST_DATA)")
    return root


# Words that must be single tokens in the tiny tokenizer (label words and template markers).
_SPECIAL_WORDS = ["Yes", "No", "Maybe"]


def _corpus() -> list[str]:
    text = [
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.",
        "### Instruction:", "### Input:", "### Response:",
        "Given the user's preference and unpreference, identify whether the user will like the target movie "
        'by answering "Yes." or "No.".',
        'User Preference: "Toy Story (1995)", "Star Wars (1977)"\nUser Unpreference: "Heat (1995)"',
        'Whether the user will like the target movie "Fargo (1996)"?',
        "Whether the user will like the target book written by",
    ]
    return text * 20


def build_tiny_llama(folder: Path, vocab_size: int = 600, hidden: int = 32, layers: int = 2) -> Path:
    """Write a tiny LlamaForCausalLM + byte-level BPE tokenizer to ``folder`` (no network)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer.add_tokens(_SPECIAL_WORDS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
    )
    fast.chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
    )
    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A local Hugging Face folder holding a randomly initialised tiny LLaMA and its tokenizer."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Keep caches and the adapter registry out of the user's home, but share the converted
    embedded model across tests (converting it takes ~25 s)."""
    home = os.environ.get("TALLREC_TEST_HOME") or str(tmp_path_factory.getbasetemp() / "tallrec-home")
    monkeypatch.setenv("TALLREC_HOME", home)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    # exports check vLLM's rules statically; tests/interop runs vLLM's own loader (in its venv) where it asks
    monkeypatch.setenv("TALLREC_VLLM_VENV", "")


@pytest.fixture()
def single_torch_thread():
    """One torch thread for tests that train: the CPU is shared, and tiny models gain nothing from more."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture()
def old_bitsandbytes(monkeypatch):
    """bitsandbytes reported as 0.45.0 (older than the 0.46.1 transformers 5 quantizes with); transformers'
    cached answer to "is bitsandbytes available" is cleared before and after, so it reads this version too."""
    import importlib.metadata

    from transformers.utils import import_utils

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.45.0" if name == "bitsandbytes" else real(name))
    import_utils.is_bitsandbytes_available.cache_clear()
    yield
    monkeypatch.undo()
    import_utils.is_bitsandbytes_available.cache_clear()
