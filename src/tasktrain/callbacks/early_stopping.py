"""``EarlyStopping``: stop fitting when a monitored metric stops improving."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from tasktrain.callbacks.base import Callback
from tasktrain.monitor import monitored

if TYPE_CHECKING:
    from tasktrain.module import TaskModule
    from tasktrain.trainer import Trainer

_MODES = ("min", "max")


class EarlyStopping(Callback):
    """Set ``trainer.state.should_stop`` after ``patience`` checks without improvement.

    The metric is checked after every validation run during fit, or at the end of every epoch
    when the fit has no validation data. A NaN never counts as an improvement; with
    ``check_finite`` a non-finite value stops at once.

    Example:
        >>> import tasktrain as tt
        >>> trainer = tt.Trainer(callbacks=[EarlyStopping("val/loss", patience=3)])
    """

    def __init__(
        self,
        monitor: str = "val/loss",
        mode: str = "min",
        patience: int = 3,
        min_delta: float = 0.0,
        check_finite: bool = True,
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"EarlyStopping(mode={mode!r}): accepted values are {_MODES}")
        if patience < 0:
            raise ValueError(f"EarlyStopping(patience={patience!r}): must be >= 0")
        if min_delta < 0:
            raise ValueError(f"EarlyStopping(min_delta={min_delta!r}): must be >= 0")
        self.monitor, self.mode, self.patience = monitor, mode, patience
        self.min_delta, self.check_finite = min_delta, check_finite
        self.best: float = math.inf if mode == "min" else -math.inf
        self.wait = 0
        self.stopped_at_step: int | None = None

    @override
    def on_validation_end(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        if trainer.state.stage == "fit":
            self._check(trainer)

    @override
    def on_train_epoch_end(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        if trainer.val_dataloader is None:
            self._check(trainer)

    def _check(self, trainer: Trainer) -> None:
        value = monitored(trainer.callback_metrics, self.monitor, "EarlyStopping")
        value = trainer.strategy.broadcast(value)  # rank 0's value: every rank decides alike
        if self.check_finite and not math.isfinite(value):
            self._stop(trainer)
            return
        improved = (
            value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta
        )
        if improved:
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait > self.patience:
            self._stop(trainer)

    def _stop(self, trainer: Trainer) -> None:
        trainer.state.should_stop = True
        self.stopped_at_step = trainer.state.global_step

    @override
    def state_dict(self) -> dict[str, Any]:
        best = self.best if math.isfinite(self.best) else None  # checkpoints hold strict JSON
        return {"best": best, "wait": self.wait, "stopped_at_step": self.stopped_at_step}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        initial = math.inf if self.mode == "min" else -math.inf
        self.best = state["best"] if state["best"] is not None else initial
        self.wait, self.stopped_at_step = state["wait"], state["stopped_at_step"]
