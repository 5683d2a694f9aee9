"""Model source ``random:<architecture>``: a real architecture with random weights, no download.

"Will this recipe fit my card, and how fast is it?" can be measured before a 15 GB download: the configs
below are the published ones (config.json of each hub repository), the weights are drawn from the
model's own initialiser with a fixed seed. The ``tiny-*`` shapes are test-size models of four families
(LLaMA, Gemma 3, Qwen2, Mistral), so that a LLaMA-only assumption fails a fast test. The tokenizer is a small byte-level BPE trained on TALLRec's
prompt wording (ids well inside every vocabulary), so prompts run end to end; its token counts are not
the real tokenizer's. The model is written once as safetensors under TALLREC_HOME/models/ and then loads
through the same `from_pretrained` path (bitsandbytes quantization included) as any local folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tallrec_cli.core.errors import ModelError
from tallrec_cli.core.files import staged_dir, tallrec_home
from tallrec_cli.core.manifests import read_manifest, write_manifest
from tallrec_cli.core.reporting import reporter
from tallrec_cli.model.prompts import load_template

PREFIX = "random:"
SEED = 0
TOKENIZER_VOCAB = 2000
TINY_WINDOW = 24  # sliding window of the tiny Gemma 3 and Mistral, in tokens

_LLAMA = dict(model_type="llama", hidden_act="silu", attention_bias=False, mlp_bias=False, tie_word_embeddings=False)


def _rope(theta: float) -> dict[str, Any]:
    return {"rope_type": "default", "rope_theta": theta}


def _gemma3_layers(count: int, every: int) -> list[str]:
    """Gemma 3's hybrid attention: every ``every``-th layer global, the others local (sliding window)."""
    return ["full_attention" if (index + 1) % every == 0 else "sliding_attention" for index in range(count)]


_GEMMA3 = {"model_type": "gemma3_text", "hidden_activation": "gelu_pytorch_tanh", "attention_bias": False,
           "tie_word_embeddings": True, "final_logit_softcapping": None, "attn_logit_softcapping": None,
           "rope_parameters": {"full_attention": _rope(1000000.0), "sliding_attention": _rope(10000.0)}}
_QWEN2 = {"model_type": "qwen2", "hidden_act": "silu", "tie_word_embeddings": True}  # q/k/v carry biases
_MISTRAL = {"model_type": "mistral", "hidden_act": "silu", "tie_word_embeddings": False}
# The published config.json values of each architecture (shapes, positions, norms, rope); origin None: a test
# shape of the architecture, small enough for a CPU (float32 weights).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "llama-2-7b": dict(_LLAMA, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
                       rope_parameters=_rope(10000.0), bos_token_id=1, eos_token_id=2,
                       origin="meta-llama/Llama-2-7b-hf"),
    "llama-3-8b": dict(_LLAMA, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rms_norm_eps=1e-5,
                       rope_parameters=_rope(500000.0), bos_token_id=128000, eos_token_id=128001,
                       origin="meta-llama/Meta-Llama-3-8B"),
    "llama-3-70b": dict(_LLAMA, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                        num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rms_norm_eps=1e-5,
                        rope_parameters=_rope(500000.0), bos_token_id=128000, eos_token_id=128001,
                        origin="meta-llama/Meta-Llama-3-70B"),
    # Gemma 3 270M: 262,144-token vocabulary tied to the LM head, head_dim 256 (4 x 256 > hidden 640), one
    # key/value head, five local layers (512-token window) per global one, norms around attention and MLP.
    "gemma3-270m": dict(_GEMMA3, hidden_size=640, intermediate_size=2048, num_hidden_layers=18, num_attention_heads=4,
                        num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, sliding_window=512,
                        layer_types=_gemma3_layers(18, 6), vocab_size=262144, max_position_embeddings=32768,
                        rms_norm_eps=1e-6, bos_token_id=2, eos_token_id=1, origin="google/gemma-3-270m"),
    # Test shapes: what `acceptance/gpu_check.py --smoke` and the tests run on a CPU. Beside LLaMA's layout, the
    # families whose differences a LLaMA-only assumption would miss: Gemma 3 (hybrid sliding-window cache,
    # head_dim x heads != hidden, tied head, extra norms, GELU), Qwen2 (q/k/v biases, tied head) and Mistral
    # (every layer sliding-window). Windows are shorter than the test prompts, so the windows matter there.
    "tiny-llama": dict(_LLAMA, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=TOKENIZER_VOCAB + 8, max_position_embeddings=2048,
                       rms_norm_eps=1e-5, rope_parameters=_rope(10000.0), bos_token_id=1, eos_token_id=2, origin=None),
    "tiny-gemma3": dict(_GEMMA3, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                        num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32, sliding_window=TINY_WINDOW,
                        layer_types=_gemma3_layers(3, 3), vocab_size=TOKENIZER_VOCAB + 8,
                        max_position_embeddings=2048, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, origin=None),
    "tiny-qwen2": dict(_QWEN2, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=TOKENIZER_VOCAB + 8, max_position_embeddings=2048,
                       rms_norm_eps=1e-6, rope_parameters=_rope(1000000.0), bos_token_id=1, eos_token_id=2, origin=None),
    "tiny-mistral": dict(_MISTRAL, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, sliding_window=TINY_WINDOW, vocab_size=TOKENIZER_VOCAB + 8,
                         max_position_embeddings=2048, rms_norm_eps=1e-5, rope_parameters=_rope(10000.0),
                         bos_token_id=1, eos_token_id=2, origin=None),
}
_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]  # ids 0-3; LLaMA-2 puts bos/eos at 1/2 too
_LABEL_WORDS = ["Yes", "No"]  # single tokens after the response prefix, as in the real tokenizers


