"""Checkpoints: a directory of safetensors weights, optimizer state and JSON, written atomically."""

from tasktrain.checkpoint.format import load_module, read_state, read_weights, save_checkpoint

__all__ = ["load_module", "read_state", "read_weights", "save_checkpoint"]
