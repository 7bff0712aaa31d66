"""What strategies whose parameters are DTensors (FSDP2, tensor parallel) share.

Checkpoints hold full, gathered tensors keyed like the plain module's ``state_dict``, so they
load under any world size and any strategy; every rank must take part in these calls.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule
from torch.optim import Optimizer

_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
_SCATTER = StateDictOptions(full_state_dict=True)


class DTensorState:
    """Mixin: full-tensor checkpoints and DTensor-aware clipping for a strategy with ``self.module``."""

    module: nn.Module | None

    def module_state_dict(self, module: nn.Module) -> dict[str, Tensor]:
        return get_model_state_dict(module, options=_GATHER)  # type: ignore[return-value]  # tensors only

    def optimizer_state_dict(self, optimizer: Optimizer) -> dict[str, Any] | None:
        assert self.module is not None
        return get_optimizer_state_dict(self.module, optimizer, options=_GATHER)

    def load_module_state_dict(self, module: nn.Module, weights: dict[str, Tensor]) -> None:
        set_model_state_dict(module, dict(weights), options=_SCATTER)

    def load_optimizer_state_dict(self, optimizer: Optimizer, state: dict[str, Any]) -> None:
        assert self.module is not None
        set_optimizer_state_dict(self.module, optimizer, state, options=_SCATTER)


def full_tensor(value: Tensor | None) -> Tensor | None:
    """A DTensor as one full tensor (other values unchanged): e.g. the total norm of sharded gradients."""
    full = getattr(value, "full_tensor", None)
    return full() if callable(full) else value


@contextmanager
def gradient_sync(model: FSDPModule, sync: bool) -> Iterator[None]:
    """Run the block with FSDP's gradient reduction on (``sync``) or off (accumulating locally)."""
    if sync:
        yield
        return
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)
