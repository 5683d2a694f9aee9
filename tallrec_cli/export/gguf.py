"""`tallrec export RUN --format gguf-lora | gguf`: the run's adapter for llama.cpp and Ollama, as a GGUF LoRA
beside its base's GGUF, or merged into that GGUF; each with an Ollama Modelfile, a card and a manifest.

Both are made against a GGUF of the base (the embedded model's own, the run's base when it is a .gguf, or
``--base-gguf``): llama.cpp applies a GGUF LoRA to the tensors of that file by name, and a merged GGUF takes its
tokenizer and metadata from it. Tensor names come from gguf-py's maps; llama.cpp's converter
(convert_hf_to_gguf.py) also reorders the rows of q_proj / k_proj for LLaMA-family rope, so the rows of those
LoRA B matrices (their outputs) are reordered the same way. llama.cpp scales every module by
``adapter.lora.alpha / rank``: rsLoRA and per-module rank/alpha patterns are folded into B.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from tallrec_cli.core.errors import ArtifactError, ConfigError, ModelError
from tallrec_cli.core.files import (
    check_output_folder,
    file_hashes,
    refuse_overlap,
    sha256_file,
    staged_dir,
    write_text_atomic,
)
from tallrec_cli.core.integrity import ADAPTER_WEIGHTS
from tallrec_cli.core.manifests import GgufExportManifest, TrainedAdapter
from tallrec_cli.eval.calibration import card_section
from tallrec_cli.export.cards import (
    BaseRef,
    EvalSummary,
    Example,
    base_section,
    card_metadata,
    eval_section,
    front_matter,
    prompt_section,
    results_section,
    run_evaluations,
    upload_section,
)
from tallrec_cli.export.merged import ensure_disk_space
from tallrec_cli.export.runs import (
    EXPORT_KINDS,
    TrainRun,
    base_ref,
    card_example,
    load_train_run,
    resolve_base,
    run_payload,
    tokenizer_differs,
)
from tallrec_cli.model.loading import ModelSource, resolve_model_source

GGUF_FORMATS = ("gguf-lora", "gguf")
# --dtype -> GGML type; auto is float16 (llama.cpp's converter default). q8_0 needs rows of 32 values: a LoRA B
# has r, so a GGUF LoRA takes the float types only.
GGUF_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "q8_0": "Q8_0"}
LORA_DTYPES = ("float32", "float16", "bfloat16")
MODELFILE = "Modelfile"
# What llama.cpp's convert_hf_to_gguf.py writes for a Hugging Face model_type (conversion/llama.py, mistral.py,
# qwen.py, gemma.py, phi.py): the GGUF architecture, and whether it reorders q_proj / k_proj rows for its
# rope (LlamaModel.undo_permute). gguf-py holds the tensor names, not this.
LLAMA_CPP_ARCHITECTURES = {
    "llama": ("llama", True), "mistral": ("llama", True),
    "qwen2": ("qwen2", False), "qwen3": ("qwen3", False),
    "gemma": ("gemma", False), "gemma2": ("gemma2", False), "phi3": ("phi3", False),
}
_PEFT_PREFIX = "base_model.model."
_LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight")
_UNLOADABLE_MODULES = ("embed_tokens", "lm_head")


@dataclass(frozen=True)
class GgufLayout:
    """How llama.cpp lays out a base architecture: GGUF architecture, blocks, heads, q/k row order."""
    model_type: str
    arch: str
    n_blocks: int
    n_head: int
    n_head_kv: int
    rope_reorder: bool

    @cached_property
    def _names(self):
        import gguf  # heavy for `tallrec --help`: only exports need it

        return gguf.get_tensor_name_map(gguf_architecture(self.arch), self.n_blocks)

    def tensor_name(self, module: str) -> str | None:
        """GGUF name of the weight of Hugging Face module ``module`` (``model.layers.0.self_attn.q_proj`` ->
        ``blk.0.attn_q.weight``) by gguf-py's map, None where it maps none."""
        return self._names.get_name(module + ".weight", try_suffixes=(".weight",))

    def reorder_rows(self, weight, module: str):
        """Rows of a q_proj / k_proj output (a weight or a LoRA B) in llama.cpp's rope order: per head, the
        first and second halves interleaved (convert_hf_to_gguf's LlamaModel.permute); others unchanged."""
        heads = {"q_proj": self.n_head, "k_proj": self.n_head_kv}.get(module.rsplit(".", 1)[-1])
        if not self.rope_reorder or heads is None:
            return weight
        rows = weight.shape[0]
        return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def gguf_architecture(arch: str):
    """gguf-py's MODEL_ARCH named ``arch``; refused when the installed gguf has none."""
    import gguf  # heavy for `tallrec --help`: only exports need it

    found = next((key for key, name in gguf.MODEL_ARCH_NAMES.items() if name == arch), None)
    if found is None:
        raise ModelError(f"the installed gguf package ({_gguf_version()}) has no architecture {arch!r}",
                         "pip install -U gguf")
    return found


