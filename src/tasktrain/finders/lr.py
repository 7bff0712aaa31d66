"""``find_lr``: the learning-rate range test (an exponential LR sweep, one optimizer step per LR)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from typing_extensions import override

from tasktrain.callbacks.base import Callback
from tasktrain.finders._trial import restored_weights, trial_trainer
from tasktrain.module import TaskModule

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from torch.optim import Optimizer

    from tasktrain.trainer import Trainer


@dataclass
class LRFinderResult:
    """The sweep: ``losses[i]`` is the smoothed loss measured just before the step taken at ``lrs[i]``."""

    lrs: list[float]
    losses: list[float]
    raw_losses: list[float]
    suggestion: float | None

    def plot(self) -> Figure:
        """Loss against learning rate (log scale), the suggestion marked. Needs matplotlib."""
        from matplotlib.figure import Figure

        figure = Figure()
        ax = figure.add_subplot()
        ax.plot(self.lrs, self.losses)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss (smoothed)")
        if self.suggestion is not None:
            ax.axvline(
                self.suggestion, color="red", linestyle="--", label=f"suggestion {self.suggestion:.2e}"
            )
            ax.legend()
        return figure


def find_lr(
    module: TaskModule[Any],
    train_dataloaders: DataLoader[Any] | None = None,
    *,
    min_lr: float = 1e-8,
    max_lr: float = 1.0,
    num_steps: int = 100,
    smoothing: float = 0.98,
    stop_factor: float = 4.0,
    trainer_kwargs: Mapping[str, Any] | None = None,
) -> LRFinderResult:
    """Train ``num_steps`` steps with the LR growing exponentially from ``min_lr`` to ``max_lr``.

    The optimizer comes from ``configure_optimizers``; its learning rate is overwritten before
    every step (a scheduler is ignored). The loss is smoothed with an exponential moving average
    (``smoothing``, bias-corrected). The sweep stops early once the smoothed loss exceeds
    ``stop_factor`` times the best one, or is not finite. The suggestion is the LR at the
    steepest descent of the smoothed loss (the first 10 and the last step are skipped when the
    sweep is long enough). The module's weights are restored afterwards; ``trainer_kwargs`` go
    to the :class:`~tasktrain.Trainer` of the sweep (e.g. ``accelerator``, ``precision``,
    ``accumulate_grad_batches``). Lightning's ``Tuner(trainer).lr_find(model)`` is the same test.

    Example:
        >>> result = find_lr(model, loader, min_lr=1e-6, max_lr=1.0)  # doctest: +SKIP
        >>> model.hparams.lr = result.suggestion  # doctest: +SKIP
    """
    _check(min_lr, max_lr, num_steps, smoothing, stop_factor)
    sweep = _LRSweep(min_lr, max_lr, num_steps, smoothing, stop_factor)
    trainer = trial_trainer("find_lr", trainer_kwargs, num_steps, [sweep])
    with restored_weights(module):
        trainer.fit(module, train_dataloaders)
    return LRFinderResult(sweep.lrs, sweep.losses, sweep.raw_losses, _steepest(sweep.lrs, sweep.losses))


class _LRSweep(Callback):
    """Sets the LR of each step, records the loss measured before it, and stops on divergence."""

    def __init__(
        self, min_lr: float, max_lr: float, num_steps: int, smoothing: float, stop_factor: float
    ) -> None:
        ratio = (max_lr / min_lr) ** (1 / max(num_steps - 1, 1))
        self.schedule = [min_lr * ratio**i for i in range(num_steps)]
        self.smoothing, self.stop_factor = smoothing, stop_factor
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.raw_losses: list[float] = []
        self._step_loss: Tensor | None = None
        self._average = 0.0

    @override
    def on_before_backward(self, trainer: Trainer, module: TaskModule[Any], loss: Tensor) -> None:
        loss = loss.detach()  # the group's loss is the sum of its weighted micro-batch losses
        self._step_loss = loss if self._step_loss is None else self._step_loss + loss

    @override
    def on_before_optimizer_step(
        self, trainer: Trainer, module: TaskModule[Any], optimizer: Optimizer
    ) -> None:
        lr = self.schedule[len(self.lrs)]
        for group in optimizer.param_groups:
            group["lr"] = lr
        self.lrs.append(lr)

    @override
    def on_train_step_end(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        loss, self._step_loss = self._step_loss, None
        if loss is None or len(self.raw_losses) == len(self.lrs):  # no step taken: the loss was not finite
            trainer.state.should_stop = True
            return
        raw = float(loss)  # one host sync per step: fine for a short sweep
        self._average = self.smoothing * self._average + (1 - self.smoothing) * raw
        smoothed = self._average / (1 - self.smoothing ** (len(self.raw_losses) + 1))
        self.raw_losses.append(raw)
        self.losses.append(smoothed)
        if not math.isfinite(smoothed) or smoothed > self.stop_factor * min(self.losses):
            trainer.state.should_stop = True


def _steepest(lrs: list[float], losses: list[float], skip_begin: int = 10, skip_end: int = 1) -> float | None:
    """The LR where the smoothed loss falls fastest (per step, i.e. per equal ratio of LR)."""
    if len(losses) < 3:
        return None
    if len(losses) <= skip_begin + skip_end + 2:
        skip_begin, skip_end = 0, 0
    window = torch.tensor(losses[skip_begin : len(losses) - skip_end], dtype=torch.float64)
    finite = torch.isfinite(window)
    if finite.sum() < 2:
        return None
    slope = torch.gradient(window.nan_to_num(posinf=torch.finfo(torch.float64).max))[0]
    slope[~finite] = math.inf
    return lrs[skip_begin + int(slope.argmin())]


def _check(min_lr: float, max_lr: float, num_steps: int, smoothing: float, stop_factor: float) -> None:
    if not 0 < min_lr < max_lr < math.inf:
        raise ValueError(
            f"find_lr(min_lr={min_lr!r}, max_lr={max_lr!r}): accepted values are 0 < min_lr < max_lr"
        )
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
        raise ValueError(f"find_lr(num_steps={num_steps!r}): accepted values are an int >= 2")
    if not 0 <= smoothing < 1:
        raise ValueError(f"find_lr(smoothing={smoothing!r}): accepted values are in [0, 1)")
    if not stop_factor > 1:
        raise ValueError(f"find_lr(stop_factor={stop_factor!r}): accepted values are a number > 1")
