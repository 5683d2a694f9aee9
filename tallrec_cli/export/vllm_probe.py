"""vLLM's own LoRA loader on an exported adapter, without the base's weights: run by `tallrec_cli.export.vllm`
with the python of vLLM's venv, so it imports nothing from tallrec.

    python -I vllm_probe.py ADAPTER_DIR BASE_DIR MAX_LORA_RANK   (-I: this folder's vllm.py must not shadow vllm)

It does what vLLM's worker does when a LoRARequest arrives (vllm/lora/worker_manager.py, ``_load_adapter``):
PEFTHelper reads adapter_config.json and checks it against the LoRA config (``validate_legal``), then
LoRAModel.from_local_checkpoint reads the tensors and refuses modules the model takes no LoRA on. The model
those modules come from is vLLM's class for the base's architecture, built on the meta device: the check costs
vLLM's import and config (seconds to a minute), not the model's memory. Prints one JSON line: {"vllm": version,
"problems": [...]}.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path


def expected_modules(model) -> set[str]:
    """The PEFT module names vLLM loads LoRA weights for (packed modules by their parts), as the worker does."""
    from vllm.lora.utils import get_supported_lora_modules

    packed = getattr(model, "packed_modules_mapping", {}) or {}
    expected = set()
    for module in get_supported_lora_modules(model):
        expected.update(packed.get(module, [module]))
        if module == "experts":
            expected.add(module)
    return expected


def meta_model(config):
    """vLLM's model for the config, on the meta device (one process, no weights)."""
    import torch
    from vllm.config import set_current_vllm_config
    from vllm.distributed import ensure_model_parallel_initialized, init_distributed_environment
    from vllm.model_executor.model_loader.utils import get_model_architecture

    rendezvous = Path(tempfile.mkdtemp()) / "rendezvous"
    with set_current_vllm_config(config):
        init_distributed_environment(1, 0, f"file://{rendezvous}", 0, "gloo")
        ensure_model_parallel_initialized(1, 1)
        model_cls, _ = get_model_architecture(config.model_config)
        with torch.device("meta"):
            return model_cls(vllm_config=config)


def check(adapter_dir: str, base_dir: str, max_lora_rank: int) -> list[str]:
    """vLLM's refusals of the adapter, [] when it loads."""
    import torch
    from vllm.engine.arg_utils import EngineArgs
    from vllm.lora.lora_model import LoRAModel
    from vllm.lora.peft_helper import PEFTHelper

    config = EngineArgs(model=base_dir, enable_lora=True, max_lora_rank=max_lora_rank, dtype="float32",
                        enforce_eager=True, load_format="dummy").create_engine_config()
    try:
        helper = PEFTHelper.from_local_dir(adapter_dir, config.model_config.max_model_len)
        helper.validate_legal(config.lora_config)
        model = meta_model(config)
        mapper = getattr(model, "hf_to_vllm_mapper", None)
        LoRAModel.from_local_checkpoint(
            adapter_dir, expected_modules(model), peft_helper=helper, lora_model_id=1, device="cpu",
            dtype=torch.float32, model_vocab_size=config.model_config.get_vocab_size(),
            weights_mapper=mapper.get_rename_mapper() if mapper is not None else None,
            skip_prefixes=getattr(model, "lora_skip_prefixes", None))
    except ValueError as exc:  # how vLLM's loader refuses an adapter
        return [str(exc)]
    return []


def main(adapter_dir: str, base_dir: str, max_lora_rank: str) -> None:
    # vllm is imported here, in its own venv: tallrec's venv never has it
    import vllm

    print(json.dumps({"vllm": vllm.__version__, "problems": check(adapter_dir, base_dir, int(max_lora_rank))}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
