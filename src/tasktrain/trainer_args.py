"""``TrainerArgs``: the Trainer's arguments, checked once, each error naming argument, value and what is accepted."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tasktrain.callbacks.base import Callback
from tasktrain.loggers.base import Logger
from tasktrain.precision import PRECISIONS
from tasktrain.strategies.base import Strategy

STRATEGY_NAMES = ("auto", "single")
#: Strategy names that exist in the design but are not implemented yet.
PLANNED_STRATEGIES = ("ddp", "fsdp", "deepspeed", "tp")
ACCELERATORS = ("auto", "cpu", "cuda", "mps")
CLIP_ALGORITHMS = ("norm", "value")
NONFINITE_POLICIES = ("raise", "skip")


@dataclass
class TrainerArgs:
    """Every ``Trainer`` argument; ``__post_init__`` rejects bad values before anything runs."""

    max_epochs: int | None
    max_steps: int | None
    accumulate_grad_batches: int
    gradient_clip_val: float | None
    gradient_clip_algorithm: str
    precision: str
    strategy: str | Strategy
    devices: int | str
    num_nodes: int
    accelerator: str
    callbacks: Sequence[Callback] | None
    logger: bool | Logger | Sequence[Logger]
    default_root_dir: str | os.PathLike[str]
    val_check_interval: int | float | None
    check_val_every_n_epoch: int | None
    log_every_n_steps: int
    enable_progress_bar: bool
    enable_checkpointing: bool
    limit_train_batches: int | float | None
    limit_val_batches: int | float | None
    seed: int | None
    deterministic: bool
    compile: bool
    on_nonfinite_loss: str

    def __post_init__(self) -> None:
        _count("max_epochs", self.max_epochs, minimum=0, optional=True)
        _count("max_steps", self.max_steps, minimum=0, optional=True)
        _count("accumulate_grad_batches", self.accumulate_grad_batches, minimum=1)
        _count("log_every_n_steps", self.log_every_n_steps, minimum=1)
        _count("check_val_every_n_epoch", self.check_val_every_n_epoch, minimum=1, optional=True)
        _count("num_nodes", self.num_nodes, minimum=1)
        _count("seed", self.seed, minimum=0, optional=True)
        _choice("gradient_clip_algorithm", self.gradient_clip_algorithm, CLIP_ALGORITHMS)
        _choice("precision", self.precision, tuple(PRECISIONS))
        _choice("accelerator", self.accelerator, ACCELERATORS)
        _choice("on_nonfinite_loss", self.on_nonfinite_loss, NONFINITE_POLICIES)
        for name in ("enable_progress_bar", "enable_checkpointing", "deterministic", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"Trainer({name}={getattr(self, name)!r}): must be True or False")
        if self.gradient_clip_val is not None and (
            isinstance(self.gradient_clip_val, bool)
            or not isinstance(self.gradient_clip_val, (int, float))
            or self.gradient_clip_val <= 0
        ):
            raise ValueError(
                f"Trainer(gradient_clip_val={self.gradient_clip_val!r}): must be a number > 0 or None"
            )
        _interval("val_check_interval", self.val_check_interval, int_minimum=1)
        _interval("limit_train_batches", self.limit_train_batches, int_minimum=1)
        _interval("limit_val_batches", self.limit_val_batches, int_minimum=0)
        self._check_strategy()
        self._check_callbacks_and_loggers()
        if self.compile:
            raise NotImplementedError("Trainer(compile=True): torch.compile support is not implemented yet")
        if self.num_nodes != 1:
            raise NotImplementedError(
                f"Trainer(num_nodes={self.num_nodes}): multi-node runs are launched by torchrun, not implemented yet"
            )

    def _check_strategy(self) -> None:
        if isinstance(self.strategy, Strategy) and self.accelerator != "auto":
            raise ValueError(
                f"Trainer(accelerator={self.accelerator!r}) with a Strategy object: the strategy's own device "
                "decides; leave accelerator='auto'"
            )
        if not isinstance(self.strategy, Strategy):
            if self.strategy in PLANNED_STRATEGIES:
                raise NotImplementedError(
                    f"Trainer(strategy={self.strategy!r}) is not implemented yet; available: {list(STRATEGY_NAMES)} "
                    "or a Strategy object"
                )
            _choice("strategy", self.strategy, STRATEGY_NAMES + PLANNED_STRATEGIES)
        if self.devices not in (1, "auto"):
            if isinstance(self.devices, int) and not isinstance(self.devices, bool) and self.devices > 1:
                raise NotImplementedError(
                    f"Trainer(devices={self.devices}): several devices need a data-parallel strategy, "
                    "which is not implemented yet; use devices=1"
                )
            raise ValueError(f"Trainer(devices={self.devices!r}): accepted values are an int >= 1 or 'auto'")

    def _check_callbacks_and_loggers(self) -> None:
        if self.callbacks is not None:
            bad = [cb for cb in self.callbacks if not isinstance(cb, Callback)]
            if bad or isinstance(self.callbacks, (str, Callback)):
                raise TypeError(
                    f"Trainer(callbacks=...): expected a list of Callback instances, got {bad or self.callbacks!r}"
                )
        if isinstance(self.logger, (bool, Logger)):
            return
        if isinstance(self.logger, str) or not all(isinstance(lg, Logger) for lg in self.logger):
            raise TypeError(
                f"Trainer(logger={self.logger!r}): accepted values are True, False, a Logger or a list of Loggers"
            )


def _count(name: str, value: Any, minimum: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        accepted = f"an int >= {minimum}" + (" or None" if optional else "")
        raise ValueError(f"Trainer({name}={value!r}): accepted values are {accepted}")


def _choice(name: str, value: Any, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise ValueError(f"Trainer({name}={value!r}): accepted values are {list(accepted)}")


def _interval(name: str, value: Any, int_minimum: int) -> None:
    """None, an int >= ``int_minimum`` (a count), or a float in (0, 1] (a fraction)."""
    if value is None:
        return
    if isinstance(value, int) and not isinstance(value, bool) and value >= int_minimum:
        return
    if isinstance(value, float) and 0.0 < value <= 1.0:
        return
    raise ValueError(
        f"Trainer({name}={value!r}): accepted values are None, an int >= {int_minimum} or a float in (0.0, 1.0]"
    )
