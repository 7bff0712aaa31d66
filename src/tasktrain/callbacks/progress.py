"""``ProgressBar``: a tqdm bar per epoch showing epoch, step, loss, lr, samples/s and it/s (rank 0 only)."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from tasktrain.callbacks.base import Callback

if TYPE_CHECKING:
    from tqdm import tqdm

    from tasktrain.module import TaskModule
    from tasktrain.trainer import Trainer


class ProgressBar(Callback):
    """One tqdm bar per training epoch, counting optimizer steps.

    The postfix (loss, lr, metrics logged with ``prog_bar=True``) is refreshed only when new
    values were logged, so the bar adds no device sync.

    Example:
        >>> import tasktrain as tt
        >>> trainer = tt.Trainer(callbacks=[ProgressBar(leave=True)], enable_progress_bar=False)
    """

    def __init__(self, leave: bool = False) -> None:
        self.leave = leave
        self._bar: tqdm[Any] | None = None
        self._last: tuple[float, int] | None = None  # (time, samples seen) at the previous postfix
        self._samples_per_second: float | None = None

    @override
    def on_train_start(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        self._last, self._samples_per_second = None, None

    @override
    def on_train_epoch_start(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        if not trainer.is_global_zero:
            return
        from tqdm import tqdm

        self._close()
        self._bar = tqdm(
            total=trainer.steps_per_epoch,
            desc=f"epoch {trainer.state.epoch}",
            unit="step",
            leave=self.leave,
            dynamic_ncols=True,
            file=sys.stderr,
        )

    @override
    def on_train_step_end(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        bar = self._bar
        if bar is None:
            return
        bar.update(1)
        if trainer.state.global_step % trainer.log_every_n_steps == 0:
            self._measure_speed(trainer)
            bar.set_postfix(self._postfix(trainer), refresh=False)

    @override
    def on_validation_end(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        if self._bar is not None:
            self._bar.set_postfix(self._postfix(trainer), refresh=True)

    @override
    def on_train_epoch_end(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        if self._bar is not None:
            self._bar.set_postfix(self._postfix(trainer), refresh=True)

    @override
    def on_train_end(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        self._close()

    @override
    def on_exception(self, trainer: Trainer, module: TaskModule[Any], error: BaseException) -> None:
        self._close()

    def _measure_speed(self, trainer: Trainer) -> None:
        """Samples per second (this rank) since the previous measurement: host counters, no device sync."""
        now = (time.perf_counter(), trainer.samples_seen)
        if self._last is not None and now[0] > self._last[0]:
            self._samples_per_second = (now[1] - self._last[1]) / (now[0] - self._last[0])
        self._last = now

    def _postfix(self, trainer: Trainer) -> dict[str, str]:
        metrics = trainer.callback_metrics
        shown = {"epoch": str(trainer.state.epoch), "step": str(trainer.state.global_step)}
        if "train/loss" in metrics:
            shown["loss"] = f"{metrics['train/loss']:.4g}"
        if trainer.optimizer is not None:
            shown["lr"] = f"{trainer.optimizer.param_groups[0]['lr']:.3g}"
        if self._samples_per_second is not None:
            shown["samples/s"] = f"{self._samples_per_second:.4g}"
        shown.update({k: f"{v:.4g}" for k, v in trainer.progress_bar_metrics.items() if k != "train/loss"})
        return shown

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
