"""``Throughput``: samples/s and items/s (e.g. tokens/s) over each logging interval."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from tasktrain.callbacks.base import Callback

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from tasktrain.module import TaskModule
    from tasktrain.trainer import Trainer


class Throughput(Callback):
    """Log ``throughput/samples_per_sec``, ``throughput/steps_per_sec`` and, when the module defines
    ``count_items``, ``throughput/items_per_sec`` at every logging step.

    Counters are read only at the logging interval (one device sync there).

    Example:
        >>> import tasktrain as tt
        >>> trainer = tt.Trainer(callbacks=[Throughput()])
    """

    def __init__(self) -> None:
        self._last: tuple[float, int, int, int] | None = None

    @override
    def on_train_start(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        self._last = self._snapshot(trainer)

    @override
    def on_before_zero_grad(self, trainer: Trainer, module: TaskModule[Any], optimizer: Optimizer) -> None:
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
        self._last = now

    @staticmethod
    def _snapshot(trainer: Trainer, steps_done: int = 0) -> tuple[float, int, int, int]:
        items = trainer.items_seen if trainer.counts_items else 0
        return time.perf_counter(), trainer.state.global_step + steps_done, trainer.samples_seen, items
