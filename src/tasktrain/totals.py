"""``TrainTotals``: what a fit has seen so far (samples, loss items, the training loss), for speed
metrics and ``train/loss``.

The loops add to these totals; the Trainer owns them (and checkpoints them), so nothing outside
the loops reads loop internals. Values stay on the device until read: counting never syncs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from tasktrain.strategies.base import Strategy


class NonFiniteLossError(FloatingPointError):
    """A training loss was NaN or infinite under ``on_nonfinite_loss="raise"``."""


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


class NonFiniteWatch:
    """The training losses since the last check, so a non-finite one is found without a read per step.

    The accumulation loop notes every micro-batch's loss (a device tensor, no sync); the check,
    made where a sync happens anyway (a logging step, a save, the end of an epoch), reads all of
    them at once and names the first non-finite one. Under several ranks the check is agreed, so
    every rank stops at the same step.

    Example:
        >>> watch = NonFiniteWatch()
        >>> watch.note(torch.tensor(1.0), "M.compute_loss", step=0, micro_batch=0, of=1, batch_idx=0)
        >>> watch.note(torch.tensor(float("nan")), "M.compute_loss", step=1, micro_batch=0, of=1, batch_idx=1)
        >>> watch.first_bad()
        'non-finite loss nan returned by M.compute_loss at step 1 (micro-batch 1 of 1, batch_idx 1)'
        >>> from tasktrain.strategies import SingleDevice
        >>> watch.raise_if_any(SingleDevice("cpu"), now=2)
        Traceback (most recent call last):
        ...
        tasktrain.totals.NonFiniteLossError: non-finite loss nan returned by M.compute_loss at step 1 ...
    """

    def __init__(self) -> None:
        self._losses: list[Tensor] = []
        self._where: list[tuple[str, int, int, int, int]] = []

    def note(self, loss: Tensor, source: str, step: int, micro_batch: int, of: int, batch_idx: int) -> None:
        """Remember a micro-batch's loss (``micro_batch`` counts from 0) and where it came from."""
        self._losses.append(loss.detach())
        self._where.append((source, step, micro_batch, of, batch_idx))

    def first_bad(self) -> str | None:
        """Describe the first non-finite loss noted since the last check (None: all finite)."""
        if not self._losses:
            return None
        losses = torch.stack(self._losses)
        bad = (~torch.isfinite(losses)).nonzero()
        if not len(bad):
            return None
        index = int(bad[0, 0])
        source, step, micro_batch, of, batch_idx = self._where[index]
        return (
            f"non-finite loss {float(losses[index])} returned by {source} at step {step} "
            f"(micro-batch {micro_batch + 1} of {of}, batch_idx {batch_idx})"
        )

    def raise_if_any(self, strategy: Strategy, now: int, with_sum: Tensor | None = None) -> Tensor | None:
        """Raise :class:`NonFiniteLossError` on every rank if any rank noted a non-finite loss; forget them.

        ``now`` is the current step, named in the message: training continued to it. ``with_sum``
        (a 1-d float tensor) rides along in the same collective: it is summed over the ranks and
        returned, so a logging step that reduces a value anyway pays for no second collective.
        Nothing noted and nothing to sum: no read, no collective.
        """
        if not self._losses and with_sum is None:
            return None
        device = strategy.root_device
        flag = torch.zeros(1, device=device)
        if self._losses:
            flag = (~torch.isfinite(torch.stack(self._losses))).any().to(device, torch.float32).reshape(1)
        values = flag if with_sum is None else torch.cat([flag, with_sum.to(device, torch.float32)])
        if strategy.world_size > 1:
            values = strategy.reduce(values, "sum")
        values = values.cpu()  # host sync: once per check, where a sync happens anyway
        if values[0] > 0:
            local = self.first_bad()
            what = local if local is not None else "non-finite loss on another rank"
            rank = f" on rank {strategy.global_rank}" if strategy.world_size > 1 and local is not None else ""
            raise NonFiniteLossError(
                f"{what}{rank}; found at step {now} (losses are checked on logging steps, saves and epoch "
                "ends, so the steps in between were taken); pass Trainer(on_nonfinite_loss='skip') to skip "
                "such steps"
            )
        self._losses, self._where = [], []
        return None if with_sum is None else values[1:]


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
        self.nonfinite = NonFiniteWatch()  # not saved: checked before every save

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
