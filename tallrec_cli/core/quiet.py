"""Third-party noise: silenced unless TALLREC_DEBUG=1 (then tracebacks, logs, warnings and progress bars stay)."""

from __future__ import annotations

import logging
import os
import sys
import warnings


def debug_enabled() -> bool:
    """TALLREC_DEBUG=1: tracebacks, and third-party logs, warnings and progress bars left as they are."""
    return os.environ.get("TALLREC_DEBUG", "") not in ("", "0")


# Loggers of libraries that talk at import or load time (bitsandbytes: "Failed to load CPU gemm_4bit_forward
# from kernels-community" with no 4-bit in use; transformers: load reports; httpx: every hub request).
_NOISY_LOGGERS = ("transformers", "bitsandbytes", "peft", "trl", "accelerate", "datasets", "huggingface_hub",
                  "httpx", "torch.distributed", "kernels")


def quiet_libraries() -> None:
    """Silence third-party progress bars, warnings and logs that carry nothing for the user (transformers'
    "Loading weights" and GGUF bars, FutureWarnings about their own APIs); TALLREC_DEBUG=1 keeps them.
    Environment switches are set for libraries not imported yet, API calls for those already imported."""
    if debug_enabled():
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # trl tokenises through datasets.map
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # transformers' GGUF loader ("Converting and de-quantizing GGUF tensors") uses plain tqdm, which its
    # progress-bar switch does not reach; tqdm reads TQDM_* variables when it is imported.
    os.environ.setdefault("TQDM_DISABLE", "1")
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for module in ("torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes", "datasets", "gguf"):
        warnings.filterwarnings("ignore", category=UserWarning, module=module)
    warnings.filterwarnings("ignore", message=".*(gradient checkpointing|use_cache|torch.utils.checkpoint).*")
    if "transformers" in sys.modules:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
