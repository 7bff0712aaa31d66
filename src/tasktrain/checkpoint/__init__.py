"""Checkpoints: a directory of safetensors weights, optimizer state and JSON, written atomically."""

from tasktrain.checkpoint.format import (
    CheckpointError,
    consolidate,
    load_module,
    read_optimizer_state,
    read_rng,
    read_state,
    read_weights,
    save_checkpoint,
)
from tasktrain.checkpoint.storage import find_last, is_complete

__all__ = [
    "CheckpointError",
    "consolidate",
    "find_last",
    "is_complete",
    "load_module",
    "read_optimizer_state",
    "read_rng",
    "read_state",
    "read_weights",
    "save_checkpoint",
]
