"""Strategies own placement and synchronisation: swap one object, keep the same module.

``FSDP``, ``TensorParallel`` and ``DeepSpeed`` are imported on first use: their torch modules
(``torch.distributed.fsdp``, ``torch.distributed.tensor``) take about a second to import.
"""

from typing import TYPE_CHECKING, Any

from tasktrain.strategies.base import Strategy
from tasktrain.strategies.ddp import DDP
from tasktrain.strategies.parallel import ParallelStrategy
from tasktrain.strategies.single import SingleDevice

if TYPE_CHECKING:
    from tasktrain.strategies.deepspeed import DeepSpeed
    from tasktrain.strategies.fsdp import FSDP
    from tasktrain.strategies.tensor_parallel import TensorParallel

_LAZY = {
    "DeepSpeed": "tasktrain.strategies.deepspeed",
    "FSDP": "tasktrain.strategies.fsdp",
    "TensorParallel": "tasktrain.strategies.tensor_parallel",
}

__all__ = ["DDP", "FSDP", "DeepSpeed", "ParallelStrategy", "SingleDevice", "Strategy", "TensorParallel"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tasktrain.strategies' has no attribute {name!r}")
