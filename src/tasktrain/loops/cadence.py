"""``Cadence``: when training writes its logs and when it validates.

The epoch loop reports each finished optimizer step and each finished epoch; this is the one
place that decides what is due then.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from tasktrain.loops.base import Loop, LoopContext
from tasktrain.loops.evaluation import EvaluationLoop
from tasktrain.rng import RngState

if TYPE_CHECKING:
    from tasktrain.strategies.base import Strategy


class Cadence(Loop):
    """Write step logs every ``log_every_n_steps``; validate on ``val_check_interval`` and at epoch ends.

    Args:
        val_check_interval: validate every this many optimizer steps (an int, counted from the
            start of training) or this fraction of each epoch's steps (a float).
        check_val_every_n_epoch: validate at the end of every n-th epoch (None: never then).
        log_every_n_steps: write the step values logged since the last write.
        val_loop: the loop that validates.

    Example:
        >>> cadence = Cadence(val_check_interval=100, log_every_n_steps=10)
        >>> cadence.val_loop.stage
        'validate'
    """

    def __init__(
        self,
        val_check_interval: int | float | None = None,
        check_val_every_n_epoch: int | None = 1,
        log_every_n_steps: int = 50,
        val_loop: EvaluationLoop | None = None,
    ) -> None:
        self.val_check_interval = val_check_interval
        self.check_val_every_n_epoch = check_val_every_n_epoch
        self.log_every_n_steps = log_every_n_steps
        self.val_loop = val_loop or EvaluationLoop("validate")
        self.last_val_step = -1
        self._val_every: int | None = None

    def start_epoch(self, epoch_steps: int | None) -> None:
        """Resolve a fractional ``val_check_interval`` against this epoch's ``epoch_steps`` (None: unknown)."""
        interval = self.val_check_interval
        if interval is None or isinstance(interval, int):
            self._val_every = interval
            return
        if epoch_steps is None:
            raise ValueError(
                f"val_check_interval={interval!r} is a fraction of an epoch, but the training dataloader has no "
                "length; pass an int (optimizer steps) instead"
            )
        self._val_every = max(1, int(epoch_steps * interval))

    def after_step(self, ctx: LoopContext, steps_into_epoch: int) -> None:
        """An optimizer step ended (the ``steps_into_epoch``-th of this epoch): write logs, validate if due."""
        step = ctx.state.global_step
        if step % self.log_every_n_steps == 0:
            write_step_logs(ctx)
        if self._val_every is not None:
            counted = step if isinstance(self.val_check_interval, int) else steps_into_epoch
            if counted % self._val_every == 0:
                self.validate(ctx)

    def at_epoch_end(self, ctx: LoopContext) -> None:
        """The epoch ended (its data done, or training stopped): validate if this epoch is due and the
        step was not just validated."""
        n = self.check_val_every_n_epoch
        if n is not None and (ctx.state.epoch + 1) % n == 0 and self.last_val_step != ctx.state.global_step:
            self.validate(ctx)

    def validate(self, ctx: LoopContext) -> None:
        """Run the validation loop (if there is validation data) and tell the schedulers."""
        if not self.validates(ctx):
            return
        self.last_val_step = ctx.state.global_step
        # Validation must not shift training's random streams (iterating a DataLoader draws a seed),
        # so training is the same whatever the validation cadence, and resume stays exact.
        rng = RngState.capture()
        metrics = self.val_loop.run(ctx, ctx.val_dataloader)  # type: ignore[arg-type]  # validates() checked it
        rng.restore()
        assert ctx.optim is not None
        ctx.optim.after_validation({**ctx.logs.callback_metrics, **metrics}, ctx.strategy.broadcast)

    def validates(self, ctx: LoopContext) -> bool:
        """Whether this fit validates at all (validation data, and ``limit_val_batches`` not 0)."""
        return ctx.val_dataloader is not None and self.val_loop.limit_batches != 0

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "last_val_step": self.last_val_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.last_val_step = int(state.get("last_val_step", -1))


def write_step_logs(ctx: LoopContext) -> None:
    """Write the step values logged since the last write, with ``train/loss`` (the mean since then).

    First, the losses since the last write are checked: a non-finite one raises here.
    """
    extra: dict[str, float] = {}
    mean = ctx.totals.losses.interval_mean()
    wanted = mean is not None and not ctx.logs.has_step_value("train/loss")
    # One collective for both: whether any rank saw a non-finite loss, and the mean loss.
    world_size = ctx.strategy.world_size
    carried = torch.tensor([mean], dtype=torch.float32) if wanted and world_size > 1 else None
    summed = ctx.totals.nonfinite.raise_if_any(ctx.strategy, ctx.state.global_step, carried)
    if mean is not None and wanted:
        extra["train/loss"] = mean if summed is None else float(summed[0] / world_size)
    ctx.logs.flush_step(ctx.state.global_step, extra)


def global_mean(strategy: Strategy, value: float) -> float:
    """The mean of ``value`` over all ranks (a collective when there are several)."""
    if strategy.world_size == 1:
        return value
    return float(strategy.reduce(torch.tensor(value, device=strategy.root_device), "mean"))
