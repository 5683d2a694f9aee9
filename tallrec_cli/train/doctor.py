"""`tallrec doctor`: is this machine (and a recipe) ready to train? One verdict and one fix per line.

Most reports on TALLRec's tracker are broken environments: a CPU-only torch, a bitsandbytes build that
does not match the CUDA runtime, a missing package. Every check here runs the real thing where it can
(a 4-bit and an 8-bit bitsandbytes matmul, an SDPA call on the device) and never raises: a failing check
is a ``fail`` line with the reason and what to do.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tallrec_cli.core.errors import ConfigError, TallrecError
from tallrec_cli.core.files import check_writable, tallrec_home
from tallrec_cli.core.quiet import quiet_libraries
from tallrec_cli.model.loading import EMBEDDED_MODELS, bitsandbytes_problem, cpu_supports_bf16
from tallrec_cli.train.capacity import CUDA_RESERVE_GIB, estimate_recipe, shortfall_advice
from tallrec_cli.train.config import load_train_config

GIB = 1024 ** 3
VERDICTS = ("ok", "warn", "fail", "skip")
# Packages `tallrec train` imports; bitsandbytes only for quantized recipes (checked by its matmul line).
REQUIRED_PACKAGES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "safetensors")
DISK_WARN_GIB = 30.0  # one 7B/8B model in bf16 (~15 GB) plus a merged export of it
DISK_FAIL_GIB = 2.0


@dataclass(frozen=True)
class Check:
    """One line of the report: ``verdict`` is ok, warn, fail or skip; ``fix`` says what to do when not ok."""
    name: str
    verdict: str
    detail: str
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "verdict": self.verdict, "detail": self.detail, "fix": self.fix}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def check_packages() -> list[Check]:
    checks = []
    for name in REQUIRED_PACKAGES:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            checks.append(Check(name, "fail", "not installed", f"pip install {name} (or pip install -e . in tallrec-cli)"))
            continue
        checks.append(Check(name, "ok", version))
    return checks


def check_torch() -> list[Check]:
    import torch

    build = f"torch {torch.__version__}, CUDA build {torch.version.cuda}" if torch.version.cuda else \
        f"torch {torch.__version__}, CPU-only build"
    if not torch.cuda.is_available():
        fix = ("install a CUDA build: pip install torch --index-url https://download.pytorch.org/whl/cu128"
               if torch.version.cuda is None else
               "torch has CUDA but sees no GPU: check nvidia-smi, the driver and CUDA_VISIBLE_DEVICES")
        return [Check("CUDA", "warn", f"{build}; no CUDA device: training and eval run on the CPU "
                                      "(fine for smollm2-135m, far too slow for 7B)", fix)]
    driver = _driver_version()
    return [Check("CUDA", "ok", f"{build}, driver {driver or 'unknown'}, {torch.cuda.device_count()} device(s)")]


def _driver_version() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = result.stdout.strip().splitlines()
    return lines[0].strip() if result.returncode == 0 and lines else None


def check_gpus() -> list[Check]:
    """Name, compute capability and free memory of each visible GPU."""
    import torch

    if not torch.cuda.is_available():
        return [Check("GPU", "skip", "no CUDA device", None)]
    checks = []
    for index in range(torch.cuda.device_count()):
        name = torch.cuda.get_device_name(index)
        major, minor = torch.cuda.get_device_capability(index)
        free, total = torch.cuda.mem_get_info(index)
        detail = f"{name}, compute {major}.{minor}, {free / GIB:.1f} of {total / GIB:.1f} GiB free"
        if major < 7:
            checks.append(Check(f"GPU {index}", "fail", detail + " (older than Volta)",
                                "bitsandbytes and bf16 need compute capability >= 7.0 (>= 8.0 for bf16); use a newer GPU"))
        elif free < 0.8 * total:
            checks.append(Check(f"GPU {index}", "warn", detail + ": other processes hold memory",
                                "see nvidia-smi; stop them or pick another GPU with CUDA_VISIBLE_DEVICES"))
        else:
            checks.append(Check(f"GPU {index}", "ok", detail))
    return checks


def check_bf16() -> Check:
    import torch

    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return Check("bf16", "ok", "supported on the GPU: dtype auto trains in bf16")
        return Check("bf16", "warn", "this GPU lacks bf16: dtype auto falls back to fp16 (loss scaling, more overflow risk)",
                     "nothing to do for LoRA; an Ampere or newer GPU (RTX 30xx+) trains in bf16")
    if cpu_supports_bf16():
        return Check("bf16", "ok", "CPU has AVX512-BF16/AMX: dtype auto computes in bf16 on the CPU")
    return Check("bf16", "warn", "CPU lacks native bf16: dtype auto uses float32 (about 3x slower)",
                 "nothing to fix; train on a GPU for anything beyond smollm2-135m")


def _bnb_matmul(device: str, bits: int) -> float:
    """Relative error of a bitsandbytes 4-bit (NF4) or 8-bit layer's forward against the same weights in float."""
    import bitsandbytes as bnb
    import torch

    torch.manual_seed(0)
    dense = torch.nn.Linear(256, 128, bias=False)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if bits == 4:
        layer = bnb.nn.Linear4bit(256, 128, bias=False, compute_dtype=dtype, quant_type="nf4")
        layer.weight = bnb.nn.Params4bit(dense.weight.data.clone(), requires_grad=False, quant_type="nf4")
    else:
        layer = bnb.nn.Linear8bitLt(256, 128, bias=False, has_fp16_weights=False, threshold=6.0)
        layer.weight = bnb.nn.Int8Params(dense.weight.data.clone(), requires_grad=False, has_fp16_weights=False)
    layer = layer.to(device)
    inputs = torch.randn(8, 256)
    with torch.no_grad():
        output = layer(inputs.to(device, dtype)).float().cpu()
        reference = dense(inputs)
    return float((output - reference).norm() / reference.norm())


