"""``LogBuffer``: holds what ``TaskModule.log`` receives until the loops say it is time to write.

Values stay tensors (no device sync) until a flush: once per logging interval for step values,
once per epoch for epoch values. A flush reduces all its ``sync_dist`` values in one collective
and reads every value back in one transfer. torchmetrics ``Metric`` objects are recognised by
duck typing, so torchmetrics is never imported here; their ``compute()`` syncs them across ranks.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tasktrain.loggers.base import Logger

Reduce = Callable[[Tensor, str], Tensor]


def is_metric(value: Any) -> bool:
    """Whether ``value`` behaves like a torchmetrics ``Metric`` (``update``/``compute``/``reset``)."""
    return all(callable(getattr(value, name, None)) for name in ("update", "compute", "reset"))


def check_loggable(name: Any, value: Any) -> None:
    """Refuse, at the ``self.log`` call, a name or value that could not be written at the next flush.

    Accepted values: a real number (bools count, as 0/1: their mean is a rate), a tensor or numpy
    array with exactly one element (any shape), or a torchmetrics ``Metric``. Only metadata is
    read (type, ``numel()``, dtype), never the value: no device sync.

    Raises:
        TypeError: the name is not a str, or the value is of a type that cannot be logged.
        ValueError: the name is empty, or the tensor (array) holds other than one element.

    Example:
        >>> check_loggable("val/acc", torch.tensor([0.5]))
        >>> check_loggable("val/acc", "abc")
        Traceback (most recent call last):
        ...
        TypeError: self.log('val/acc', value): expected a number, a one-element tensor or a torchmetrics Metric; got str 'abc'
    """
    if type(name) is not str or not name:
        got = "" if isinstance(name, str) else f"; got {type(name).__name__}"
        error = ValueError if isinstance(name, str) else TypeError
        raise error(f"self.log({name!r}, value): the name must be a non-empty str{got}")
    if type(value) in _PLAIN_NUMBERS:  # the hot paths first: a Python number, a tensor's metadata
        return
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(_not_loggable(name, f"a tensor of shape {tuple(value.shape)}", _REDUCE_HINT))
        if value.is_complex():
            raise TypeError(_not_loggable(name, f"a complex tensor ({value.dtype})"))
        return
    if isinstance(value, numbers.Real) or (
        isinstance(value, numbers.Number) and not isinstance(value, numbers.Complex)  # e.g. Decimal
    ):
        return
    if is_metric(value):
        return
    kind = getattr(getattr(value, "dtype", None), "kind", None)  # numpy scalars and arrays, duck-typed
    if isinstance(kind, str):
        if kind not in "biuf":
            raise TypeError(_not_loggable(name, f"a numpy value of dtype {value.dtype}"))
        if getattr(value, "size", 1) != 1:
            raise ValueError(_not_loggable(name, f"a numpy array of shape {value.shape}", _REDUCE_HINT))
        return
    hint = "; log several values with self.log_dict" if isinstance(value, Mapping) else ""
    got = "None" if value is None else f"{type(value).__name__} {_short_repr(value)}"
    raise TypeError(_not_loggable(name, got, hint))


_PLAIN_NUMBERS = (float, int, bool)
_STAGE_PREFIXES = {"validate": "val", "test": "test"}  # metric-name prefix of each evaluation stage
_REDUCE_HINT = "; reduce it first (e.g. .mean()) or log each element under its own name"


def _not_loggable(name: str, got: str, hint: str = "") -> str:
    return (
        f"self.log({name!r}, value): expected a number, a one-element tensor or a torchmetrics Metric; "
        f"got {got}{hint}"
    )


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


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
        self.logged_metrics: dict[str, float] = {}  # what went (or would go) to loggers
        self._prog_bar: set[str] = set()
        self._not_for_loggers: set[str] = set()  # names last logged with logger=False
        self._step_values: dict[str, Any] = {}
        self._step_sync: set[str] = set()
        # Epoch values per stage, so a validation run inside a training epoch keeps both apart.
        self._epoch_values: dict[str, dict[str, _EpochEntry]] = {"train": {}}
        self._epoch_metrics: dict[str, dict[str, Any]] = {"train": {}}
        self._step_metrics: dict[str, Any] = {}
        self._muted = False
        self._scope: str | None = None  # the named evaluation set being run

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
        logger: bool = True,
    ) -> None:
        name = self.scoped_name(name)
        training = self.stage == "train"
        metric = is_metric(value)
        if on_step is None:
            on_step = training and not metric
        if on_epoch is None:
            on_epoch = not training or metric
        if prog_bar:
            self._prog_bar.add(name)
        if logger:
            self._not_for_loggers.discard(name)
        else:
            self._not_for_loggers.add(name)
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
            if sync_dist:
                self._step_sync.add(name)
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
        """Write the step values logged since the last flush (plus ``extra``) at ``step``.

        A step value is the latest one of the interval (with ``sync_dist``: its mean over ranks).
        A metric logged ``on_step`` is computed over what it saw since its last reset: this
        interval for a step-only metric (reset here), the epoch so far for an epoch metric.
        """
        values: dict[str, Any] = dict(self._step_values)
        synced = {name: values[name] for name in self._step_sync}
        values.update(self._reduce(_scalars(synced), "mean"))
        epoch_metrics = self._epoch_metrics.get(self.stage, {})
        values.update(_compute(self._step_metrics, reset=lambda name: name not in epoch_metrics))
        metrics = {**(extra or {}), **_read(values)}
        self._step_values.clear()
        self._step_sync.clear()
        self._step_metrics.clear()
        self._publish(metrics, step)
        return metrics

    def flush_epoch(self, step: int) -> dict[str, float]:
        """Reduce this stage's epoch values (weighted mean; metrics computed and reset) and write them."""
        entries = self._epoch_values[self.stage]
        device = _device_of([v for entry in entries.values() for v in entry.values])
        totals = {name: _weighted_total(name, entry, device) for name, entry in entries.items()}
        totals.update(self._reduce({n: t for n, t in totals.items() if entries[n].sync_dist}, "sum"))
        values: dict[str, Any] = {name: total[0] / total[1] for name, total in totals.items()}  # 0/0: NaN
        values.update(_compute(self._epoch_metrics[self.stage], reset=lambda name: True))
        metrics = _read(values)
        self._epoch_values[self.stage] = {}
        self._epoch_metrics[self.stage] = {}
        self._publish(metrics, step)
        return metrics

    @contextmanager
    def scoped(self, set_name: str | None) -> Iterator[None]:
        """Name what is logged meanwhile after the evaluation set ``set_name`` (None: unchanged).

        In stage ``"validate"``, ``val/loss`` becomes ``val/<set_name>/loss`` and a name without
        the ``val/`` prefix gets it (``acc`` → ``val/<set_name>/acc``); ``"test"`` alike with ``test/``.

        Example:
            >>> buf = LogBuffer(loggers=[])
            >>> buf.begin("validate")
            >>> with buf.scoped("clean"):
            ...     buf.log("val/loss", 0.5, batch_size=1)
            >>> buf.flush_epoch(step=0)
            {'val/clean/loss': 0.5}
        """
        previous, self._scope = self._scope, set_name
        try:
            yield
        finally:
            self._scope = previous

    def scoped_name(self, name: str) -> str:
        """``name`` as :meth:`scoped` renames it now."""
        if self._scope is None:
            return name
        prefix = _STAGE_PREFIXES.get(self.stage, self.stage)
        rest = name.removeprefix(f"{prefix}/")
        return f"{prefix}/{self._scope}/{rest}"

    @contextmanager
    def muted(self) -> Iterator[None]:
        """Collect, reduce and flush as usual, but write to no logger; afterwards every metric
        (``callback_metrics``, the progress bar's, ``logged_metrics``, pending step values) is as before.

        Example:
            >>> buf = LogBuffer(loggers=[])
            >>> with buf.muted():
            ...     buf.log("loss", 0.5); _ = buf.flush_step(step=0)
            >>> buf.callback_metrics
            {}
        """
        saved = [
            (target, dict(target))
            for target in (self.callback_metrics, self.progress_bar_metrics, self.logged_metrics)
        ]
        step_state = (dict(self._step_values), set(self._step_sync), dict(self._step_metrics))
        self._muted = True
        try:
            yield
        finally:
            self._muted = False
            for target, before in saved:
                target.clear()
                target.update(before)
            self._step_values, self._step_sync, self._step_metrics = step_state

    def state_dict(self) -> dict[str, Any]:
        """The latest value of every metric, so callbacks resume seeing what they saw (e.g. a best score)."""
        return {"callback_metrics": dict(self.callback_metrics), "logged_metrics": dict(self.logged_metrics)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.callback_metrics.update(state["callback_metrics"])
        self.logged_metrics.update(state.get("logged_metrics", {}))  # absent from older checkpoints

    def _reduce(self, rows: dict[str, Tensor], op: str) -> dict[str, Tensor]:
        """Tensors of one shape, on one device, reduced over ranks in a single collective.

        Stacked in name order: every rank must put the same name in the same row, whatever order
        its values were logged or collected in (a set's order differs between processes).
        """
        if not rows or self.reduce is None:
            return rows
        names = sorted(rows)
        reduced = self.reduce(torch.stack([rows[name] for name in names]), op)
        return dict(zip(names, reduced.unbind(), strict=True))

    def _publish(self, metrics: dict[str, float], step: int) -> None:
        if not metrics:
            return
        self.callback_metrics.update(metrics)
        self.progress_bar_metrics.update({k: v for k, v in metrics.items() if k in self._prog_bar})
        if self._muted:
            return
        for_loggers = {k: v for k, v in metrics.items() if k not in self._not_for_loggers}
        if not for_loggers:
            return
        self.logged_metrics.update(for_loggers)
        for logger in self.loggers:
            logger.log_metrics(for_loggers, step)


def _device_of(values: Sequence[Any]) -> torch.device:
    """The device of the first tensor in ``values`` (CPU when they are all plain numbers)."""
    return next((v.device for v in values if isinstance(v, Tensor)), torch.device("cpu"))


def _scalar(name: str, value: Any, device: torch.device) -> Tensor:
    """A logged value as a 0-dim float tensor on ``device`` (a copy at most, never a host sync)."""
    dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    tensor = torch.as_tensor(value, dtype=dtype, device=device)
    if tensor.numel() != 1:
        raise ValueError(
            f"log({name!r}): a logged value must be a number or a one-element tensor, got shape "
            f"{tuple(tensor.shape)}; a non-scalar result (e.g. a confusion matrix) is yours to save"
        )
    return tensor.reshape(())


def _scalars(values: dict[str, Any]) -> dict[str, Tensor]:
    device = _device_of(list(values.values()))
    return {name: _scalar(name, value, device) for name, value in values.items()}


def _weighted_total(name: str, entry: _EpochEntry, device: torch.device) -> Tensor:
    """``[sum(value * weight), sum(weight)]`` over an epoch entry's values."""
    values = torch.stack([_scalar(name, value, device) for value in entry.values])
    weights = torch.tensor(entry.weights, dtype=values.dtype, device=device)
    return torch.stack([(values * weights).sum(), weights.sum()])


def _compute(metrics: dict[str, Any], reset: Callable[[str], bool]) -> dict[str, Any]:
    """``compute()`` every metric (each a collective under DDP), then reset those ``reset`` names."""
    values = {name: metric.compute() for name, metric in metrics.items()}
    for name, metric in metrics.items():
        if reset(name):
            metric.reset()
    return values


def _read(values: dict[str, Any]) -> dict[str, float]:
    """Every value as a float, read back in one transfer: the flush's one host sync."""
    if not values:
        return {}
    floats = torch.stack(list(_scalars(values).values())).tolist()
    return dict(zip(values, floats, strict=True))
