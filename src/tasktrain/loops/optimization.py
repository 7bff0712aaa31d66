"""``OptimizationStep``: one optimizer step once an accumulation group's gradients are complete."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from torch.optim.lr_scheduler import ReduceLROnPlateau

from tasktrain.loops.base import Loop, LoopContext
from tasktrain.optim import SchedulerConfig
from tasktrain.state import Progress

if TYPE_CHECKING:
    from tasktrain.strategies.base import Strategy


class OptimizationStep(Loop):
    """Unscale, clip, ``on_before_optimizer_step``, step, scheduler, ``on_before_zero_grad``, zero_grad.

    Args:
        gradient_clip_val: clip threshold, or None for no clipping.
        gradient_clip_algorithm: ``"norm"`` (total 2-norm) or ``"value"`` (element-wise).

    Example:
        >>> step = OptimizationStep(gradient_clip_val=1.0)
        >>> step.progress.total.completed
        0
    """

    def __init__(self, gradient_clip_val: float | None = None, gradient_clip_algorithm: str = "norm") -> None:
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = gradient_clip_algorithm
        self.progress = Progress()  # one item per optimizer step, taken or skipped
        self.skipped = Progress()  # steps skipped for non-finite loss or gradients

    def run(self, ctx: LoopContext, skip: bool = False) -> bool:
        """Finish the step whose gradients are accumulated; return whether the optimizer stepped.

        ``skip`` (a non-finite loss under ``on_nonfinite_loss="skip"``) discards the gradients.
        """
        assert ctx.optim is not None
        optimizer, strategy, hooks = ctx.optim.optimizer, ctx.strategy, ctx.hooks
        self.progress.start()
        stepped = False
        if not skip:
            strategy.precision.unscale_gradients(optimizer)  # hooks and clipping see true gradients
            if self.gradient_clip_val is not None:
                strategy.clip_gradients(
                    ctx.module, optimizer, self.gradient_clip_val, self.gradient_clip_algorithm
                )
            hooks.call("on_before_optimizer_step", optimizer)
            stepped = strategy.optimizer_step(optimizer)
        if stepped:
            self._step_scheduler_per_step(ctx.optim.scheduler)
        else:
            self.skipped.start()
            self.skipped.finish()
        hooks.call("on_before_zero_grad", optimizer)
        optimizer.zero_grad(set_to_none=True)
        self.progress.finish()
        ctx.state.global_step += 1
        return stepped

    def _step_scheduler_per_step(self, config: SchedulerConfig | None) -> None:
        if config is None or config.interval != "step" or config.is_monitored:
            return
        taken = self.progress.total.completed - self.skipped.total.completed + 1
        if taken % config.frequency == 0:
            config.scheduler.step()  # type: ignore[call-arg]  # not a ReduceLROnPlateau: is_monitored is False


def step_epoch_scheduler(config: SchedulerConfig | None, epochs_done: int) -> None:
    """Advance an ``interval="epoch"`` scheduler that monitors nothing, every ``frequency`` epochs."""
    if config is None or config.interval != "epoch" or config.is_monitored:
        return
    if epochs_done % config.frequency == 0:
        config.scheduler.step()  # type: ignore[call-arg]  # not a ReduceLROnPlateau: is_monitored is False


def step_monitored_scheduler(
    config: SchedulerConfig | None, metrics: Mapping[str, float], strategy: Strategy
) -> None:
    """Advance a scheduler that monitors a metric (e.g. ``ReduceLROnPlateau`` on ``val/loss``).

    The value is rank 0's, broadcast, so every rank changes its learning rate alike.
    """
    if config is None or not config.is_monitored:
        return
    assert config.monitor is not None
    if config.monitor not in metrics:
        raise KeyError(
            f"lr_scheduler monitors {config.monitor!r}, which was not logged; logged metrics: {sorted(metrics)}"
        )
    value = strategy.broadcast(metrics[config.monitor])
    if isinstance(config.scheduler, ReduceLROnPlateau):
        if not math.isnan(value):
            config.scheduler.step(value)
    else:
        config.scheduler.step()
