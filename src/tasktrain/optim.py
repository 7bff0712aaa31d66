"""What ``configure_optimizers`` returns, normalised into one ``OptimizerSetup``."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from tasktrain.monitor import monitored

_INTERVALS = ("step", "epoch")
Broadcast = Callable[[float], float]  # rank 0's value on every rank (``Strategy.broadcast``)


@dataclass
class SchedulerConfig:
    """An LR scheduler and when it steps.

    ``interval="step"`` steps after every optimizer step that was taken (a step skipped for
    non-finite gradients does not advance it); ``"epoch"`` after every epoch. A
    ``ReduceLROnPlateau`` (or any scheduler given a ``monitor``) steps with the monitored metric
    after each validation run, or at the end of each epoch when there is no validation data.
    """

    scheduler: LRScheduler | ReduceLROnPlateau
    interval: str = "epoch"
    frequency: int = 1
    monitor: str | None = None

    def __post_init__(self) -> None:
        if self.interval not in _INTERVALS:
            raise ValueError(f"lr_scheduler interval={self.interval!r}: accepted values are {_INTERVALS}")
        if not isinstance(self.frequency, int) or self.frequency < 1:
            raise ValueError(f"lr_scheduler frequency={self.frequency!r}: must be an integer >= 1")
        if isinstance(self.scheduler, ReduceLROnPlateau) and self.monitor is None:
            self.monitor = "val/loss"

    @property
    def is_monitored(self) -> bool:
        return self.monitor is not None

    def step(self) -> None:
        """Advance an unmonitored scheduler by one of its intervals."""
        self.scheduler.step()  # type: ignore[call-arg]  # not a ReduceLROnPlateau: those are monitored

    def step_if_due(self, intervals_done: int) -> None:
        """Step when ``intervals_done`` (steps taken, or epochs) is a multiple of ``frequency``."""
        if intervals_done % self.frequency == 0:
            self.step()


@dataclass
class OptimizerSetup:
    """The optimizer and its optional scheduler, and the one place that decides when the scheduler steps.

    The loops report what happened (:meth:`after_optimizer_step`, :meth:`after_validation`,
    :meth:`after_epoch`); the scheduler's ``interval``, ``frequency`` and ``monitor`` decide.
    """

    optimizer: Optimizer
    scheduler: SchedulerConfig | None = None

    def after_optimizer_step(self, steps_taken: int) -> None:
        """An optimizer step was taken (the ``steps_taken``-th; skipped steps do not count)."""
        config = self.scheduler
        if config is not None and config.interval == "step" and not config.is_monitored:
            config.step_if_due(steps_taken)

    def after_validation(self, metrics: Mapping[str, float], broadcast: Broadcast) -> None:
        """A validation run ended: a monitored scheduler steps with its metric."""
        self._step_monitored(metrics, broadcast)

    def after_epoch(
        self, epochs_done: int, metrics: Mapping[str, float], broadcast: Broadcast, validates: bool
    ) -> None:
        """An epoch ended; a monitored scheduler steps here only when there is no validation run."""
        config = self.scheduler
        if config is not None and config.interval == "epoch" and not config.is_monitored:
            config.step_if_due(epochs_done)
        if not validates:
            self._step_monitored(metrics, broadcast)

    def _step_monitored(self, metrics: Mapping[str, float], broadcast: Broadcast) -> None:
        # The value is rank 0's, broadcast, so every rank changes its learning rate alike.
        config = self.scheduler
        if config is None or config.monitor is None:
            return
        value = broadcast(monitored(metrics, config.monitor, "lr_scheduler"))
        if isinstance(config.scheduler, ReduceLROnPlateau):
            if not math.isnan(value):
                config.scheduler.step(value)
        else:
            config.step()


def parse_optimizers(value: Any) -> OptimizerSetup:
    """Normalise the three return forms of ``configure_optimizers``.

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        >>> parse_optimizers(opt).scheduler is None
        True
    """
    if isinstance(value, Optimizer):
        return OptimizerSetup(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[0], Optimizer):
        return OptimizerSetup(value[0], _parse_scheduler(value[1]))
    if isinstance(value, Mapping) and isinstance(value.get("optimizer"), Optimizer):
        unknown = set(value) - {"optimizer", "lr_scheduler"}
        if unknown:
            raise ValueError(
                f"configure_optimizers() returned unknown keys {sorted(unknown)}; accepted: 'optimizer', 'lr_scheduler'"
            )
        scheduler = value.get("lr_scheduler")
        return OptimizerSetup(
            value["optimizer"], _parse_scheduler(scheduler) if scheduler is not None else None
        )
    raise TypeError(
        "configure_optimizers() must return an Optimizer, (optimizer, scheduler), or "
        f"{{'optimizer': ..., 'lr_scheduler': ...}}; got {type(value).__name__}"
    )


def _parse_scheduler(value: Any) -> SchedulerConfig:
    if isinstance(value, (LRScheduler, ReduceLROnPlateau)):
        return SchedulerConfig(value)
    if isinstance(value, Mapping) and "scheduler" in value:
        unknown = set(value) - {"scheduler", "interval", "frequency", "monitor"}
        if unknown:
            raise ValueError(
                f"lr_scheduler has unknown keys {sorted(unknown)}; accepted: scheduler, interval, frequency, monitor"
            )
        return SchedulerConfig(**value)
    raise TypeError(
        "lr_scheduler must be a torch LR scheduler or {'scheduler': ..., 'interval': 'step'|'epoch', "
        f"'monitor': ...}}; got {type(value).__name__}"
    )
