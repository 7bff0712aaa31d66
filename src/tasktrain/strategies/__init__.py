"""Strategies own placement and synchronisation: swap one object, keep the same module."""

from tasktrain.strategies.base import Strategy
from tasktrain.strategies.ddp import DDP
from tasktrain.strategies.deepspeed import DeepSpeed
from tasktrain.strategies.fsdp import FSDP
from tasktrain.strategies.parallel import ParallelStrategy
from tasktrain.strategies.single import SingleDevice
from tasktrain.strategies.tensor_parallel import TensorParallel

__all__ = ["DDP", "FSDP", "DeepSpeed", "ParallelStrategy", "SingleDevice", "Strategy", "TensorParallel"]
