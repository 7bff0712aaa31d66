"""Precision plugins: autocast, module/input conversion, loss scaling, and the optimizer step.

Names: ``"32-true"``, ``"bf16-mixed"``, ``"16-mixed"`` (with ``torch.amp.GradScaler``), ``"bf16-true"``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor, nn
from torch.optim import Optimizer

_NO_CONTEXT = nullcontext()  # reusable; saves an allocation per micro-batch


class Precision:
    """Full fp32 (``"32-true"``): every method is a pass-through. Base class of the others.

    Example:
        >>> p = Precision()
        >>> with p.autocast():
        ...     pass
    """

    name = "32-true"

    def setup(self, device: torch.device) -> None:
        """Called once the strategy knows its device."""

    def convert_module(self, module: nn.Module) -> nn.Module:
        return module

    def convert_input(self, batch: Any) -> Any:
        return batch

    def autocast(self) -> AbstractContextManager[Any]:
        return _NO_CONTEXT

    def backward(self, loss: Tensor) -> None:
        loss.backward()

    def unscale_gradients(self, optimizer: Optimizer) -> None:
        """Make gradients true-scale before clipping or inspection (a no-op without a scaler)."""

    def optimizer_step(self, optimizer: Optimizer, closure: Callable[[], Any] | None = None) -> bool:
        """Step ``optimizer``; return False when the step was skipped (non-finite gradients)."""
        optimizer.step(closure) if closure is not None else optimizer.step()
        return True

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class MixedPrecision(Precision):
    """Autocast to ``bf16-mixed`` or ``16-mixed``; ``16-mixed`` scales the loss with a GradScaler.

    A step whose gradients hold inf/NaN is skipped by the scaler, and the loops then do not
    advance the LR scheduler for it.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = torch.bfloat16 if name == "bf16-mixed" else torch.float16
        self.device_type = "cpu"
        self.scaler: torch.amp.GradScaler | None = None
        self._unscaled: set[int] = set()

    def setup(self, device: torch.device) -> None:
        self.device_type = device.type
        if self.dtype is torch.float16:
            self.scaler = torch.amp.GradScaler(device.type)

    def autocast(self) -> AbstractContextManager[Any]:
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale_gradients(self, optimizer: Optimizer) -> None:
        if self.scaler is not None and id(optimizer) not in self._unscaled:
            self.scaler.unscale_(optimizer)
            self._unscaled.add(id(optimizer))

    def optimizer_step(self, optimizer: Optimizer, closure: Callable[[], Any] | None = None) -> bool:
        try:
            return self._step(optimizer, closure)
        finally:
            # A step inside the autocast region (manual optimization steps in training_step) leaves
            # autocast's cached low-precision copies of the weights stale: later forwards in the same
            # region would use the weights from before the step.
            if torch.is_autocast_enabled(self.device_type):
                torch.clear_autocast_cache()

    def _step(self, optimizer: Optimizer, closure: Callable[[], Any] | None) -> bool:
        if self.scaler is None:
            return super().optimizer_step(optimizer, closure)
        if closure is not None:
            raise ValueError("16-mixed does not support optimizers that need a closure (e.g. LBFGS)")
        self._unscaled.discard(id(optimizer))
        scale_before = (
            self.scaler.get_scale()
        )  # host sync: the scale after update tells us whether it stepped
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= scale_before

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict()} if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])


class HalfPrecision(Precision):
    """``bf16-true``: parameters and floating-point inputs in bfloat16, no autocast, no scaler."""

    name = "bf16-true"

    def convert_module(self, module: nn.Module) -> nn.Module:
        return module.to(torch.bfloat16)

    def convert_input(self, batch: Any) -> Any:
        return apply_to_collection(batch, Tensor, _to_bf16_if_float)


def _to_bf16_if_float(tensor: Tensor) -> Tensor:
    return tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor


PRECISIONS: dict[str, Callable[[], Precision]] = {
    "32-true": Precision,
    "bf16-mixed": lambda: MixedPrecision("bf16-mixed"),
    "16-mixed": lambda: MixedPrecision("16-mixed"),
    "bf16-true": HalfPrecision,
}


def build_precision(name: str) -> Precision:
    """The precision plugin for ``name`` (one of :data:`PRECISIONS`)."""
    try:
        return PRECISIONS[name]()
    except KeyError:
        raise ValueError(f"Trainer(precision={name!r}): accepted values are {sorted(PRECISIONS)}") from None
