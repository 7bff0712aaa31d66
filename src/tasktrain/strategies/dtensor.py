"""What strategies whose parameters are DTensors (FSDP2, tensor parallel) share."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule
from torch.optim import Optimizer

_SCATTER = StateDictOptions(full_state_dict=True)


CHECKPOINT_LAYOUTS = ("sharded", "full")


def checked_layout(strategy: str, checkpoint: str) -> str:
    """``checkpoint`` if it names a layout, else a ValueError naming the argument and the choices."""
    if checkpoint not in CHECKPOINT_LAYOUTS:
        raise ValueError(
            f"{strategy}(checkpoint={checkpoint!r}): accepted values are 'sharded' (every rank writes its "
            "shards with torch.distributed.checkpoint) and 'full' (rank 0 writes the gathered weights)"
        )
    return checkpoint


class DTensorCheckpointing:
    """Mixin: checkpoint layout choice, and loading full (unsharded) checkpoint tensors into DTensor
    parameters and their state."""

    checkpoint: str = "sharded"

    @property
    def saves_sharded(self) -> bool:
        return self.checkpoint == "sharded"

    def load_module_state_dict(self, module: nn.Module, weights: dict[str, Tensor]) -> None:
        set_model_state_dict(module, dict(weights), options=_SCATTER)

    def load_optimizer_state_dict(
        self, module: nn.Module, optimizer: Optimizer, state: dict[str, Any]
    ) -> None:
        # torch needs some tensor state to infer the device from; without any (e.g. plain SGD)
        # only the param groups are left to load, which the non-full path does.
        set_optimizer_state_dict(module, optimizer, state, options=_SCATTER if state.get("state") else None)


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
