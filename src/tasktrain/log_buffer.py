"""``LogBuffer``: holds what ``TaskModule.log`` receives until the loops say it is time to write.

Values stay tensors (no device sync) until a flush: once per logging interval for step values,
once per epoch for epoch values. torchmetrics ``Metric`` objects are recognised by duck typing,
so torchmetrics is never imported here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tasktrain.loggers.base import Logger

Reduce = Callable[[Tensor, str], Tensor]


def is_metric(value: Any) -> bool:
    """Whether ``value`` behaves like a torchmetrics ``Metric`` (``update``/``compute``/``reset``)."""
    return all(callable(getattr(value, name, None)) for name in ("update", "compute", "reset"))


def to_float(value: Any) -> float:
    """A logged value as a float (one device sync for a tensor)."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"logged tensors must hold one element, got shape {tuple(value.shape)}")
        return float(value.item())
    return float(value)


def batch_size_of(batch: Any) -> int:
    """The leading dimension of the first tensor found in ``batch`` (1 if there is none)."""
    if isinstance(batch, Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, (list, tuple)):
        for item in batch:
            return batch_size_of(item)
    if isinstance(batch, dict):
        for item in batch.values():
            return batch_size_of(item)
    return 1


@dataclass
class _EpochEntry:
    values: list[Any]
    weights: list[int]
    sync_dist: bool


class LogBuffer:
    """Collects logged values and writes them to loggers at the moments the loops choose.

    Example:
        >>> buf = LogBuffer(loggers=[])
        >>> buf.begin("train")
        >>> buf.log("loss", 0.5)
        >>> buf.flush_step(step=1)["loss"]
        0.5
    """

    def __init__(self, loggers: Sequence[Logger], reduce: Reduce | None = None) -> None:
        self.loggers = list(loggers)
        self.reduce = reduce
        self.stage = "train"
        self.current_batch: Any = None
        self.callback_metrics: dict[str, float] = {}
        self.progress_bar_metrics: dict[str, float] = {}
        self._prog_bar: set[str] = set()
        self._step_values: dict[str, Any] = {}
        # Epoch values per stage, so a validation run inside a training epoch keeps both apart.
        self._epoch_values: dict[str, dict[str, _EpochEntry]] = {"train": {}}
        self._epoch_metrics: dict[str, dict[str, Any]] = {"train": {}}
        self._step_metrics: dict[str, Any] = {}

    def begin(self, stage: str) -> None:
        """Start collecting epoch values for ``stage`` ("train", "validate", "test") from scratch."""
        self.stage = stage
        self.current_batch = None
        self._epoch_values[stage] = {}
        self._epoch_metrics[stage] = {}

    def resume(self, stage: str) -> None:
        """Go back to ``stage`` (e.g. training after a mid-epoch validation), keeping its values."""
        self.stage = stage
        self.current_batch = None
        self._epoch_values.setdefault(stage, {})
        self._epoch_metrics.setdefault(stage, {})

    def log(
        self,
        name: str,
        value: Any,
        *,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        prog_bar: bool = False,
        sync_dist: bool = False,
        batch_size: int | None = None,
    ) -> None:
        training = self.stage == "train"
        metric = is_metric(value)
        if on_step is None:
            on_step = training and not metric
        if on_epoch is None:
            on_epoch = not training or metric
        if prog_bar:
            self._prog_bar.add(name)
        if metric:
            if on_epoch:
                self._epoch_metrics[self.stage][name] = value
            if on_step:
                self._step_metrics[name] = value
            return
        if isinstance(value, Tensor):
            value = value.detach()
        if on_step:
            self._step_values[name] = value
        if on_epoch:
            values = self._epoch_values[self.stage]
            entry = values.get(name)
            if entry is None:
                entry = values[name] = _EpochEntry([], [], sync_dist)
            entry.values.append(value)
            entry.weights.append(batch_size if batch_size is not None else batch_size_of(self.current_batch))

    def has_step_value(self, name: str) -> bool:
        return name in self._step_values

    def flush_step(self, step: int, extra: dict[str, float] | None = None) -> dict[str, float]:
        """Write the step values logged since the last flush (plus ``extra``) at ``step``."""
        metrics = dict(extra or {})
        for name, value in self._step_values.items():
            metrics[name] = to_float(value)
        epoch_metrics = self._epoch_metrics.get(self.stage, {})
        for name, metric in self._step_metrics.items():
            metrics[name] = to_float(metric.compute())
            if name not in epoch_metrics:  # a step-only metric covers one logging interval
                metric.reset()
        self._step_values.clear()
        self._step_metrics.clear()
        self._publish(metrics, step)
        return metrics

    def flush_epoch(self, step: int) -> dict[str, float]:
        """Reduce this stage's epoch values (weighted mean; metrics computed and reset) and write them."""
        metrics: dict[str, float] = {}
        for name, entry in self._epoch_values[self.stage].items():
            metrics[name] = self._epoch_mean(entry)
        for name, metric in self._epoch_metrics[self.stage].items():
            metrics[name] = to_float(metric.compute())
            metric.reset()
        self._epoch_values[self.stage] = {}
        self._epoch_metrics[self.stage] = {}
        self._publish(metrics, step)
        return metrics

    def _epoch_mean(self, entry: _EpochEntry) -> float:
        values = torch.stack([torch.as_tensor(v, dtype=torch.float64).cpu() for v in entry.values])
        weights = torch.tensor(entry.weights, dtype=torch.float64)
        total = torch.stack([(values * weights).sum(), weights.sum()])
        if entry.sync_dist and self.reduce is not None:
            total = self.reduce(total, "sum")
        return float(total[0] / total[1]) if float(total[1]) else math.nan

    def _publish(self, metrics: dict[str, float], step: int) -> None:
        if not metrics:
            return
        self.callback_metrics.update(metrics)
        self.progress_bar_metrics.update({k: v for k, v in metrics.items() if k in self._prog_bar})
        for logger in self.loggers:
            logger.log_metrics(metrics, step)