def is_random(name: str) -> bool:
    return name.startswith(PREFIX)


def architecture(name: str) -> str:
    """``random:llama-3-8b`` -> ``llama-3-8b``, checked against the known architectures."""
    arch = name[len(PREFIX):] if is_random(name) else name
    if arch not in ARCHITECTURES:
        raise ModelError(f"unknown random architecture {arch!r}",
                         f"use one of: {', '.join(PREFIX + key for key in ARCHITECTURES)}")
    return arch


def model_config(name: str):
    """The transformers config of ``random:<arch>`` (no weights, no files)."""
    from transformers import AutoConfig

    values = {key: value for key, value in ARCHITECTURES[architecture(name)].items() if key != "origin"}
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    config.pad_token_id = _SPECIAL_TOKENS.index("<pad>")
    return config


def published_config(origin: str):
    """The config of the published model ``origin`` (a hub id) when an architecture here has its shape, else None."""
    for arch, values in ARCHITECTURES.items():
        if values["origin"] == origin:
            return model_config(arch)
    return None


def is_test_shape(name: str) -> bool:
    """A test-size shape (float32 weights), not a published model's."""
    return ARCHITECTURES[architecture(name)]["origin"] is None


def _corpus() -> list[str]:

    template = load_template("alpaca")
    record = {"instruction": "Given the user's preference and unpreference, identify whether the user will like "
                             'the target movie by answering "Yes." or "No.".',
              "input": 'User Preference: "Toy Story (1995)", "Star Wars (1977)"\nUser Unpreference: "Heat (1995)"\n'
                       'Whether the user will like the target movie "Fargo (1996)"?'}
    return [template.render(record, None), "Yes.", "No.", "the user will like the target book written by"] * 20


def build_tokenizer(vocab_size: int = TOKENIZER_VOCAB):
    """A byte-level BPE tokenizer (ids < vocab_size + 8) that encodes any text; Yes/No are single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=_SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer.add_tokens(_LABEL_WORDS)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")


def random_model_dir(name: str) -> Path:
    """The safetensors folder of ``random:<arch>``, written once under TALLREC_HOME/models/random-<arch>/.

    Initialised on the GPU when there is one (a 7B model in bf16 in seconds rather than minutes on a CPU).
    """
    import torch

    arch = architecture(name)
    target = tallrec_home() / "models" / f"random-{arch}"
    if (target / "manifest.json").exists() and read_manifest(target, "random-model").get("seed") == SEED:
        return target
    from transformers import AutoModelForCausalLM

    config = model_config(name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float32 if is_test_shape(arch) else torch.bfloat16
    with reporter().status(f"writing {name} (random weights, seed {SEED}) to {target}"):
        torch.manual_seed(SEED)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        tokenizer = build_tokenizer()
        with staged_dir(target, "random-model", overwrite=True) as staging:
            model.save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
            write_manifest(staging, "random-model", {"name": PREFIX + arch, "seed": SEED, "dtype": str(dtype),
                                                     "architecture_of": ARCHITECTURES[arch]["origin"]})
        del model
    return target
