"""``TrainerArgs``: the Trainer's arguments, checked once, each error naming argument, value and what is accepted."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from tasktrain.callbacks.base import Callback
from tasktrain.compile import check_compile_options
from tasktrain.loggers.base import Logger
from tasktrain.loops.accumulation import NONFINITE_POLICIES
from tasktrain.precision import PRECISIONS
from tasktrain.strategies.base import Strategy

#: ``strategy="deepspeed"`` is ZeRO stage 2; the ``deepspeed_stage_N`` names pick a stage.
DEEPSPEED_STAGES = {"deepspeed": 2, "deepspeed_stage_1": 1, "deepspeed_stage_2": 2, "deepspeed_stage_3": 3}
STRATEGY_NAMES = ("auto", "single", "ddp", "fsdp", "tp", *DEEPSPEED_STAGES)
ACCELERATORS = ("auto", "cpu", "cuda", "mps")
CLIP_ALGORITHMS = ("norm", "value")


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
    compile: bool | Mapping[str, Any]
    on_nonfinite_loss: str
    num_sanity_val_steps: int
    fast_dev_run: bool | int
    #: ``compile`` as torch.compile keyword arguments; None when not compiling.
    compile_options: dict[str, Any] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        _count("max_epochs", self.max_epochs, minimum=0, optional=True)
        _count("max_steps", self.max_steps, minimum=0, optional=True)
        _count("accumulate_grad_batches", self.accumulate_grad_batches, minimum=1)
        _count("log_every_n_steps", self.log_every_n_steps, minimum=1)
        _count("check_val_every_n_epoch", self.check_val_every_n_epoch, minimum=1, optional=True)
        _count("num_nodes", self.num_nodes, minimum=1)
        if type(self.num_sanity_val_steps) is not int or self.num_sanity_val_steps < -1:
            raise ValueError(
                f"Trainer(num_sanity_val_steps={self.num_sanity_val_steps!r}): accepted values are an int >= 0 "
                "(validation batches before training) or -1 (the whole validation set)"
            )
        if type(self.fast_dev_run) not in (bool, int) or self.fast_dev_run < 0:
            raise ValueError(
                f"Trainer(fast_dev_run={self.fast_dev_run!r}): accepted values are True (1 batch), False, "
                "or an int >= 0 (that many batches; 0 is off)"
            )
        if self.seed is not None and (type(self.seed) is not int or not 0 <= self.seed < 2**32):
            raise ValueError(
                f"Trainer(seed={self.seed!r}): accepted values are None or an int >= 0 and < 2**32"
            )
        _choice("gradient_clip_algorithm", self.gradient_clip_algorithm, CLIP_ALGORITHMS)
        _choice("precision", self.precision, tuple(PRECISIONS))
        _choice("accelerator", self.accelerator, ACCELERATORS)
        _choice("on_nonfinite_loss", self.on_nonfinite_loss, NONFINITE_POLICIES)
        for name in ("enable_progress_bar", "enable_checkpointing", "deterministic"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"Trainer({name}={getattr(self, name)!r}): must be True or False")
        clip = self.gradient_clip_val
        if clip is not None and (
            isinstance(clip, bool) or not isinstance(clip, (int, float)) or not (0 < clip < math.inf)
        ):
            raise ValueError(
                f"Trainer(gradient_clip_val={clip!r}): accepted values are a finite number > 0 or None"
            )
        if not isinstance(self.default_root_dir, (str, os.PathLike)):
            raise TypeError(
                f"Trainer(default_root_dir={self.default_root_dir!r}): accepted values are a path or an fsspec URL string"
            )
        _interval("val_check_interval", self.val_check_interval, int_minimum=1)
        _interval("limit_train_batches", self.limit_train_batches, int_minimum=1)
        _interval("limit_val_batches", self.limit_val_batches, int_minimum=0)
        self._check_strategy()
        self._check_callbacks_and_loggers()
        self.compile_options = check_compile_options(self.compile)

    def _check_strategy(self) -> None:
        if isinstance(self.strategy, Strategy) and self.accelerator != "auto":
            raise ValueError(
                f"Trainer(accelerator={self.accelerator!r}) with a Strategy object: the strategy's own device "
                "decides; leave accelerator='auto'"
            )
        if not isinstance(self.strategy, Strategy):
            _choice("strategy", self.strategy, STRATEGY_NAMES)
        devices = self.devices
        if devices == "auto" or (type(devices) is int and devices == 1):
            return
        if type(devices) is not int or devices < 1:
            raise ValueError(f"Trainer(devices={devices!r}): accepted values are an int >= 1 or 'auto'")
        if self.strategy == "single":
            raise ValueError(
                f"Trainer(devices={devices}) with strategy='single': use strategy='ddp' (or 'auto')"
            )
        if isinstance(self.strategy, Strategy):
            raise ValueError(
                f"Trainer(devices={devices}) with a Strategy object: give the process count to the strategy itself"
            )
        wants_cuda = self.accelerator == "cuda" or (self.accelerator == "auto" and torch.cuda.is_available())
        available = torch.cuda.device_count() if wants_cuda else None
        if available is not None and devices > available:
            raise ValueError(f"Trainer(devices={devices}): only {available} CUDA devices are available")

    def _check_callbacks_and_loggers(self) -> None:
        callbacks = self.callbacks
        if callbacks is not None and not _is_sequence_of(callbacks, Callback):
            raise TypeError(
                f"Trainer(callbacks={callbacks!r}): accepted values are None or a list of Callback instances"
            )
        if isinstance(self.logger, (bool, Logger)) or _is_sequence_of(self.logger, Logger):
            return
        raise TypeError(
            f"Trainer(logger={self.logger!r}): accepted values are True, False, a Logger or a list of Loggers"
        )


def with_fast_dev_run(args: TrainerArgs) -> TrainerArgs:
    """``args`` as ``fast_dev_run`` runs them: N batches of each stage, one epoch, nothing written.

    ``fast_dev_run=N`` (``True`` is 1) overrides the arguments that say how long to train and
    validate, and turns the default logger and checkpoints off; off (0 or False), ``args`` is
    returned unchanged.

    Example:
        >>> import tasktrain as tt
        >>> args = tt.Trainer(fast_dev_run=2).args  # the Trainer applies it to its arguments
        >>> args.limit_train_batches, args.max_epochs, args.enable_checkpointing
        (2, 1, False)
    """
    batches = int(args.fast_dev_run)
    if not batches:
        return args
    return replace(
        args,
        max_epochs=1,
        max_steps=None,
        limit_train_batches=batches,
        limit_val_batches=batches,
        val_check_interval=None,
        check_val_every_n_epoch=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
    )


def _is_sequence_of(value: Any, kind: type) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(item, kind) for item in value)


def _count(name: str, value: Any, minimum: int, optional: bool = False, maximum: int | None = None) -> None:
    if value is None and optional:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        accepted = f"an int >= {minimum}" if maximum is None else f"an int in [{minimum}, {maximum}]"
        raise ValueError(
            f"Trainer({name}={value!r}): accepted values are {accepted}" + (" or None" if optional else "")
        )


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
