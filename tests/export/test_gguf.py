"""GGUF exports (`tallrec export --format gguf-lora | gguf`) on tiny models, read back with gguf's own reader.

Every expectation is computed independently of tallrec_cli.export.gguf: GGUF tensor names from a table written
here, the q/k row order undone by transformers' GGUF loader (LlamaTensorProcessor), merged weights from peft's
merge_and_unload, LoRA scales from the loaded peft modules. The base GGUFs are written here from the Hugging Face
weights, with q/k rows reordered by an index formula (not the reshape tallrec uses)."""

from __future__ import annotations

import hashlib
import json
import typing
from pathlib import Path

import numpy as np
import pytest

from tallrec_cli.core.errors import ConfigError, ModelError, TallrecError
from tests.export_helpers import LLAMA_TARGETS, make_train_run, write_valid_data

HF_TO_GGUF = {  # llama.cpp's names for the Hugging Face LLaMA / Qwen2 modules
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}
TOP_LEVEL = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}


def gguf_name(hf_name: str) -> str:
    if hf_name in TOP_LEVEL:
        return TOP_LEVEL[hf_name]
    _, _, block, rest = hf_name.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{block}.{HF_TO_GGUF[module]}.{kind}"


def rope_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's row order, by index: GGUF row h*D + 2i + j holds Hugging Face row h*D + j*D/2 + i."""
    dim = weight.shape[0] // heads
    order = [h * dim + j * (dim // 2) + i for h in range(heads) for i in range(dim // 2) for j in range(2)]
    return weight[order]


def undo_rope_rows(weight: np.ndarray, name: str, config) -> np.ndarray:
    """transformers' own GGUF loader undoing llama.cpp's q/k row order."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    processor = LlamaTensorProcessor(config={"num_attention_heads": config.num_attention_heads,
                                             "num_key_value_heads": config.num_key_value_heads})
    return processor.process(weight, name).weights


def write_base_gguf(model_dir: Path, path: Path, arch: str, reorder: bool, blocks: int | None = None) -> Path:
    """A GGUF of the Hugging Face model in ``model_dir`` as llama.cpp's converter lays it out (F32)."""
    import gguf
    from safetensors.numpy import load_file
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    writer = gguf.GGUFWriter(path, arch)
    writer.add_uint32(f"{arch}.block_count", blocks or config.num_hidden_layers)
    writer.add_uint32(f"{arch}.attention.head_count", config.num_attention_heads)
    writer.add_string("tokenizer.ggml.model", "gpt2")
    writer.add_array("tokenizer.ggml.tokens", ["<unk>", "Yes", "No"])
    writer.add_array("tokenizer.ggml.token_type", [3, 1, 1])
    writer.add_bool("tokenizer.ggml.add_bos_token", False)
    for name, weight in load_file(model_dir / "model.safetensors").items():
        if reorder and ("q_proj" in name or "k_proj" in name):
            heads = config.num_attention_heads if "q_proj" in name else config.num_key_value_heads
            weight = rope_rows(weight, heads)
        writer.add_tensor(gguf_name(name), np.ascontiguousarray(weight, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def read_gguf(path: Path) -> tuple[dict, dict]:
    """(metadata key -> value, tensor name -> (GGML type name, numpy float32 array)) of a GGUF file."""
    import gguf

    reader = gguf.GGUFReader(path)
    fields = {}
    for key, field in reader.fields.items():
        if field.types[0] == gguf.GGUFValueType.STRING:
            fields[key] = bytes(field.parts[field.data[0]]).decode()
        elif field.types[0] != gguf.GGUFValueType.ARRAY:
            fields[key] = field.parts[field.data[0]].tolist()[0]
    tensors = {tensor.name: (tensor.tensor_type.name, gguf.quants.dequantize(tensor.data, tensor.tensor_type)
                             .reshape([int(n) for n in reversed(tensor.shape)]).astype(np.float32))
               for tensor in reader.tensors}
    return fields, tensors


def peft_modules(run: Path, base: str):
    """{module name: (A, B, scaling)} as peft itself loads the run's adapter (fp32)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tallrec_cli.model.loading import resolve_model_source

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(resolve_model_source(base).path),
                                      str(run / "adapter"))
    return {name.removeprefix("base_model.model."): (module.lora_A["default"].weight.detach().numpy(),
                                                     module.lora_B["default"].weight.detach().numpy(),
                                                     module.scaling["default"])
            for name, module in model.named_modules() if hasattr(module, "lora_A") and "default" in module.lora_A}


def model_config(base: str):
    from transformers import AutoConfig

    from tallrec_cli.model.loading import resolve_model_source

    return AutoConfig.from_pretrained(resolve_model_source(base).path)


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory):
    """A tiny-LLaMA run (LoRA on all seven projections, random B) and a GGUF of its base."""
    root = tmp_path_factory.mktemp("gguf-llama")
    run = make_train_run(root / "run", "random:tiny-llama", valid=write_valid_data(root / "data"))
    from tallrec_cli.model.loading import resolve_model_source

    base = write_base_gguf(Path(resolve_model_source("random:tiny-llama").path), root / "tiny-llama.gguf", "llama",
                           reorder=True)
    return run, base


@pytest.fixture(scope="module")
def qwen2_base(tmp_path_factory) -> Path:
    """A tiny Qwen2 (another layout: q/k/v biases, rows not reordered) with a byte-level BPE tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tallrec_cli.model.random_models import build_tokenizer

    folder = tmp_path_factory.mktemp("tiny-qwen2")
    tokenizer = build_tokenizer()
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def test_gguf_lora_of_tiny_llama_reads_back_as_llama_cpp_expects(llama_run, tmp_path):
    from tallrec_cli.core.integrity import check_files
    from tallrec_cli.export.gguf import export_gguf

    run, base = llama_run
    result = export_gguf(run, tmp_path / "lora", "gguf-lora", base_gguf=base, name="tiny")
    assert result.files == {"model": "tiny-llama.gguf", "adapter": "tiny.lora.f16.gguf", "modelfile": "Modelfile"}
    fields, tensors = read_gguf(tmp_path / "lora" / "tiny.lora.f16.gguf")
    assert {key: fields[key] for key in ("general.architecture", "general.type", "adapter.type",
                                         "adapter.lora.alpha")} == {
        "general.architecture": "llama", "general.type": "adapter", "adapter.type": "lora", "adapter.lora.alpha": 16.0}

    config = model_config("random:tiny-llama")
    expected = peft_modules(run, "random:tiny-llama")
    assert len(expected) == config.num_hidden_layers * len(LLAMA_TARGETS)
    assert set(tensors) == {f"{gguf_name(module + '.weight')}.lora_{part}" for module in expected for part in "ab"}
    for module, (a, b, _) in expected.items():
        name = gguf_name(module + ".weight")
        (a_type, a_read), (b_type, b_read) = tensors[name + ".lora_a"], tensors[name + ".lora_b"]
        assert (a_type, b_type) == ("F16", "F16") and a_read.shape == a.shape and b_read.shape == b.shape
        np.testing.assert_array_equal(a_read, a.astype(np.float16).astype(np.float32))
        if "q_proj" in module or "k_proj" in module:
            assert not np.array_equal(b_read, b.astype(np.float16).astype(np.float32))  # rows really moved
            b_read = undo_rope_rows(b_read, name, config)
        np.testing.assert_array_equal(b_read, b.astype(np.float16).astype(np.float32))

    modelfile = (tmp_path / "lora" / "Modelfile").read_text()
    assert [line for line in modelfile.splitlines() if not line.startswith("#")] == [
        "FROM ./tiny-llama.gguf", "ADAPTER ./tiny.lora.f16.gguf", 'TEMPLATE """{{ .Prompt }}"""',
        "PARAMETER temperature 0", "PARAMETER num_predict 1"]
    manifest = json.loads((tmp_path / "lora" / "manifest.json").read_text())
    assert manifest["kind"] == "gguf-export" and manifest["gguf"]["format"] == "gguf-lora"
    assert set(manifest["files"]) == {"tiny.lora.f16.gguf", "Modelfile", "README.md"}
    assert check_files(tmp_path / "lora", manifest["files"]).ok
    assert manifest["gguf"]["base_gguf"]["sha256"] == hashlib.sha256(base.read_bytes()).hexdigest()
    card = (tmp_path / "lora" / "README.md").read_text()
    assert "llama-server -m lora/tiny-llama.gguf --lora lora/tiny.lora.f16.gguf" in card
    assert "ADAPTER = 'lora/tiny.lora.f16.gguf'" in card and str(tmp_path) not in card


def test_merged_gguf_of_tiny_llama_is_peft_merge_in_llama_cpp_layout(llama_run, tmp_path):
    import gguf
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tallrec_cli.export.gguf import export_gguf, merged_gguf_bytes, read_base_gguf
    from tallrec_cli.model.loading import resolve_model_source

    run, base = llama_run
    export_gguf(run, tmp_path / "f32", "gguf", dtype="float32", base_gguf=base, name="tiny")
    fields, tensors = read_gguf(tmp_path / "f32" / "tiny.f32.gguf")
    assert (fields["general.file_type"], fields["tokenizer.ggml.model"], fields["llama.block_count"]) == (0, "gpt2", 2)

    config = model_config("random:tiny-llama")
    source = resolve_model_source("random:tiny-llama").path
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(source), str(run / "adapter"))
    merged = {name: weight.detach().numpy() for name, weight in merged.merge_and_unload().state_dict().items()}
    assert set(tensors) == {gguf_name(name) for name in merged}
    for name, weight in merged.items():
        kind, read = tensors[gguf_name(name)]
        assert kind == "F32"
        if "attn_q" in gguf_name(name) or "attn_k" in gguf_name(name):
            read = undo_rope_rows(read, gguf_name(name), config)
        np.testing.assert_allclose(read, weight, atol=2e-6, err_msg=name)

    export_gguf(run, tmp_path / "q8", "gguf", dtype="q8_0", base_gguf=base, name="tiny")
    fields, quantized = read_gguf(tmp_path / "q8" / "tiny.q8_0.gguf")
    assert fields["general.file_type"] == 7  # MOSTLY_Q8_0
    written = sum(tensor.n_bytes for tensor in gguf.GGUFReader(tmp_path / "q8" / "tiny.q8_0.gguf").tensors)
    assert merged_gguf_bytes(read_base_gguf(base), "q8_0") == written  # what the disk-space check asks for
    assert {name: kind for name, (kind, _) in quantized.items()} == {
        name: "F32" if tensor.ndim == 1 else "Q8_0" for name, (_, tensor) in tensors.items()}
    for name, (_, tensor) in tensors.items():
        if tensor.ndim == 1:
            np.testing.assert_array_equal(quantized[name][1], tensor)
            continue
        # q8_0: 32 values share one f16 scale d = max|x| / 127: error at most d / 2, plus d's own f16 rounding
        blocks = tensor.reshape(-1, 32)
        step = np.abs(blocks).max(axis=1, keepdims=True) / 127
        assert np.all(np.abs(quantized[name][1].reshape(-1, 32) - blocks) <= step * 0.6), name


def test_gguf_lora_of_tiny_qwen2_keeps_rows_and_maps_qwen2_names(qwen2_base, tmp_path):
    from tallrec_cli.export.gguf import export_gguf

    run = make_train_run(tmp_path / "run", str(qwen2_base), targets=("q_proj", "k_proj", "v_proj", "down_proj"))
    base = write_base_gguf(qwen2_base, tmp_path / "qwen2.gguf", "qwen2", reorder=False)
    export_gguf(run, tmp_path / "lora", "gguf-lora", dtype="float32", base_gguf=base, name="q")
    fields, tensors = read_gguf(tmp_path / "lora" / "q.lora.f32.gguf")
    assert (fields["general.architecture"], fields["adapter.lora.alpha"]) == ("qwen2", 16.0)
    expected = peft_modules(run, str(qwen2_base))
    assert set(tensors) == {f"{gguf_name(module + '.weight')}.lora_{part}" for module in expected for part in "ab"}
    for module, (a, b, _) in expected.items():
        name = gguf_name(module + ".weight")
        np.testing.assert_array_equal(tensors[name + ".lora_a"][1], a)
        np.testing.assert_array_equal(tensors[name + ".lora_b"][1], b)  # Qwen2's rope needs no row reorder


def test_rslora_and_rank_alpha_patterns_are_folded_into_b(llama_run):
    """llama.cpp scales every module by the file's alpha / the module's rank: B' carries the rest."""
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from tallrec_cli.export.gguf import gguf_layout, lora_modules
    from tallrec_cli.model.loading import resolve_model_source

    model = AutoModelForCausalLM.from_pretrained(resolve_model_source("random:tiny-llama").path)
    lora = LoraConfig(r=8, lora_alpha=16, use_rslora=True, target_modules=["q_proj", "k_proj", "v_proj"],
                      rank_pattern={"k_proj": 4}, alpha_pattern={"v_proj": 32})
    peft_model = get_peft_model(model, lora)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_()
    weights = {name: tensor.numpy() for name, tensor in get_peft_model_state_dict(peft_model).items()}
    layout = gguf_layout(model.config)
    written = {each.module: each for each in lora_modules(lora.to_dict(), weights, layout)}
    modules = {name.removeprefix("base_model.model."): module for name, module in peft_model.named_modules()
               if hasattr(module, "lora_A") and "default" in module.lora_A}
    assert set(written) == set(modules) and len(modules) == 6
    for name, module in modules.items():
        each = written[name]
        delta = (16.0 / each.a.shape[0]) * (each.b @ each.a)  # what llama.cpp adds: alpha / r * B' A
        if "q_proj" in name or "k_proj" in name:
            delta = undo_rope_rows(delta, each.tensor, model.config)
        reference = module.scaling["default"] * (module.lora_B["default"].weight @ module.lora_A["default"].weight)
        np.testing.assert_allclose(delta, reference.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


def test_export_literals_match_the_library():
    from tallrec_cli.cli.commands import export as command
    from tallrec_cli.export.gguf import GGUF_DTYPES, GGUF_FORMATS
    from tallrec_cli.export.merged import MERGE_DTYPES

    assert typing.get_args(command.ExportFormat) == ("adapter", "merged", *GGUF_FORMATS)
    assert set(typing.get_args(command.ExportDtype)) == set(MERGE_DTYPES) | set(GGUF_DTYPES)


# ------------------------------------------------------------------------------------------ refusals

def rewrite_adapter_config(run: Path, **changes) -> Path:
    """Change the run's adapter_config.json and re-record its hash, as if training had written it so."""
    from tallrec_cli.core.integrity import adapter_hashes

    path = run / "adapter" / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["files"] = adapter_hashes(run)
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


def refused(tmp_path: Path, run: Path, error=ModelError, **options) -> str:
    from tallrec_cli.export.gguf import export_gguf

    output = tmp_path / "out"
    with pytest.raises(error) as caught:
        export_gguf(run, output, **options)
    assert not output.exists() and not list(tmp_path.glob(".out.*"))  # nothing written, nothing staged
    assert "\n" not in caught.value.message and caught.value.hint
    return caught.value.message


@pytest.fixture()
def copied_run(llama_run, tmp_path):
    import shutil

    run, base = llama_run
    return Path(shutil.copytree(run, tmp_path / "run")), base


@pytest.mark.parametrize("changes, says", [
    ({"use_dora": True}, "DoRA"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save: lm_head"),
    ({"bias": "lora_only"}, "LoRA biases"),
    ({"peft_type": "IA3"}, "peft_type IA3"),
])
def test_adapters_llama_cpp_cannot_load_are_refused(copied_run, tmp_path, changes, says):
    run, base = copied_run
    message = refused(tmp_path, rewrite_adapter_config(run, **changes), base_gguf=base)
    assert message.startswith("llama.cpp cannot load this adapter") and says in message


def test_trained_embeddings_are_refused(llama_run, tmp_path):
    run = make_train_run(tmp_path / "run", "random:tiny-llama", targets=("q_proj", "embed_tokens"))
    message = refused(tmp_path, run, base_gguf=llama_run[1], export_format="gguf")
    assert "trained embeddings or lm_head (base_model.model.model.embed_tokens." in message


def test_architecture_without_a_gguf_layout_is_refused(tmp_path):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from tallrec_cli.model.random_models import build_tokenizer

    folder = tmp_path / "gpt2"
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    run = make_train_run(tmp_path / "run", str(folder), targets=("c_attn",))
    gguf_file = tmp_path / "gpt2.gguf"
    gguf_file.write_bytes(b"")
    message = refused(tmp_path, run, base_gguf=gguf_file)
    assert message.startswith("no GGUF layout for model type 'gpt2'")


def test_base_without_gguf_or_with_another_gguf_is_refused(llama_run, qwen2_base, tmp_path):
    run, _ = llama_run
    assert "has no GGUF" in refused(tmp_path, run, export_format="gguf")
    other = write_base_gguf(qwen2_base, tmp_path / "qwen2.gguf", "qwen2", reorder=False)
    assert "is a qwen2 GGUF with 2 blocks" in refused(tmp_path, run, base_gguf=other)
    shallow = write_base_gguf(qwen2_base, tmp_path / "llama-1.gguf", "llama", reorder=False, blocks=1)
    assert "is a llama GGUF with 1 blocks" in refused(tmp_path, run, base_gguf=shallow)
    assert "not a .gguf file" in refused(tmp_path, run, ConfigError, base_gguf=tmp_path / "missing.gguf")


def test_bad_dtype_and_taken_output_are_refused(llama_run, tmp_path):
    from tallrec_cli.export.gguf import export_gguf

    run, base = llama_run
    assert "not a gguf-lora type" in refused(tmp_path, run, ConfigError, dtype="q8_0", base_gguf=base)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(TallrecError, match="already exists"):
        export_gguf(run, taken, base_gguf=base)
    with pytest.raises(TallrecError, match="no tallrec artifact"):
        export_gguf(run, taken, base_gguf=base, overwrite=True)
    assert [path.name for path in taken.iterdir()] == ["notes.txt"]
    first = export_gguf(run, tmp_path / "export", base_gguf=base)
    again = export_gguf(run, tmp_path / "export", export_format="gguf", base_gguf=base, overwrite=True)
    assert again.files["model"] != first.files["adapter"] and not (tmp_path / "export" / first.files["adapter"]).exists()


def test_cli_gguf_formats_and_merged_alias(llama_run, tmp_path):
    from typer.testing import CliRunner

    from tallrec_cli.cli.app import app

    run, base = llama_run
    runner = CliRunner()
    done = runner.invoke(app, ["export", str(run), "--format", "gguf-lora", "--base-gguf", str(base),
                               "-o", str(tmp_path / "lora")])
    assert done.exit_code == 0, done.output
    assert "GGUF LoRA (float16, 14 modules, llama)" in done.output
    clash = runner.invoke(app, ["export", str(run), "--merged", "--format", "gguf", "-o", str(tmp_path / "x")])
    assert isinstance(clash.exception, ConfigError) and clash.exception.message == "--merged contradicts --format gguf"
    registry = runner.invoke(app, ["export", str(run), "--format", "gguf", "--to-registry"])
    assert isinstance(registry.exception, ConfigError) and "--to-registry stores adapters" in registry.exception.message
    bad = runner.invoke(app, ["export", str(run), "--format", "ggml", "-o", str(tmp_path / "y")])
    assert bad.exit_code == 2 and not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
