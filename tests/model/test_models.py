import pytest

from tallrec_cli.core.errors import ModelError
from tallrec_cli.core.manifests import read_manifest
from tallrec_cli.model import loading as models


def test_source_resolution(tmp_path, tiny_model_dir):
    assert models.resolve_model_source(str(tiny_model_dir)).kind == "local"
    assert models.resolve_model_source("meta-llama/Llama-2-7b-hf").kind == "hub"
    with pytest.raises(ModelError, match="neither an existing path nor a hub id"):
        models.resolve_model_source(str(tmp_path / "missing" / "model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        models.resolve_model_source(str(tmp_path / "empty"))
    with pytest.raises(ModelError, match="GGUF file .* does not exist"):
        models.resolve_model_source(str(tmp_path / "x.gguf"))


def test_dtype_auto_follows_hardware(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(models, "cpu_supports_bf16", lambda: True)
    assert models.resolve_dtype("auto") == torch.bfloat16
    monkeypatch.setattr(models, "cpu_supports_bf16", lambda: False)
    assert models.resolve_dtype("auto") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda: (7, 5))
    assert models.resolve_dtype("auto") == torch.float16
    assert models.resolve_dtype("float32") == torch.float32


def test_hub_load_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE"):
        models.load_tokenizer(models.resolve_model_source("someone/not-cached-model"))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_tiny_model_loads_in_requested_dtype(tiny_model_dir, dtype):
    """The fixture is saved in float32: every weight is loaded in ``dtype``, the saved value cast to it."""
    import torch
    from safetensors.torch import load_file

    source = models.resolve_model_source(str(tiny_model_dir))
    model = models.load_model(source, dtype=dtype)
    wanted = getattr(torch, dtype)
    saved = load_file(tiny_model_dir / "model.safetensors")
    loaded = model.state_dict()
    assert {tensor.dtype for tensor in saved.values()} == {torch.float32}
    assert model.dtype == wanted and saved.keys() <= loaded.keys()
    for name, tensor in saved.items():
        assert torch.equal(loaded[name], tensor.to(wanted)), name
    identity = models.model_identity(source)
    assert len(identity["config_json_sha256"]) == 64


def test_the_embedded_default_model_loads_and_scores_like_plain_transformers():
    """The model users get without --model: converted from its GGUF (once per test session), loaded, and P(yes) of two
    records equal to a plain transformers forward on the converted folder, read at the tokenizer's own "Yes"/"No"."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tallrec_cli.model.scoring import resolve_scoring
    from tallrec_cli.train.config import load_train_config
    from tests.export_helpers import SAMPLE_RECORDS
    from tests.reference_scores import answer_token, plain_p_yes

    assert load_train_config().model.name == "smollm2-135m"
    inference = models.load_for_inference("smollm2-135m", dtype="float32", device="cpu")
    spec = resolve_scoring(inference)
    prompts = spec.render(SAMPLE_RECORDS[:2], inference.tokenizer)
    scores = spec.score(inference.model, inference.tokenizer, prompts).scores

    folder = models.embedded_model_dir("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    expected = plain_p_yes(model, tokenizer, prompts)
    assert [spec.labels.positive_id, spec.labels.negative_id] == [answer_token(tokenizer, prompts[0], word)
                                                                  for word in ("Yes", "No")]
    np.testing.assert_allclose(scores, expected, atol=1e-5)


@pytest.mark.slow
def test_embedded_model_converts_once_to_safetensors():
    folder = models.embedded_model_dir("smollm2-135m")
    manifest = read_manifest(folder, "embedded-model")
    assert (folder / "model.safetensors").exists() and len(manifest["gguf_sha256"]) == 64
    assert models.embedded_model_dir("smollm2-135m") == folder  # cached: no second conversion
    tokenizer = models.load_tokenizer(models.resolve_model_source("smollm2-135m"))
    assert tokenizer.pad_token_id is not None and tokenizer.padding_side == "left"


def test_inference_folds_the_adapter_into_the_weights_with_the_same_scores(tmp_path, tiny_model_dir):
    import numpy as np

    from tallrec_cli.model.scoring import resolve_scoring, score_prompts
    from tests.export_helpers import SAMPLE_RECORDS, make_train_run

    run = make_train_run(tmp_path / "run", str(tiny_model_dir))
    merged = models.load_for_inference(adapter=str(run), dtype="float32", device="cpu")
    apart = models.load_for_inference(adapter=str(run), dtype="float32", device="cpu", merge_adapter=False)
    assert not any("lora" in name for name, _ in merged.model.named_parameters())
    assert any("lora" in name for name, _ in apart.model.named_parameters())
    spec = resolve_scoring(merged)
    labels = spec.labels
    prompts = spec.render(SAMPLE_RECORDS, merged.tokenizer)
    np.testing.assert_allclose(score_prompts(merged.model, merged.tokenizer, prompts, labels),
                               score_prompts(apart.model, apart.tokenizer, prompts, labels), atol=1e-5)


def test_a_bitsandbytes_older_than_transformers_minimum_is_refused_before_loading(old_bitsandbytes):
    import torch
    from transformers.utils.import_utils import BITSANDBYTES_MIN_VERSION

    with pytest.raises(ModelError, match=f"bitsandbytes 0.45.0 is older than {BITSANDBYTES_MIN_VERSION}") as error:
        models.quantization_config("4bit", torch.bfloat16)
    assert error.value.hint == f"pip install -U 'bitsandbytes>={BITSANDBYTES_MIN_VERSION}'"


def test_an_import_error_from_transformers_while_loading_is_a_model_error(tiny_model_dir, old_bitsandbytes,
                                                                           monkeypatch):
    """transformers' own refusal (ImportError) of an old bitsandbytes, reached past tallrec's check."""
    from transformers import BitsAndBytesConfig

    monkeypatch.setattr(models, "quantization_config", lambda *args: BitsAndBytesConfig(load_in_4bit=True))
    with pytest.raises(ModelError, match="could not load .*requires bitsandbytes") as error:
        models.load_model(models.resolve_model_source(str(tiny_model_dir)), "float32", "4bit", device="cpu")
    assert "tallrec doctor" in error.value.hint
