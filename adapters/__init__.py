"""Local registry of exported LoRA adapters (``tallrec adapters ...``); see ``adapters.registry``."""

from adapters.registry import (
    AdapterEntry, add_adapter, adapter_path, default_store, list_adapters, read_card, remove_adapter, resolve_store,
    verify_adapter,
)

__all__ = ["AdapterEntry", "add_adapter", "adapter_path", "default_store", "list_adapters", "read_card",
           "remove_adapter", "resolve_store", "verify_adapter"]
