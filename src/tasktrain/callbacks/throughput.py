"""``Throughput``: samples/s, items/s (e.g. tokens/s), FLOPs, MFU and peak memory of a fit."""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from tasktrain import hardware
from tasktrain.callbacks.base import Callback

if TYPE_CHECKING:
    from torch.optim import Optimizer
    from torch.utils.flop_counter import FlopCounterMode

    from tasktrain.module import TaskModule
    from tasktrain.trainer import Trainer


class Throughput(Callback):
    """Log speed, compute and memory at every logging step and at each epoch end.

    - ``throughput/steps_per_sec``, ``throughput/samples_per_sec`` and, when the module defines
      ``count_items``, ``throughput/items_per_sec``: over the logging interval.
    - ``total_flos``: forward + backward FLOPs of the run so far (HF's ``total_flos``), summed
      over the ranks. The first optimizer step of each ``fit`` is counted once with
      ``torch.utils.flop_counter.FlopCounterMode`` (activation-checkpointing recompute included)
      and the count is scaled by ``global_step``; batches whose shapes change (e.g. sequence
      length) are counted as that first step was.
    - ``throughput/flops_per_sec`` (this rank, over the interval) and ``train_mfu``: model FLOPs
      utilisation over the run so far, achieved FLOP/s over ``peak_flops`` (from a table of
      common GPUs by precision, see :mod:`tasktrain.hardware`, or given), averaged over ranks.
      Not logged when the peak is unknown (e.g. on a CPU) unless ``peak_flops`` is given.
    - ``peak_memory_mb``: this rank's peak since training started: the CUDA allocator's peak,
      or the process's peak RSS on a CPU.

    The values end up in ``FitResult.metrics``. Nothing here reads the device or runs a
    collective on the steps in between: values are Python numbers, and under data parallelism
    ``total_flos`` and ``train_mfu`` ride along in the logging step's existing ``sync_dist``
    collective.

    Args:
        peak_flops: the peak FLOP/s of one device, for ``train_mfu`` (None: looked up).

    Example:
        >>> import tasktrain as tt
        >>> trainer = tt.Trainer(callbacks=[Throughput(peak_flops=312e12)])
    """

    def __init__(self, peak_flops: float | None = None) -> None:
        if peak_flops is not None and not (isinstance(peak_flops, int | float) and peak_flops > 0):
            raise ValueError(
                f"Throughput(peak_flops={peak_flops!r}): accepted values are None or a number > 0"
            )
        self.peak_flops = peak_flops
        self._last: tuple[float, int, int, int] | None = None
        self._start_time = 0.0
        self._start_step = 0
        self._counting: FlopCounterMode | None = None
        self._flops_first_step = 0
        self._flops_per_step: int | None = None
        self._peak: float | None = None

    @override
    def on_train_start(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        self._last = self._snapshot(trainer)
        self._start_time, self._start_step = self._last[0], trainer.state.global_step
        self._flops_first_step, self._flops_per_step = 0, None
        device = trainer.strategy.root_device
        self._peak = self.peak_flops or hardware.peak_flops(
            hardware.device_name(device), trainer.strategy.precision.name
        )
        hardware.reset_peak_memory(device)

    @override
    def on_train_batch_start(
        self, trainer: Trainer, module: TaskModule[Any], batch: Any, batch_idx: int
    ) -> None:
        if trainer.state.global_step == self._start_step and self._flops_per_step is None:
            from torch.utils.flop_counter import FlopCounterMode

            self._counting = FlopCounterMode(display=False)
            self._counting.__enter__()

    @override
    def on_train_batch_end(
        self, trainer: Trainer, module: TaskModule[Any], outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._stop_counting()

    @override
    def on_before_zero_grad(self, trainer: Trainer, module: TaskModule[Any], optimizer: Optimizer) -> None:
        if self._flops_per_step is None:  # the first step is done: its count holds for every step
            self._flops_per_step = self._flops_first_step
            if not self._flops_per_step:
                warnings.warn(
                    "Throughput: FlopCounterMode counted no FLOPs in the first step (a compiled model, or "
                    "no matmul/convolution), so total_flos and train_mfu are not logged",
                    stacklevel=1,
                )
        # The step has just been taken; its values are written right after it, with the step.
        if (trainer.state.global_step + 1) % trainer.log_every_n_steps != 0 or self._last is None:
            return
        now = self._snapshot(trainer, steps_done=1)
        seconds = now[0] - self._last[0]
        if seconds > 0:
            module.log("throughput/steps_per_sec", (now[1] - self._last[1]) / seconds)
            module.log("throughput/samples_per_sec", (now[2] - self._last[2]) / seconds)
            if trainer.counts_items:
                module.log("throughput/items_per_sec", (now[3] - self._last[3]) / seconds)
            if self._flops_per_step:
                module.log(
                    "throughput/flops_per_sec", self._flops_per_step * (now[1] - self._last[1]) / seconds
                )
        self._log_run_totals(trainer, module, steps=now[1], now=now[0])
        self._last = now

    @override
    def on_train_epoch_end(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        self._log_run_totals(trainer, module, steps=trainer.state.global_step, now=time.perf_counter())

    @override
    def on_exception(self, trainer: Trainer, module: TaskModule[Any], error: BaseException) -> None:
        self._stop_counting()

    def _stop_counting(self) -> None:
        if self._counting is not None:
            self._counting.__exit__(None, None, None)
            self._flops_first_step += self._counting.get_total_flops()
            self._counting = None

    def _log_run_totals(self, trainer: Trainer, module: TaskModule[Any], steps: int, now: float) -> None:
        module.log("peak_memory_mb", hardware.peak_memory_mb(trainer.strategy.root_device))
        if not self._flops_per_step:
            return
        # Logged per rank scaled by the world size: the sync_dist mean over ranks is then the sum.
        world = trainer.strategy.world_size
        module.log("total_flos", float(self._flops_per_step * steps * world), sync_dist=True)
        elapsed = now - self._start_time
        if self._peak is not None and elapsed > 0:
            flops = self._flops_per_step * (steps - self._start_step)
            module.log("train_mfu", flops / elapsed / self._peak, sync_dist=True)

    @staticmethod
    def _snapshot(trainer: Trainer, steps_done: int = 0) -> tuple[float, int, int, int]:
        items = trainer.items_seen if trainer.counts_items else 0
        return time.perf_counter(), trainer.state.global_step + steps_done, trainer.samples_seen, items
