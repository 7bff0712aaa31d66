"""``EvaluationLoop``: validation and test, without gradients, metrics reduced per epoch."""

from __future__ import annotations

import functools
import inspect
import itertools
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader

from tasktrain.loops.base import Loop, LoopContext
from tasktrain.state import Progress

_STAGES = {"validate": ("validation", "validation_step"), "test": ("test", "test_step")}
_LIMITS = {"validate": "limit_val_batches", "test": "limit_batches"}


def limited(dataloader: Iterable[Any], limit: int | float | None) -> Iterable[Any]:
    """``dataloader`` cut to ``limit`` batches (an int) or that fraction of its length (a float)."""
    if limit is None:
        return dataloader
    if isinstance(limit, float):
        try:
            limit = int(len(dataloader) * limit)  # type: ignore[arg-type]
        except TypeError:
            raise ValueError(
                f"batch limit {limit!r} is a fraction, but the dataloader has no length"
            ) from None
    return itertools.islice(dataloader, limit)


EvalLoaders = Iterable[Any] | Mapping[str, Iterable[Any]]


def named_dataloaders(dataloaders: Any, who: str) -> Any:
    """``dataloaders`` as an evaluation loop takes them: one iterable, or ``{name: loader}``.

    A mapping is checked (non-empty; names non-empty ``str`` without ``/``); a list or tuple of
    ``DataLoader`` objects becomes ``{"0": ..., "1": ...}``; anything else is one loader (a
    plain list of batches stays one loader).

    Raises:
        ValueError: an empty mapping, or a name that is not a non-empty str without ``/``.

    Example:
        >>> loaders = named_dataloaders([DataLoader(range(4)), DataLoader(range(2))], "fit(val_dataloaders=...)")
        >>> sorted(loaders)
        ['0', '1']
    """
    if (
        isinstance(dataloaders, (list, tuple))
        and dataloaders
        and all(isinstance(d, DataLoader) for d in dataloaders)
    ):
        return {str(i): loader for i, loader in enumerate(dataloaders)}
    if not isinstance(dataloaders, Mapping):
        return dataloaders
    if not dataloaders:
        raise ValueError(f"{who}: an empty mapping of dataloaders; give at least one {{name: loader}}")
    for name in dataloaders:
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(
                f"{who}: dataloader name {name!r} is not accepted; names are non-empty str without '/' "
                "(they become part of the metric names, e.g. 'val/<name>/loss')"
            )
    return dict(dataloaders)


def each_dataloader(dataloaders: EvalLoaders) -> list[tuple[str | None, Iterable[Any]]]:
    """``[(name, loader)]``: the sets of a mapping, in order, or ``[(None, loader)]`` for one loader."""
    if isinstance(dataloaders, Mapping):
        return list(dataloaders.items())
    return [(None, dataloaders)]


def map_dataloaders(dataloaders: Any, fn: Callable[[Any], Any]) -> Any:
    """``fn`` applied to each loader of a ``{name: loader}`` mapping, or to the one loader."""
    if isinstance(dataloaders, Mapping):
        return {name: fn(loader) for name, loader in dataloaders.items()}
    return fn(dataloaders)


