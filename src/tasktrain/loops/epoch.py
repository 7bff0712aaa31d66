"""``EpochLoop``: one pass over the training data, in accumulation groups, resumable mid-epoch."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from tasktrain.data import calling_after, position_keeper, sampler_generator, skip_batches
from tasktrain.loops.accumulation import AccumulationLoop
from tasktrain.loops.base import Loop, LoopContext
from tasktrain.loops.cadence import Cadence
from tasktrain.loops.manual import ManualOptimization
from tasktrain.loops.optimization import OptimizationStep
from tasktrain.rng import RngState
from tasktrain.state import Progress

Group = list[tuple[int, Any]]  # (batch_idx, batch) of one optimizer step


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


class EpochLoop(Loop):
    """Walk the training dataloader in groups of ``accumulate_grad_batches`` micro-batches.

    Each group is one optimizer step: :class:`AccumulationLoop` runs its micro-batches,
    :class:`OptimizationStep` steps, then the :class:`~tasktrain.loops.cadence.Cadence` writes
    logs and validates when due. The last group of an epoch may be shorter (the remainder). For
    a module with ``automatic_optimization = False``,
    :class:`~tasktrain.loops.manual.ManualOptimization` replaces those two: one batch, one
    ``training_step`` that steps the optimizers itself.

    Its state is where the epoch stands: the micro-batches read (``batch_progress.current``),
    whether the data ran out, and the RNG state when the epoch began. From a state saved inside
    an epoch, the next run replays the epoch's shuffle from that RNG state and skips the batches
    already trained on, without loading them; the RNGs then continue from the saved point.

    Example:
        >>> loop = EpochLoop(accumulate_grad_batches=4)
        >>> loop.accumulation.progress.total.completed
        0
    """

    def __init__(
        self,
        accumulate_grad_batches: int = 1,
        limit_batches: int | float | None = None,
        accumulation: AccumulationLoop | None = None,
        optimization: OptimizationStep | None = None,
        cadence: Cadence | None = None,
        manual: ManualOptimization | None = None,
    ) -> None:
        self.accumulate_grad_batches = accumulate_grad_batches
        self.limit_batches = limit_batches
        self.accumulation = accumulation or AccumulationLoop()
        self.optimization = optimization or OptimizationStep()
        self.cadence = cadence or Cadence()
        self.manual = manual or ManualOptimization()  # replaces both above for automatic_optimization = False
        self.batch_progress = Progress()  # one item per micro-batch; ``current`` is this epoch
        self.exhausted = False  # whether this epoch's data has all been read
        self.epoch_start_rng: RngState | None = None
        self._resuming = False  # a state was loaded: the next run continues its epoch
        self._loader: Any = None  # the dataloader of the current epoch
        self._loader_position: Any = None  # a loaded position for a loader that keeps its own
        self._groups: Iterator[Group] | None = None
        self._max_steps: int | None = None
        self._length: int | None = None
        self._train_step: Any = self._automatic_step

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
        self._groups = None  # let go of the dataloader iterator (and its worker processes)

    def reset(self, ctx: LoopContext) -> None:
        """Prepare the epoch's groups: from its start, or from where a loaded state left it."""
        loader = self._loader = ctx.train_dataloader
        assert loader is not None
        resuming, self._resuming = self._resuming and not self.exhausted, False
        skip = self.batch_progress.current.completed if resuming else 0
        self._length = num_batches(loader, self.limit_batches)
        batches = self._continued(loader, skip) if skip else self._started(loader)
        if self._length is not None:
            batches = itertools.islice(batches, max(0, self._length - skip))
        self._groups = _grouped(enumerate(batches, start=skip), self.accumulate_grad_batches, ctx)
        self.exhausted = False
        self._train_step = self._step_kind(ctx)
        epoch_steps = (
            None if self._length is None else steps_per_epoch(self._length, self.accumulate_grad_batches)
        )
        self.cadence.start_epoch(epoch_steps)

    def done(self, ctx: LoopContext) -> bool:
        return ctx.state.should_stop or (
            self._max_steps is not None and ctx.state.global_step >= self._max_steps
        )

    def advance(self, ctx: LoopContext) -> None:
        """One optimizer step: accumulate a group, step, then what the cadence says is due."""
        assert self._groups is not None
        group = next(self._groups)
        loss = self._train_step(ctx, group)
        self.batch_progress.complete(len(group))
        if loss is not None:
            ctx.totals.losses.add(loss)
        in_epoch = steps_per_epoch(self.batch_progress.current.completed, self.accumulate_grad_batches)
        self.cadence.after_step(ctx, in_epoch)
        # Last, so callbacks that save or stop here see this step's logs and validation.
        ctx.hooks.call("on_train_step_end")

    def _step_kind(self, ctx: LoopContext) -> Any:
        """How a group trains, chosen once per epoch from the module's ``automatic_optimization``."""
        if ctx.module.automatic_optimization:
            return self._automatic_step
        self.manual.attach(ctx)
        return self.manual.run

    def _automatic_step(self, ctx: LoopContext, group: Group) -> Any:
        """Forward and backward every micro-batch, then one optimizer step (skipped on a non-finite loss)."""
        loss = self.accumulation.run(ctx, group)
        self.optimization.run(ctx, skip=loss is None)
        return loss

    def on_run_end(self, ctx: LoopContext) -> None:
        read = self.batch_progress.current.completed
        if self.exhausted and read == 0:
            raise ValueError(
                "the training dataloader yielded no batches (check its length and limit_train_batches)"
            )
        if self._length is not None and read >= self._length:
            self.exhausted = True
        self.cadence.at_epoch_end(ctx)  # also when max_steps or should_stop ends the epoch early

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        rng = None if self.epoch_start_rng is None else self.epoch_start_rng.state_dict()
        return {
            **super().state_dict(),
            "exhausted": self.exhausted,
            "epoch_start_rng": rng,
            "dataloader": self._own_position(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.exhausted = bool(state["exhausted"])
        rng = state["epoch_start_rng"]
        self.epoch_start_rng = None if rng is None else RngState.from_state_dict(rng)
        self._loader_position = state.get("dataloader")
        self._resuming = True

    def _own_position(self) -> Any:
        """Inside an epoch, the position of a loader that keeps one (its ``state_dict()``), else None.

        At an epoch boundary the next epoch starts afresh: nothing to keep.
        """
        inside = not self.exhausted and self.batch_progress.current.completed > 0
        keeper = position_keeper(self._loader) if inside else None
        return keeper.state_dict() if keeper is not None else None

    # -- where the epoch's batches come from -----------------------------------------------------
    def _started(self, loader: Iterable[Any]) -> Iterable[Any]:
        self.batch_progress.reset_current()
        self.epoch_start_rng = RngState.capture(sampler_generator(loader))  # ~100 µs, once per epoch
        return loader

    def _continued(self, loader: Iterable[Any], skip: int) -> Iterator[Any]:
        """The rest of an epoch ``skip`` batches in: the epoch's shuffle replayed, the RNGs continued.

        Lazy, so nothing is drawn unless a batch is asked for: an epoch whose batches were all
        trained on leaves the RNGs exactly as saved.
        """
        generator = sampler_generator(loader)
        now = RngState.capture(generator)
        if self.epoch_start_rng is not None:
            self.epoch_start_rng.restore(generator)

        def continue_from_checkpoint() -> None:  # the epoch's order drawn as far as when saved
            now.restore(generator)

        position, self._loader_position = self._loader_position, None
        keeper = position_keeper(loader)
        if position is not None and keeper is not None:  # e.g. torchdata's StatefulDataLoader
            keeper.load_state_dict(position)
            yield from calling_after(iter(loader), 0, continue_from_checkpoint)  # iter() drew its seeds
        else:
            yield from skip_batches(loader, skip, at_position=continue_from_checkpoint)


def _grouped(batches: Iterator[tuple[int, Any]], size: int, ctx: LoopContext) -> Iterator[Group]:
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
