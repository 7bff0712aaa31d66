"""``TrainTotals``: what a fit has seen so far (samples, loss items, the training loss), for speed
metrics and ``train/loss``.

The loops add to these totals; the Trainer owns them (and checkpoints them), so nothing outside
the loops reads loop internals. Values stay on the device until read: counting never syncs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor


class ItemCounter:
    """A running total that stays on the device until read, so counting never syncs per step.

    Example:
        >>> counter = ItemCounter()
        >>> counter.add(3); counter.add(torch.tensor(4))
        >>> counter.value
        7
    """

    def __init__(self) -> None:
        self._value: Any = 0  # an int, or a tensor once a count arrives as one

    def add(self, amount: int | Tensor) -> None:
        self._value = self._value + amount

    @property
    def value(self) -> int:
        return int(self._value)  # one host sync when the total lives on a device

    def state_dict(self) -> dict[str, int]:
        return {"value": self.value}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self._value = int(state["value"])


class LossTracker:
    """Mean training loss per optimizer step, kept on the device and read only when logging.

    Example:
        >>> losses = LossTracker()
        >>> losses.add(torch.tensor(1.0)); losses.add(torch.tensor(3.0))
        >>> losses.interval_mean(), losses.mean
        (2.0, 2.0)
    """

    def __init__(self) -> None:
        self._pending: list[Tensor] = []
        self.total = 0.0
        self.steps = 0
        self._interval_total = 0.0
        self._interval_steps = 0

    def add(self, loss: Tensor) -> None:
        self._pending.append(loss)

    def interval_mean(self) -> float | None:
        """Mean loss over the steps since the previous call (None if there were none)."""
        self._fold()
        if not self._interval_steps:
            return None
        mean = self._interval_total / self._interval_steps
        self._interval_total, self._interval_steps = 0.0, 0
        return mean

    @property
    def mean(self) -> float:
        self._fold()
        return self.total / self.steps if self.steps else math.nan

    def state_dict(self) -> dict[str, Any]:
        self._fold()
        return {"total": self.total, "steps": self.steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._pending, self.total, self.steps = [], float(state["total"]), int(state["steps"])
        self._interval_total, self._interval_steps = 0.0, 0

    def _fold(self) -> None:
        if not self._pending:
            return
        total = float(torch.stack(self._pending).sum().item())  # host sync: once per logging interval
        self.total += total
        self._interval_total += total
        self.steps += len(self._pending)
        self._interval_steps += len(self._pending)
        self._pending = []


class TrainTotals:
    """Samples and loss items trained on, and the training loss, over the whole run (resumes included).

    Example:
        >>> totals = TrainTotals()
        >>> totals.samples.add(8)
        >>> totals.state_dict()["samples"]
        {'value': 8}
    """

    def __init__(self) -> None:
        self.samples = ItemCounter()
        self.items = ItemCounter()
        self.losses = LossTracker()

    def state_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples.state_dict(),
            "items": self.items.state_dict(),
            "losses": self.losses.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.samples.load_state_dict(state["samples"])
        self.items.load_state_dict(state["items"])
        self.losses.load_state_dict(state["losses"])
