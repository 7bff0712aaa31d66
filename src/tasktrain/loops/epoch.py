"""``EpochLoop``: one pass over the training data, in accumulation groups, with validation cadence."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tasktrain.data import sampler_generator, skip_batches
from tasktrain.loops.accumulation import AccumulationLoop
from tasktrain.loops.base import Loop, LoopContext
from tasktrain.loops.evaluation import EvaluationLoop
from tasktrain.loops.optimization import OptimizationStep, step_monitored_scheduler
from tasktrain.rng import RngState
from tasktrain.state import Progress


def steps_per_epoch(num_batches: int, accumulate_grad_batches: int) -> int:
    """Optimizer steps in an epoch of ``num_batches`` micro-batches: the remainder group counts as one.

    Every count of steps in tasktrain (max_steps, schedulers, progress bar) comes from here.

    Example:
        >>> steps_per_epoch(10, 4)
        3
    """
    return -(-num_batches // accumulate_grad_batches)


def num_batches(dataloader: Iterable[Any], limit: int | float | None) -> int | None:
    """How many micro-batches one epoch reads: ``len(dataloader)`` cut by ``limit`` (None: unknown)."""
    try:
        length: int | None = len(dataloader)  # type: ignore[arg-type]
    except TypeError:
        length = None
    if limit is None:
        return length
    if isinstance(limit, int):
        return limit if length is None else min(limit, length)
    if length is None:
        if limit == 1.0:
            return None
        raise ValueError(
            f"limit_train_batches={limit!r} is a fraction, but the dataloader has no length; pass an int instead"
        )
    return int(length * limit)


class LossTracker:
    """Mean training loss per optimizer step, kept on the device and read only when logging."""

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

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending, self.total, self.steps = [], float(state["total"]), int(state["steps"])

    def _fold(self) -> None:
        if not self._pending:
            return
        total = float(torch.stack(self._pending).sum().item())  # host sync: once per logging interval
        self.total += total
        self._interval_total += total
        self.steps += len(self._pending)
        self._interval_steps += len(self._pending)
        self._pending = []


@dataclass
class ResumePoint:
    """Where a checkpoint left an epoch: how to put the data position and the RNGs back.

    Args:
        skip: micro-batches of the current epoch already trained on (0 at an epoch boundary).
        epoch_start: RNG state when the interrupted epoch began (reproduces its shuffle order).
        step: RNG state at the checkpoint (dropout etc. continue from here).
        loader_restores_position: the dataloader reloaded its own position (``load_state_dict``).
    """

    skip: int = 0
    epoch_start: RngState | None = None
    step: RngState | None = None
    loader_restores_position: bool = False


class EpochLoop(Loop):
    """Walk the dataloader in groups of ``accumulate_grad_batches``; validate and log on cadence.

    Validation runs at the end of every ``check_val_every_n_epoch``-th epoch (None: never at
    epoch end) and, in addition, every ``val_check_interval`` optimizer steps (an int counts
    steps from the start of training; a float is a fraction of the epoch's steps).

    Example:
        >>> loop = EpochLoop(accumulate_grad_batches=4, log_every_n_steps=10)
        >>> loop.accumulation.progress.total.completed
        0
    """

    def __init__(
        self,
        accumulate_grad_batches: int = 1,
        limit_batches: int | float | None = None,
        val_check_interval: int | float | None = None,
        check_val_every_n_epoch: int | None = 1,
        log_every_n_steps: int = 50,
        accumulation: AccumulationLoop | None = None,
        optimization: OptimizationStep | None = None,
        val_loop: EvaluationLoop | None = None,
    ) -> None:
        self.accumulate_grad_batches = accumulate_grad_batches
        self.limit_batches = limit_batches
        self.val_check_interval = val_check_interval
        self.check_val_every_n_epoch = check_val_every_n_epoch
        self.log_every_n_steps = log_every_n_steps
        self.accumulation = accumulation or AccumulationLoop()
        self.optimization = optimization or OptimizationStep()
        self.val_loop = val_loop or EvaluationLoop("validate")
        self.batch_progress = Progress()  # one item per micro-batch; ``current`` is this epoch
        self.losses = LossTracker()
        self._groups: Iterator[list[tuple[int, Any]]] | None = None
        self._val_every: int | None = None
        self._max_steps: int | None = None
        self._last_val_step = -1
        self._length: int | None = None
        self.exhausted = False  # whether the last run read all of its data
        self.epoch_start_rng: RngState | None = None
        self._resume: ResumePoint | None = None
        self._rng_after_first_fetch: RngState | None = None

    # -- the skeleton ----------------------------------------------------------------------------
    def run(self, ctx: LoopContext, max_steps: int | None = None) -> None:
        """Train for one epoch, or until ``max_steps`` optimizer steps or ``state.should_stop``."""
        self._max_steps = max_steps
        self.reset(ctx)
        while not self.done(ctx):
            try:
                self.advance(ctx)
            except StopIteration:
                self.exhausted = True
                break
        self.on_run_end(ctx)

    def reset(self, ctx: LoopContext) -> None:
        """Prepare the epoch's batches: from the start, or from where a checkpoint left off."""
        loader = ctx.train_dataloader
        assert loader is not None
        limit = num_batches(loader, self.limit_batches)
        resume, self._resume = self._resume, None
        generator = sampler_generator(loader)
        skip = resume.skip if resume is not None else 0
        batches: Iterable[Any] = loader
        if skip:  # mid-epoch: replay the epoch's shuffle from its start, then skip what was seen
            assert resume is not None
            if resume.epoch_start is not None:
                resume.epoch_start.restore(generator)
            self.epoch_start_rng = resume.epoch_start
            self._rng_after_first_fetch = resume.step
            if not resume.loader_restores_position:
                batches = skip_batches(loader, skip)
        else:
            if resume is not None and resume.step is not None:
                resume.step.restore(generator)
            self.epoch_start_rng = RngState.capture(generator)  # ~100 µs, once per epoch
            self.batch_progress.reset_current()
        if limit is not None:
            batches = itertools.islice(batches, max(0, limit - skip))
        self._groups = _grouped(enumerate(batches, start=skip), self.accumulate_grad_batches, ctx)
        self._val_every = self._resolve_val_every(limit)
        self._length = limit
        self.exhausted = False

    def resume_from(self, point: ResumePoint) -> None:
        """Make the next ``run`` continue the epoch a checkpoint interrupted."""
        self._resume = point

    def done(self, ctx: LoopContext) -> bool:
        return ctx.state.should_stop or (
            self._max_steps is not None and ctx.state.global_step >= self._max_steps
        )

    def advance(self, ctx: LoopContext) -> None:
        """One optimizer step: accumulate a group, step, log and validate when due."""
        assert self._groups is not None
        group = next(self._groups)
        if self._rng_after_first_fetch is not None:  # resumed: the shuffle is replayed, now continue the RNGs
            self._rng_after_first_fetch.restore(sampler_generator(ctx.train_dataloader))
            self._rng_after_first_fetch = None
        loss = self.accumulation.run(ctx, group)
        self.optimization.run(ctx, skip=loss is None)
        self.batch_progress.complete(len(group))
        if loss is not None:
            self.losses.add(loss)
        step = ctx.state.global_step
        if step % self.log_every_n_steps == 0:
            self.flush_logs(ctx)
        if self._val_every is not None and self._val_due(step):
            self.run_validation(ctx)
        # Last, so callbacks that save or stop here see this step's logs and validation.
        ctx.hooks.call("on_train_step_end")

    def on_run_end(self, ctx: LoopContext) -> None:
        read = self.batch_progress.current.completed
        if self.exhausted and read == 0:
            raise ValueError(
                "the training dataloader yielded no batches (check its length and limit_train_batches)"
            )
        if self._length is not None and read >= self._length:
            self.exhausted = True
        epoch = ctx.state.epoch
        n = self.check_val_every_n_epoch
        if n is not None and (epoch + 1) % n == 0 and self._last_val_step != ctx.state.global_step:
            self.run_validation(ctx)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "last_val_step": self._last_val_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._last_val_step = int(state.get("last_val_step", -1))

    # -- pieces a replacement loop may reuse -----------------------------------------------------
    def flush_logs(self, ctx: LoopContext) -> None:
        """Write the step values logged since the last flush, with ``train/loss`` (mean since then)."""
        extra: dict[str, float] = {}
        mean = self.losses.interval_mean()
        if mean is not None and not ctx.logs.has_step_value("train/loss"):
            extra["train/loss"] = global_mean(ctx, mean)
        ctx.logs.flush_step(ctx.state.global_step, extra)

    def run_validation(self, ctx: LoopContext) -> None:
        """Run the validation loop (if there is validation data) and step a monitored scheduler."""
        if ctx.val_dataloader is None or self.val_loop.limit_batches == 0:  # limit_val_batches=0: off
            return
        self._last_val_step = ctx.state.global_step
        # Validation must not shift training's random streams (iterating a DataLoader draws a seed),
        # so training is the same whatever the validation cadence, and resume stays exact.
        rng = RngState.capture()
        metrics = self.val_loop.run(ctx, ctx.val_dataloader)
        rng.restore()
        assert ctx.optim is not None
        step_monitored_scheduler(ctx.optim.scheduler, {**ctx.logs.callback_metrics, **metrics}, ctx.strategy)

    def _val_due(self, step: int) -> bool:
        if isinstance(self.val_check_interval, int):
            return step % self.val_check_interval == 0
        assert self._val_every is not None
        in_epoch = self.batch_progress.current.completed
        return steps_per_epoch(in_epoch, self.accumulate_grad_batches) % self._val_every == 0

    def _resolve_val_every(self, limit: int | None) -> int | None:
        if self.val_check_interval is None or isinstance(self.val_check_interval, int):
            return self.val_check_interval
        if limit is None:
            raise ValueError(
                f"val_check_interval={self.val_check_interval!r} is a fraction of an epoch, but the training "
                "dataloader has no length; pass an int (optimizer steps) instead"
            )
        return max(1, int(steps_per_epoch(limit, self.accumulate_grad_batches) * self.val_check_interval))


def global_mean(ctx: LoopContext, value: float) -> float:
    """The mean of ``value`` over all ranks (a collective when there are several)."""
    if ctx.strategy.world_size == 1:
        return value
    return float(ctx.strategy.reduce(torch.tensor(value, device=ctx.strategy.root_device), "mean"))


def _grouped(
    batches: Iterator[tuple[int, Any]], size: int, ctx: LoopContext
) -> Iterator[list[tuple[int, Any]]]:
    """Yield lists of ``size`` (batch_idx, batch) moved to the device; the last list may be shorter."""
    to_device = ctx.strategy.batch_to_device
    if size == 1:  # the common case, on the per-step hot path: no slicing
        for i, batch in batches:
            yield [(i, to_device(batch))]
        return
    while True:
        group = [(i, to_device(b)) for i, b in itertools.islice(batches, size)]
        if not group:
            return
        yield group