def check_bitsandbytes(device: str) -> list[Check]:
    """A real 4-bit and 8-bit matmul on ``device``; NF4 keeps ~10% relative error, int8 ~1%."""

    quiet_libraries()  # before the import: bitsandbytes talks while loading
    problem = bitsandbytes_problem()
    if problem is not None:
        return [Check("bitsandbytes", "fail", f"{problem[0]}: 4bit/8bit recipes (QLoRA, TALLRec's 8-bit) cannot run",
                      problem[1])]
    checks = []
    version = importlib.metadata.version("bitsandbytes")
    for bits, tolerance in ((4, 0.25), (8, 0.05)):
        name = f"bitsandbytes {bits}-bit"
        try:
            error = _bnb_matmul(device, bits)
        except Exception as exc:  # any failure here is the answer the user came for
            checks.append(Check(name, "fail", f"{version} on {device}: {_first_line(exc)}",
                                "run `python -m bitsandbytes` for its diagnosis; reinstall a build matching "
                                "torch's CUDA (pip install -U bitsandbytes)"))
            continue
        verdict = "ok" if error < tolerance else "fail"
        checks.append(Check(name, verdict, f"{version}, matmul on {device}: relative error {error:.3f}",
                            None if verdict == "ok" else "the kernel gives wrong results: pip install -U bitsandbytes"))
    return checks


def check_attention(device: str) -> list[Check]:
    import torch
    import torch.nn.functional as functional

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    query = torch.randn(1, 4, 64, 64, device=device, dtype=dtype)
    try:
        functional.scaled_dot_product_attention(query, query, query, is_causal=True)
    except Exception as exc:
        return [Check("SDPA attention", "fail", _first_line(exc), "upgrade torch (>= 2.4)")]
    checks = [Check("SDPA attention", "ok", f"scaled_dot_product_attention runs on {device} (attn_implementation=sdpa)")]
    if device != "cuda":
        checks.append(Check("flash attention", "skip", "CUDA only"))
        return checks
    from torch.nn.attention import SDPBackend, sdpa_kernel

    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            functional.scaled_dot_product_attention(query, query, query, is_causal=True)
        checks.append(Check("flash attention", "ok", "torch's flash SDPA kernel runs (used through sdpa)"))
    except Exception as exc:
        checks.append(Check("flash attention", "warn", f"flash SDPA kernel unavailable: {_first_line(exc)}",
                            "memory-efficient SDPA is used instead; flash needs compute capability >= 8.0"))
    return checks


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(home: Path) -> Check:
    try:  # caches are written there: a read-only one fails the first model conversion
        check_writable(home)
    except (TallrecError, OSError) as exc:
        return Check("disk", "fail", f"TALLREC_HOME: {getattr(exc, 'message', exc)}",
                     "point TALLREC_HOME at a writable folder")
    free = shutil.disk_usage(_existing_parent(home)).free / GIB
    detail = f"{free:.1f} GiB free for TALLREC_HOME ({home})"
    if free < DISK_FAIL_GIB:
        return Check("disk", "fail", detail, "free disk space or point TALLREC_HOME at a bigger disk")
    if free < DISK_WARN_GIB:
        return Check("disk", "warn", detail + f": under {DISK_WARN_GIB:g} GiB, too little for a 7B model and its merged export",
                     "free disk space or point TALLREC_HOME at a bigger disk")
    return Check("disk", "ok", detail)


