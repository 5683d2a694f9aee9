"""FSDP2 (training.fsdp): what tallrec does differently when the model is sharded across processes.

accelerate wraps each decoder layer and the model itself with ``fully_shard``. Validation scores the
model piece by piece (`tallrec_cli.model.scoring` runs the body, then only the label rows of the LM head), which
bypasses the root module's pre-forward hook, so the root's own parameters (embeddings, final norm,
LM head) are gathered around it. The best adapter is gathered from every rank (a collective: all ranks
call it) and written once, by rank 0, as a plain PEFT adapter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _outer_units(model) -> list:
    """The FSDP units that are not decoder layers: the root, the embeddings, the final norm + LM head."""
    from torch.distributed.fsdp import FSDPModule

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = set(getattr(base, "_no_split_modules", None) or [])
    return [module for module in model.modules() if isinstance(module, FSDPModule)
            and not any(cls.__name__ in layers for cls in type(module).__mro__)]


@contextlib.contextmanager
def root_gathered(model) -> Iterator[None]:
    """Everything but the decoder layers gathered in full for the block (a no-op when not sharded); the
    layers gather their own weights when they run, so peak memory stays one layer above the shards."""
    if not is_sharded(model):
        yield
        return
    import torch

    # FSDP initialises from the root's first forward and refuses pieces run before it (step-0 validation
    # comes before any training step): one token through the root does it.
    with torch.no_grad():
        model(input_ids=torch.ones(1, 1, dtype=torch.long, device=next(model.parameters()).device))
    units = _outer_units(model)
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()


def trainable_state(model) -> dict | None:
    """The trainable (LoRA) parameters in full, on the CPU of rank 0 (empty elsewhere); None when the
    model is not sharded (peft reads the model itself). Frozen base weights are never gathered."""
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                                 ignore_frozen_params=True))