def _gguf_version() -> str:
    from importlib.metadata import version

    return version("gguf")


def gguf_layout(config) -> GgufLayout:
    """The llama.cpp layout of a base with transformers config ``config``; refused for a model type llama.cpp's
    converter is not known here to handle."""
    model_type = getattr(config, "model_type", None)
    if model_type not in LLAMA_CPP_ARCHITECTURES:
        raise ModelError(f"no GGUF layout for model type {model_type!r}: tallrec maps "
                         f"{', '.join(sorted(LLAMA_CPP_ARCHITECTURES))} to llama.cpp's tensor names",
                         "export --format merged and convert it with llama.cpp's convert_hf_to_gguf.py")
    arch, reorder = LLAMA_CPP_ARCHITECTURES[model_type]
    gguf_architecture(arch)
    heads = config.num_attention_heads
    return GgufLayout(model_type, arch, config.num_hidden_layers, heads,
                      getattr(config, "num_key_value_heads", None) or heads, reorder)


# ------------------------------------------------------------------------------------------ the base's GGUF

@dataclass(frozen=True)
class BaseGguf:
    """A GGUF of the base model: its architecture and its tensors' shapes (numpy order: out, in)."""
    path: Path
    arch: str
    n_blocks: int | None
    shapes: dict[str, tuple[int, ...]]


def base_gguf_path(source: ModelSource, option: str | Path | None) -> Path:
    """``--base-gguf``, else the run's base when it is a GGUF (the embedded model is); refused otherwise."""
    if option is not None:
        path = Path(option).expanduser()
        if not path.is_file() or path.suffix != ".gguf":
            raise ConfigError(f"--base-gguf {path} is not a .gguf file", "pass the base model's GGUF file")
        return path
    if source.kind == "embedded":
        return Path(resolve_model_source(source.name, convert_embedded=False).path)
    if source.kind == "gguf":
        return Path(source.path) / source.gguf_file
    raise ModelError(f"the run's base {source.name} has no GGUF: a GGUF export is made against the base's own "
                     "GGUF (llama.cpp applies the LoRA to its tensors; a merged GGUF takes its tokenizer from it)",
                     "convert the base once with llama.cpp's convert_hf_to_gguf.py and pass --base-gguf FILE")


def read_base_gguf(path: Path) -> BaseGguf:
    """Architecture, block count and tensor shapes of a GGUF file (memory-mapped: nothing is loaded)."""
    from gguf import GGUFReader  # heavy for `tallrec --help`: only exports need it

    try:
        reader = GGUFReader(path)
    except (ValueError, OSError) as exc:
        raise ArtifactError(f"{path} is not a readable GGUF file ({exc})", "pass the base model's GGUF") from None
    arch = _field(reader, "general.architecture")
    blocks = _field(reader, f"{arch}.block_count")
    shapes = {tensor.name: tuple(int(n) for n in reversed(tensor.shape)) for tensor in reader.tensors}
    return BaseGguf(path, arch, blocks, shapes)


