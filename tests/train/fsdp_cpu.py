"""`python -m tests.train.fsdp_cpu ARGS`: the `tallrec` CLI with accelerate's FSDP allowed on CPU processes.

accelerate turns FSDP on for accelerator devices only (CUDA, XPU, NPU, ...); CPU ranks under torchrun
get plain DDP. torch's FSDP2 itself shards on CPU with gloo, so the FSDP tests flip that one decision
and exercise everything else unchanged: accelerate's fully_shard wrapping, the trainer's sharded
checkpoints, tallrec's gathered validation and adapter saving.
"""

from __future__ import annotations

import functools

from accelerate import state
from accelerate.utils import DistributedType

_init = state.AcceleratorState.__init__


@functools.wraps(_init)
def _init_with_cpu_fsdp(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin


state.AcceleratorState.__init__ = _init_with_cpu_fsdp

if __name__ == "__main__":
    from tallrec_cli.cli.app import main

    main()
