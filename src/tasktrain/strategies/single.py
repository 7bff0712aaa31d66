"""``SingleDevice``: one process on one device (CPU, one CUDA GPU, or MPS)."""

from __future__ import annotations

import torch

from tasktrain.strategies.base import Strategy


def default_device(accelerator: str = "auto") -> torch.device:
    """The device ``accelerator`` names: "cpu", "cuda", "mps", or "auto" (the best available)."""
    if accelerator == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if accelerator == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("Trainer(accelerator='cuda'): no CUDA device is available; use 'cpu' or 'auto'")
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("Trainer(accelerator='mps'): MPS is not available; use 'cpu' or 'auto'")
    return torch.device(accelerator)


class SingleDevice(Strategy):
    """Train in this process on one device: the default strategy.

    Example:
        >>> import tasktrain as tt
        >>> trainer = tt.Trainer(strategy=SingleDevice("cpu"), max_steps=1)
    """

    name = "single"

    def setup_environment(self) -> None:
        if self.root_device.type == "cuda":
            torch.cuda.set_device(self.root_device)
        super().setup_environment()
