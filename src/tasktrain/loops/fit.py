"""``FitLoop``: epochs, and when to stop."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tasktrain.loops.base import Loop, LoopContext
from tasktrain.loops.cadence import write_step_logs
from tasktrain.loops.epoch import EpochLoop
from tasktrain.state import Progress


class FitLoop(Loop):
    """Run epochs until ``max_epochs``, ``max_steps`` (optimizer steps) or ``state.should_stop``.

    The whole of ``fit``, with the hooks that fire (see :mod:`tasktrain.loops.hooks`)::

        on_train_start
        while not done:                                   # FitLoop
            sampler.set_epoch(epoch); on_train_epoch_start
            for group in dataloader, N micro-batches:     # EpochLoop
                for batch in group:                       # AccumulationLoop
                    on_train_batch_start
                    with no_backward_sync(not last), autocast:
                        loss = training_step(batch) * weight
                    on_before_backward; strategy.backward(loss); on_after_backward
                    on_train_batch_end
                unscale; clip; on_before_optimizer_step   # OptimizationStep
                strategy.optimizer_step; scheduler.step (per-step)
                on_before_zero_grad; zero_grad; global_step += 1
                log every log_every_n_steps; validate every val_check_interval
                on_train_step_end
            # automatic_optimization = False: ManualOptimization replaces the two inner loops, one
            # batch per step, and training_step steps the optimizers (see tasktrain.loops.manual)
            validate every check_val_every_n_epoch
            log epoch values; on_train_epoch_end; scheduler.step (per-epoch)
        on_train_end

    Example:
        >>> loop = FitLoop(max_epochs=3)
        >>> loop.epoch_loop.accumulate_grad_batches
        1
    """

    def __init__(
        self, max_epochs: int | None = None, max_steps: int | None = None, epoch_loop: EpochLoop | None = None
    ) -> None:
        self.max_epochs = max_epochs
        self.max_steps = max_steps
        self.epoch_loop = epoch_loop or EpochLoop()
        self.epoch_progress = Progress()
        self._epoch_end_pending = False

    def run(self, ctx: LoopContext) -> None:
        self.on_run_start(ctx)
        while not self.done(ctx):
            self.advance(ctx)
        self.on_run_end(ctx)

    def done(self, ctx: LoopContext) -> bool:
        state = ctx.state
        if state.should_stop:
            return True
        if self.max_steps is not None and state.global_step >= self.max_steps:
            return True
        return self.max_epochs is not None and self.epoch_progress.total.completed >= self.max_epochs

    def on_run_start(self, ctx: LoopContext) -> None:
        ctx.module.train()
        ctx.hooks.call("on_train_start")

    def advance(self, ctx: LoopContext) -> None:
        """One epoch."""
        state, hooks = ctx.state, ctx.hooks
        state.epoch = self.epoch_progress.total.completed
        if self._epoch_end_pending:  # resumed from a checkpoint taken in on_train_epoch_end
            self._epoch_end_pending = False
            self._finish_epoch(ctx, {})
            return
        _set_epoch(ctx.train_dataloader, state.epoch)
        self.epoch_progress.start()
        hooks.call("on_train_epoch_start")
        self.epoch_loop.run(ctx, self.max_steps)
        if self.epoch_loop.exhausted:
            self.epoch_progress.mark_processed()  # a checkpoint saved from here on resumes at the next epoch
        metrics = self._flush_logs(ctx)  # so on_train_epoch_end sees this epoch's values
        hooks.call("on_train_epoch_end")
        metrics.update(self._flush_logs(ctx))  # values logged inside on_train_epoch_end
        if self.epoch_loop.exhausted:
            self._finish_epoch(ctx, metrics)

    def _flush_logs(self, ctx: LoopContext) -> dict[str, float]:
        write_step_logs(ctx)
        return ctx.logs.flush_epoch(ctx.state.global_step)

    def _finish_epoch(self, ctx: LoopContext, metrics: dict[str, float]) -> None:
        self.epoch_progress.mark_completed()
        assert ctx.optim is not None
        ctx.optim.after_epoch(
            self.epoch_progress.total.completed,
            {**ctx.logs.callback_metrics, **metrics},
            ctx.strategy.broadcast,
            validates=ctx.val_dataloader is not None,
        )

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore progress; an epoch whose data was all read but whose end was not reached is finished first."""
        total = state.get("epoch_progress", {}).get("total", {})
        self._epoch_end_pending = total.get("processed", 0) > total.get("completed", 0)
        super().load_state_dict(state)

    def on_run_end(self, ctx: LoopContext) -> None:
        ctx.hooks.call("on_train_end")


def _set_epoch(dataloader: Any, epoch: int) -> None:
    """Tell the sampler which epoch it is (``DistributedSampler`` and friends reshuffle by epoch)."""
    for holder in (dataloader, getattr(dataloader, "batch_sampler", None)):
        set_epoch = getattr(getattr(holder, "sampler", None), "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