def check_embedded_models(home: Path) -> list[Check]:

    checks = []
    for name, model in EMBEDDED_MODELS.items():
        terms = f"; {model.terms}" if model.terms else ""
        if importlib.util.find_spec(model.package) is None:
            missing = f"the {model.package.replace('_', '-')} package is missing"
            checks.append(Check(f"embedded {name}", "skip", f"optional, not installed ({model.install}{terms})")
                          if model.extra else Check(f"embedded {name}", "fail", missing, model.install))
        elif (home / "models" / name / "manifest.json").is_file():
            checks.append(Check(f"embedded {name}", "ok", f"converted copy cached in {home / 'models' / name}"))
        else:
            checks.append(Check(f"embedded {name}", "ok", f"installed; converted to safetensors on first use{terms}"))
    return checks


def memory_budget() -> tuple[float, str]:
    """Bytes a training run may use here: free memory of GPU 0, else available RAM (CPU training)."""
    import torch

    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(0)
        return float(free), f"free on {torch.cuda.get_device_name(0)}"
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return float(line.split()[1]) * 1024, "available RAM (no GPU: the CPU trains)"
    return float("nan"), "unknown"


def _gpu_count() -> int:
    import torch

    return max(1, torch.cuda.device_count())


def check_recipe_fit(recipe: str | Path | None, overrides: dict | None = None,
                     budget: Callable[[], tuple[float, str]] = memory_budget) -> Check:
    """The recipe's `--dry-run` peak-memory estimate against what this machine has free."""

    name = f"recipe {Path(recipe).name if recipe else '(defaults)'}"
    try:
        config = load_train_config(recipe, overrides)
        estimate = estimate_recipe(config, processes=_gpu_count() if config.training.fsdp else 1)
    except TallrecError as exc:
        # a config error's heading alone ("recipe.yaml has 1 problem") would drop the problem itself
        return Check(name, "fail", "; ".join(exc.problems) if isinstance(exc, ConfigError) else exc.message, exc.hint)
    available, where = budget()
    needed = estimate.needed_bytes  # the peak and the CUDA context, as `--dry-run` checks it
    detail = (f"needs ~{needed / GIB:.1f} GiB per GPU ({estimate.total_gib:.1f} peak + {CUDA_RESERVE_GIB:g} CUDA "
              f"context), {available / GIB:.1f} GiB {where}")
    if needed <= available:
        return Check(name, "ok", detail + f" (headroom {(available - needed) / GIB:.1f} GiB)")
    return Check(name, "fail", detail + f": short by {(needed - available) / GIB:.1f} GiB",
                 shortfall_advice(estimate))


def run_checks(recipe: str | Path | None = None, overrides: dict | None = None, with_recipe: bool = False) -> list[Check]:
    """Every check, in report order. Packages first: later checks import them."""

    checks = check_packages()
    if any(check.name == "torch" and check.verdict == "fail" for check in checks):
        return checks
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    home = tallrec_home()
    checks += check_torch() + check_gpus() + [check_bf16()] + check_bitsandbytes(device) + check_attention(device)
    checks += [check_disk(home), *check_embedded_models(home)]
    if with_recipe or recipe is not None:
        checks.append(check_recipe_fit(recipe, overrides))
    return checks


def worst_verdict(checks: list[Check]) -> str:
    for verdict in ("fail", "warn"):
        if any(check.verdict == verdict for check in checks):
            return verdict
    return "ok"