def _field(reader, key: str) -> Any:
    """A scalar or string metadata value of a GGUF file, None when absent."""
    import gguf  # heavy for `tallrec --help`: only exports need it

    field = reader.fields.get(key)
    if field is None:
        return None
    value = field.parts[field.data[0]]
    return bytes(value).decode("utf-8") if field.types[0] == gguf.GGUFValueType.STRING else value.tolist()[0]


def check_base_gguf(base: BaseGguf, layout: GgufLayout) -> None:
    """Refuse a GGUF that is not of the run's base architecture and depth."""
    if base.arch != layout.arch or base.n_blocks != layout.n_blocks:
        raise ModelError(f"{base.path} is a {base.arch} GGUF with {base.n_blocks} blocks; the run's base "
                         f"({layout.model_type}) converts to {layout.arch} with {layout.n_blocks}",
                         "pass --base-gguf with a GGUF of the model the run was trained on")


# ------------------------------------------------------------------------------------------ the adapter

@dataclass(frozen=True)
class LoraModule:
    """One LoRA module in GGUF terms: A as trained, B scaled for llama.cpp and in its row order."""
    module: str  # Hugging Face module name, e.g. model.layers.0.self_attn.q_proj
    tensor: str  # GGUF name of the base weight, e.g. blk.0.attn_q.weight
    a: Any  # numpy float32, r x in
    b: Any  # numpy float32, out x r


def adapter_problems(adapter_config: dict[str, Any], tensor_names: list[str]) -> list[str]:
    """Why llama.cpp cannot load this PEFT adapter as a GGUF LoRA (empty when it can)."""
    problems = []
    if adapter_config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {adapter_config.get('peft_type')} (llama.cpp loads LoRA only)")
    if adapter_config.get("use_dora"):
        problems.append("DoRA (use_dora): llama.cpp applies plain LoRA, without DoRA's magnitude vector")
    if adapter_config.get("bias", "none") != "none" or adapter_config.get("lora_bias"):
        problems.append("LoRA biases (bias / lora_bias)")
    if adapter_config.get("modules_to_save"):
        problems.append(f"fully trained modules (modules_to_save: {', '.join(adapter_config['modules_to_save'])})")
    for key in ("target_parameters", "trainable_token_indices", "layer_replication"):
        if adapter_config.get(key):
            problems.append(key)
    trained = sorted({name for name in tensor_names
                      if any(f".{module}." in f".{name}" for module in _UNLOADABLE_MODULES)})
    if trained:
        problems.append(f"trained embeddings or lm_head ({trained[0]}{', ...' if len(trained) > 1 else ''})")
    others = sorted(name for name in tensor_names
                    if not name.endswith(_LORA_SUFFIXES) and name not in trained)
    if others:
        problems.append(f"tensors other than LoRA A/B ({others[0]}{', ...' if len(others) > 1 else ''})")
    return problems


def lora_modules(adapter_config: dict[str, Any], weights: dict[str, Any], layout: GgufLayout) -> list[LoraModule]:
    """The adapter's modules in llama.cpp's terms (``weights``: PEFT tensor name -> float32 array).

    PEFT scales a module by alpha_m / r_m (alpha_m / sqrt(r_m) with rsLoRA; alpha_m and r_m from the alpha and
    rank patterns); llama.cpp by alpha / r_m with the file's one alpha. B carries the ratio, so alpha is the
    config's lora_alpha and a plain adapter's B is written as trained."""
    from peft.utils.other import get_pattern_key  # heavy for `tallrec --help`: only exports need it

    alpha = float(adapter_config.get("lora_alpha", 8))
    alpha_pattern = adapter_config.get("alpha_pattern") or {}
    modules = []
    for name in sorted(weights):
        if not name.endswith(".lora_A.weight"):
            continue
        module = name[:-len(".lora_A.weight")].removeprefix(_PEFT_PREFIX)
        a, b = weights[name], weights[name[:-len(".lora_A.weight")] + ".lora_B.weight"]
        rank = a.shape[0]
        module_alpha = float(alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), module), alpha))
        # (PEFT's scale) / (llama.cpp's alpha / rank): exactly 1.0 for a plain adapter, so B is written as trained
        ratio = module_alpha * rank / (alpha * (rank ** 0.5 if adapter_config.get("use_rslora") else rank))
        tensor = layout.tensor_name(module)
        if tensor is None:
            raise ModelError(f"gguf {_gguf_version()} maps no {layout.arch} tensor for the adapter's module {module}",
                             "train LoRA on the attention and MLP projections (q/k/v/o, gate/up/down)")
        modules.append(LoraModule(module, tensor, a, layout.reorder_rows(b * ratio if ratio != 1.0 else b, module)))
    return modules


