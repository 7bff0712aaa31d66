"""``EvaluationLoop``: validation and test, without gradients, metrics reduced per epoch."""

from __future__ import annotations

import itertools
import warnings
import weakref
from collections.abc import Iterable
from typing import Any

import torch

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


class EvaluationLoop(Loop):
    """Run ``validation_step`` (stage ``"validate"``) or ``test_step`` (``"test"``) over a dataloader.

    The module is put in eval mode under ``torch.no_grad()`` and restored afterwards. Returns
    the epoch-level metrics logged during the run. A dataloader that yields no batches (length
    0, or an iterable that ends at once) warns, once per ``fit``/``validate``/``test`` call.

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

    def run(self, ctx: LoopContext, dataloader: Iterable[Any]) -> dict[str, float]:
        prefix, step_name = _STAGES[self.stage]
        module, strategy, hooks, logs = ctx.module, ctx.strategy, ctx.hooks, ctx.logs
        step_fn = getattr(module, step_name)
        was_training, previous_stage = module.training, logs.stage
        module.eval()
        logs.begin(self.stage)
        self.batch_progress.reset_current()
        hooks.call(f"on_{prefix}_start")
        hooks.call(f"on_{prefix}_epoch_start")
        try:
            with torch.no_grad():
                for batch_idx, batch in enumerate(limited(dataloader, self.limit_batches)):
                    self.batch_progress.start()
                    batch = strategy.batch_to_device(batch)
                    logs.current_batch = batch
                    hooks.call(f"on_{prefix}_batch_start", batch, batch_idx)
                    outputs = strategy.forward_step(step_fn, batch, batch_idx)
                    hooks.call(f"on_{prefix}_batch_end", outputs, batch, batch_idx)
                    self.batch_progress.finish()
            if self.batch_progress.current.completed == 0:
                self._warn_empty(ctx, dataloader)
            hooks.call(f"on_{prefix}_epoch_end")
            metrics = logs.flush_epoch(ctx.state.global_step)
            hooks.call(f"on_{prefix}_end")
        finally:
            logs.resume(previous_stage)
            module.train(was_training)
        return metrics

    def _warn_empty(self, ctx: LoopContext, dataloader: Iterable[Any]) -> None:
        """Warn that ``dataloader`` yielded nothing, once per Trainer call (each builds its own context)."""
        if self.limit_batches == 0 or (self._warned_for is not None and self._warned_for() is ctx):
            return  # a limit of 0 asks for no batches
        self._warned_for = weakref.ref(ctx)
        prefix, step_name = _STAGES[self.stage]
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