class EvaluationLoop(Loop):
    """Run ``validation_step`` (stage ``"validate"``) or ``test_step`` (``"test"``) over a dataloader.

    The module is put in eval mode under ``torch.no_grad()`` and restored afterwards. Returns
    the epoch-level metrics logged during the run. A dataloader that yields no batches (length
    0, or an iterable that ends at once) warns, once per ``fit``/``validate``/``test`` call.

    Several named sets (``{name: loader}``) run one after the other inside one validation epoch
    (one ``on_validation_start`` ... ``on_validation_end``, one flush): what is logged while
    set ``name`` runs is named ``val/<name>/...`` (``test/<name>/...``), and the step receives
    ``dataloader_name=name`` when its signature takes that argument. ``limit_batches`` applies
    to each set.

    Example:
        >>> loop = EvaluationLoop("test", limit_batches=10)
        >>> loop.batch_progress.total.completed
        0
    """

    def __init__(self, stage: str = "validate", limit_batches: int | float | None = None) -> None:
        if stage not in _STAGES:
            raise ValueError(f"EvaluationLoop(stage={stage!r}): accepted values are {sorted(_STAGES)}")
        self.stage = stage
        self.limit_batches = limit_batches
        self.batch_progress = Progress()
        self._warned_for: weakref.ref[LoopContext] | None = None  # the run (one per Trainer call) warned

    def run(self, ctx: LoopContext, dataloader: EvalLoaders) -> dict[str, float]:
        """Evaluate ``dataloader`` (one loader, or ``{name: loader}``); return the epoch metrics."""
        prefix, _ = _STAGES[self.stage]
        module, hooks, logs = ctx.module, ctx.hooks, ctx.logs
        was_training, previous_stage = module.training, logs.stage
        module.eval()
        logs.begin(self.stage)
        self.batch_progress.reset_current()
        hooks.call(f"on_{prefix}_start")
        hooks.call(f"on_{prefix}_epoch_start")
        try:
            with torch.no_grad():
                for name, loader in each_dataloader(dataloader):
                    with logs.scoped(name):
                        self._run_one(ctx, loader, name)
            hooks.call(f"on_{prefix}_epoch_end")
            metrics = logs.flush_epoch(ctx.state.global_step)
            hooks.call(f"on_{prefix}_end")
        finally:
            logs.resume(previous_stage)
            module.train(was_training)
        return metrics

    def _run_one(self, ctx: LoopContext, dataloader: Iterable[Any], name: str | None) -> None:
        """Every batch of one loader (one named set)."""
        prefix, step_name = _STAGES[self.stage]
        strategy, hooks, logs = ctx.strategy, ctx.hooks, ctx.logs
        step_fn = getattr(ctx.module, step_name)
        if name is not None and _takes_dataloader_name(step_fn):
            step_fn = functools.partial(step_fn, dataloader_name=name)
        before = self.batch_progress.current.completed
        for batch_idx, batch in enumerate(limited(dataloader, self.limit_batches)):
            self.batch_progress.start()
            batch = strategy.batch_to_device(batch)
            logs.current_batch = batch
            hooks.call(f"on_{prefix}_batch_start", batch, batch_idx)
            outputs = strategy.forward_step(step_fn, batch, batch_idx)
            hooks.call(f"on_{prefix}_batch_end", outputs, batch, batch_idx)
            self.batch_progress.finish()
        if self.batch_progress.current.completed == before:
            self._warn_empty(ctx, dataloader, name)

    def _warn_empty(self, ctx: LoopContext, dataloader: Iterable[Any], name: str | None = None) -> None:
        """Warn that ``dataloader`` yielded nothing, once per Trainer call (each builds its own context)."""
        if self.limit_batches == 0 or (self._warned_for is not None and self._warned_for() is ctx):
            return  # a limit of 0 asks for no batches
        self._warned_for = weakref.ref(ctx)
        prefix, step_name = _STAGES[self.stage]
        if name is not None:
            prefix = f"{prefix} set {name!r}"
        try:
            size = f"len {len(dataloader)}"  # type: ignore[arg-type]
        except TypeError:
            size = "no len"
        limit = "" if self.limit_batches is None else f", cut by {_LIMITS[self.stage]}={self.limit_batches!r}"
        warnings.warn(
            f"the {prefix} dataloader ({type(dataloader).__name__}, {size}{limit}) yielded no batches: "
            f"{step_name} never ran and no {prefix} metrics were logged",
            UserWarning,
            stacklevel=1,
        )


def _takes_dataloader_name(step: Callable[..., Any]) -> bool:
    """Whether a step accepts ``dataloader_name=`` (by name, or through ``**kwargs``)."""
    parameters = inspect.signature(step).parameters.values()
    return any(p.name == "dataloader_name" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