def check_against_base(modules: list[LoraModule], base: BaseGguf) -> None:
    """Every module must name a base tensor of the shape B @ A has, as llama.cpp checks on load."""
    for each in modules:
        shape = base.shapes.get(each.tensor)
        expected = (each.b.shape[0], each.a.shape[1])
        if shape != expected:
            found = f"is {shape}" if shape else "does not exist"
            raise ModelError(f"the adapter's {each.module} needs base tensor {each.tensor} of shape {expected}; in "
                             f"{base.path.name} it {found}", "pass --base-gguf with a GGUF of the run's base model")


def read_adapter(run: TrainRun) -> dict[str, Any]:
    """The run's adapter tensors as float32 numpy arrays (bf16 has no numpy type: read through torch)."""
    from safetensors.torch import load_file  # heavy for `tallrec --help`: only exports need it

    return {name: tensor.float().numpy() for name, tensor in load_file(run.adapter_dir / ADAPTER_WEIGHTS).items()}


# ------------------------------------------------------------------------------------------ writing GGUF

def _ggml_type(dtype: str):
    import gguf  # heavy for `tallrec --help`: only exports need it

    return gguf.GGMLQuantizationType[GGUF_DTYPES[dtype]]


def write_lora_gguf(path: Path, modules: list[LoraModule], layout: GgufLayout, alpha: float, dtype: str,
                    name: str) -> None:
    """A GGUF LoRA as llama.cpp's convert_lora_to_gguf.py writes one: general.type adapter, adapter.type lora,
    adapter.lora.alpha; tensors ``<base tensor>.lora_a`` (r x in) and ``.lora_b`` (out x r)."""
    import gguf  # heavy for `tallrec --help`: only exports need it

    qtype = _ggml_type(dtype)
    writer = gguf.GGUFWriter(path, layout.arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(name)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for each in modules:
        for suffix, matrix in ((".lora_a", each.a), (".lora_b", each.b)):
            writer.add_tensor(each.tensor + suffix, gguf.quants.quantize(matrix, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _copied_fields(reader) -> list[tuple[str, Any, Any, Any]]:
    """(key, value, type, array item type) of every metadata field a merged model keeps from its base: all but
    the file's own header fields and those the writer sets (architecture, file type)."""
    import gguf  # heavy for `tallrec --help`: only exports need it

    skipped = ("general.architecture", "general.file_type")
    fields = []
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in skipped:
            continue
        kind = field.types[0]
        item = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        if kind == gguf.GGUFValueType.ARRAY:
            parts = [field.parts[index] for index in field.data]
            value = ([bytes(part).decode("utf-8") for part in parts] if item == gguf.GGUFValueType.STRING
                     else [part.tolist()[0] for part in parts])
        else:
            value = _field(reader, key)
        fields.append((key, value, kind, item))
    return fields


def _tensor_type(shape: tuple[int, ...], qtype):
    """llama.cpp's converter keeps 1-D tensors (norms) in F32 and rows that do not fill a q8_0 block in F16."""
    import gguf  # heavy for `tallrec --help`: only exports need it

    if len(shape) < 2:
        return gguf.GGMLQuantizationType.F32
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    return qtype if shape[-1] % block == 0 else gguf.GGMLQuantizationType.F16


def merged_gguf_bytes(base: BaseGguf, dtype: str) -> int:
    """Size of the tensors of a merged GGUF at ``dtype`` (metadata aside)."""
    import gguf  # heavy for `tallrec --help`: only exports need it

    qtype = _ggml_type(dtype)
    return sum(math.prod(gguf.quant_shape_to_byte_shape(shape, _tensor_type(shape, qtype)))
               for shape in base.shapes.values())


def write_merged_gguf(path: Path, base: Path, modules: list[LoraModule], alpha: float, dtype: str) -> None:
    """The base GGUF with B @ A (llama.cpp's scale alpha / r) added to each adapted weight, every 2-D tensor
    stored as ``dtype``; metadata and tokenizer copied from the base. One tensor in memory at a time."""
    import gguf  # heavy for `tallrec --help`: only exports need it
    import numpy as np

    qtype = _ggml_type(dtype)
    reader = gguf.GGUFReader(base)
    deltas = {each.tensor: each for each in modules}
    writer = gguf.GGUFWriter(path, _field(reader, "general.architecture"))
    for key, value, kind, item in _copied_fields(reader):
        writer.add_key_value(key, value, kind, sub_type=item)
    writer.add_file_type({"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
                          "BF16": gguf.LlamaFileType.MOSTLY_BF16, "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[qtype.name])
    plan = []
    for tensor in reader.tensors:
        shape = tuple(int(n) for n in reversed(tensor.shape))
        target = _tensor_type(shape, qtype)
        byte_shape = gguf.quant_shape_to_byte_shape(shape, target)
        writer.add_tensor_info(tensor.name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=target)
        plan.append((tensor, shape, target))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor, shape, target in plan:
        weight = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(shape).astype(np.float32)
        lora = deltas.get(tensor.name)
        if lora is not None:
            weight = weight + (alpha / lora.a.shape[0]) * (lora.b @ lora.a)
        writer.write_tensor_data(gguf.quants.quantize(weight, target).view(np.uint8))
    writer.close()


# ------------------------------------------------------------------------------------------ Ollama and the card

def modelfile(model_file: str, adapter_file: str | None, base_note: str) -> str:
    """An Ollama Modelfile: the prompt goes in as tallrec renders it (no chat wrapping), one answer token."""
    lines = ["# Ollama Modelfile written by tallrec: `ollama create NAME -f Modelfile` in this folder.",
             "# Prompts are sent as tallrec renders them (the README's template, up to the answer): TEMPLATE passes",
             "# them through; the answer is one token (Yes / No).", f"# {base_note}", f"FROM ./{model_file}"]
    if adapter_file:
        lines.append(f"ADAPTER ./{adapter_file}")
    lines += ['TEMPLATE """{{ .Prompt }}"""', "PARAMETER temperature 0", "PARAMETER num_predict 1"]
    return "\n".join(lines) + "\n"


def llamacpp_card_section(folder: str, model_file: str, adapter_file: str | None, example: Example,
                          modelfile_name: str = MODELFILE) -> str:
    """Markdown for a card: a program that scores ``example`` with llama.cpp (xllamacpp) and prints P(yes), the
    llama-server command and Ollama's, by the export folder's name and its files' names (``model_file``: the base
    GGUF the LoRA ``adapter_file`` goes with, which the reader puts in the folder; else the merged GGUF)."""
    where = f"{folder}/{model_file}"
    lora = f"{folder}/{adapter_file}" if adapter_file else None
    base_note = (f"`{model_file}` is the base model's GGUF the adapter was exported against (its sha256 is in "
                 f"`manifest.json`): put it in this folder, or change `MODEL` and the Modelfile's `FROM` to its "
                 "path.\n\n" if adapter_file else "")
    return (
        "## Use with llama.cpp / Ollama\n\n" + base_note
        + "The prompt goes in as rendered above (no chat template); P(yes) = softmax over the first token's "
        "log-probabilities of the two label tokens:\n\n```python\nimport math\n\nimport xllamacpp as xlc\n\n"
        f"MODEL = {where!r}\n" + (f"ADAPTER = {lora!r}\n" if lora else "") + "\nparams = xlc.CommonParams()\n"
        "params.model.path = MODEL\n"
        + ("params.lora_adapters = [xlc.CommonAdapterLoraInfo(ADAPTER, 1.0)]\n" if lora else "")
        + "server = xlc.Server(params)\n\n"
        f"prompt = {example.prompt!r}\n"
        f"YES, NO = {example.positive_id}, {example.negative_id}\n"
        "answer = server.handle_completions({\"prompt\": prompt, \"max_tokens\": 1, \"temperature\": 0, "
        "\"n_probs\": 20})\n"
        "first = answer[\"choices\"][0][\"logprobs\"][\"content\"][0]\n"
        "top = {each[\"id\"]: each[\"logprob\"] for each in first[\"top_logprobs\"]}\n"
        "p_yes = 1 / (1 + math.exp(top[NO] - top[YES]))\nprint(f\"P(yes) = {p_yes:.6f}\")\n```\n\n"
        f"```bash\nllama-server -m {where}" + (f" --lora {lora}" if lora else "") + "  # requests ask for n_probs\n"
        f"cd {folder} && ollama create tallrec-recommender -f {modelfile_name} && ollama run tallrec-recommender\n```\n"
    )


def gguf_card(name: str, folder: str, base: BaseRef, manifest: TrainedAdapter, export_format: str, dtype: str,
              files: dict[str, str], example: Example, evals: Sequence[EvalSummary]) -> str:
    """README.md of a GGUF export."""
    lora = export_format == "gguf-lora"
    meta = card_metadata(name, base, manifest, evals, "gguf", "adapter" if lora else "finetune")
    meta["tags"] += ["llama.cpp", "ollama"]
    what = (f"A LoRA adapter for `{base.name}` as a GGUF LoRA ({dtype}) for llama.cpp and Ollama" if lora
            else f"`{base.name}` with a LoRA adapter merged in, as GGUF ({dtype}) for llama.cpp and Ollama")
    return (front_matter(meta) + f"\n# {name}\n\n{what}; it answers whether a user will like an item (TALLRec-style), "
            "exported by tallrec.\n\n" + eval_section(evals) + "\n" + base_section(base) + "\n"
            + prompt_section(manifest) + "\n" + results_section(manifest) + card_section(manifest.as_dict()) + "\n"
            + llamacpp_card_section(folder, files["model"], files.get("adapter"), example) + "\n"
            + upload_section(folder) + "\n## Integrity\n\n`manifest.json` records the sha256 of every file.\n")


# ------------------------------------------------------------------------------------------ the workflow

@dataclass(frozen=True)
class GgufExport:
    path: Path
    export_format: str
    dtype: str
    arch: str
    modules: int
    files: dict[str, str]  # role (model, adapter, modelfile) -> file name in the folder
    base_gguf: Path
    manifest: GgufExportManifest


def gguf_dtype(export_format: str, requested: str) -> str:
    """``auto`` -> float16; refused: q8_0 for a LoRA, anything GGUF has no type for."""
    dtype = "float16" if requested == "auto" else requested
    allowed = LORA_DTYPES if export_format == "gguf-lora" else tuple(GGUF_DTYPES)
    if dtype not in allowed:
        raise ConfigError(f"--dtype {requested} is not a {export_format} type (one of auto, {', '.join(allowed)})",
                          "q8_0 quantizes a merged model (--format gguf); a GGUF LoRA stays float"
                          if dtype == "q8_0" else f"pick one of {', '.join(allowed)}")
    return dtype


def export_gguf(run_dir: str | Path, output: str | Path, export_format: str = "gguf-lora", dtype: str = "auto",
                base_gguf: str | Path | None = None, overwrite: bool = False, base_model: str | None = None,
                name: str | None = None) -> GgufExport:
    """Write the run's adapter as a GGUF LoRA (``gguf-lora``) or merged into the base's GGUF (``gguf``), with an
    Ollama Modelfile, a card and a ``gguf-export`` manifest hashing every file. Everything llama.cpp would refuse
    is refused before anything is written."""
    from transformers import AutoConfig  # heavy for `tallrec --help`: only exports need it

    if export_format not in GGUF_FORMATS:
        raise ConfigError(f"--format {export_format} is not a GGUF format ({', '.join(GGUF_FORMATS)})")
    dtype = gguf_dtype(export_format, dtype)
    output = Path(output)
    refuse_overlap(output, [run_dir, base_model if base_model and Path(base_model).exists() else None, base_gguf])
    check_output_folder(output, EXPORT_KINDS, overwrite)
    run = load_train_run(run_dir)
    problems = adapter_problems(run.adapter_config, list(run.tensor_names))
    if problems:
        raise ModelError(f"llama.cpp cannot load this adapter: {'; '.join(problems)}",
                         "export --format adapter (PEFT) or --format merged instead, or retrain with plain LoRA "
                         "on the attention and MLP projections")
    source = resolve_base(run, base_model)
    if tokenizer_differs(run, source):
        raise ModelError("the run has its own tokenizer (added tokens or another vocabulary); llama.cpp runs the "
                         "base GGUF's", "export --format adapter or --format merged instead")
    layout = gguf_layout(AutoConfig.from_pretrained(source.path, gguf_file=source.gguf_file))
    base = read_base_gguf(base_gguf_path(source, base_gguf))
    check_base_gguf(base, layout)
    modules = lora_modules(run.adapter_config, read_adapter(run), layout)
    check_against_base(modules, base)
    example = card_example(run, source)
    if export_format == "gguf":
        ensure_disk_space(output, merged_gguf_bytes(base, dtype))

    alpha = float(run.adapter_config.get("lora_alpha", 8))
    name = name or output.name
    base_sha256 = sha256_file(base.path)
    payload = run_payload(run, source)
    card_base = base_ref(source, payload["base_model"])
    with staged_dir(output, EXPORT_KINDS, overwrite=overwrite) as staging:
        if export_format == "gguf-lora":
            files = {"model": base.path.name, "adapter": f"{name}.lora.{GGUF_DTYPES[dtype].lower()}.gguf"}
            write_lora_gguf(staging / files["adapter"], modules, layout, alpha, dtype, name)
            note = f"FROM: the base GGUF {base.path.name} (sha256 {base_sha256}), put beside this file"
        else:
            files = {"model": f"{name}.{GGUF_DTYPES[dtype].lower()}.gguf"}
            write_merged_gguf(staging / files["model"], base.path, modules, alpha, dtype)
            note = f"FROM: the merged model (base {base.path.name}, sha256 {base_sha256})"
        files["modelfile"] = MODELFILE
        write_text_atomic(staging / MODELFILE, modelfile(files["model"], files.get("adapter"), note))
        write_text_atomic(staging / "README.md", gguf_card(name, output.name, card_base, run.manifest, export_format,
                                                           dtype, files, example, run_evaluations(run.path)))
        details = {"format": export_format, "dtype": dtype, "ggml_type": GGUF_DTYPES[dtype],
                   "architecture": layout.arch, "lora_alpha": alpha, "modules": len(modules),
                   "rope_rows_reordered": layout.rope_reorder, "files": files,
                   "base_gguf": {"file": base.path.name, "sha256": base_sha256}}
        manifest = GgufExportManifest.new(**payload, name=name, base_model_name_or_path=card_base.name,
                                          gguf=details, files=file_hashes(staging)).write(staging)
    return GgufExport(output, export_format, dtype, layout.arch, len(modules), files, base.path, manifest)


def describe(export: GgufExport) -> str:
    """One line for the CLI: what was written, and what Ollama needs beside it."""
    if export.export_format == "gguf-lora":
        return (f"GGUF LoRA ({export.dtype}, {export.modules} modules, {export.arch}) -> {export.path}; "
                f"its Modelfile expects the base GGUF {export.base_gguf.name} beside it ({export.base_gguf})")
    return f"merged GGUF ({export.dtype}, {export.arch}) -> {export.path / export.files['model']}"

