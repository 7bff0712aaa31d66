"""What strategies whose parameters are DTensors (FSDP2, tensor parallel) share."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule
from torch.optim import Optimizer

from tasktrain.strategies.base import ModelState

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
    """Mixin: the checkpoint layout choice, and loading full (unsharded) checkpoint tensors into
    DTensor parameters and their optimizer state."""

    checkpoint: str = "sharded"

    @property
    def _saves_sharded(self) -> bool:
        return self.checkpoint == "sharded"

    def set_state(self, module: nn.Module, optimizers: Sequence[Optimizer], state: ModelState) -> None:
        if state.sharded:
            super().set_state(module, optimizers, state)  # type: ignore[misc]  # the strategy's base
            return
        set_model_state_dict(module, dict(state.model), options=_SCATTER)
        for optimizer, saved in zip(optimizers, state.optimizers, strict=True):
            # torch needs some tensor state to infer the device from; without any (e.g. plain SGD)
            # only the param groups are left to load, which the non-full path does.
            set_optimizer_state_dict(
                module, optimizer, saved, options=_SCATTER if saved.get("state") else None
            )


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
