"""What ``configure_optimizers`` returns (one optimizer or several, with schedulers), normalised into one ``OptimizerSetup``."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from tasktrain.monitor import monitored

_INTERVALS = ("step", "epoch")
Broadcast = Callable[[float], float]  # rank 0's value on every rank (``Strategy.broadcast``)


@dataclass
class SchedulerConfig:
    """An LR scheduler and when it steps.

    ``interval="step"`` steps after every optimizer step that was taken (a step skipped for
    non-finite gradients does not advance it); ``"epoch"`` after every epoch. A
    ``ReduceLROnPlateau`` (or any scheduler given a ``monitor``) steps with the monitored metric
    after each validation run, or at the end of each epoch when there is no validation data.
    """

    scheduler: LRScheduler | ReduceLROnPlateau
    interval: str = "epoch"
    frequency: int = 1
    monitor: str | None = None

    def __post_init__(self) -> None:
        if self.interval not in _INTERVALS:
            raise ValueError(f"lr_scheduler interval={self.interval!r}: accepted values are {_INTERVALS}")
        if not isinstance(self.frequency, int) or self.frequency < 1:
            raise ValueError(f"lr_scheduler frequency={self.frequency!r}: must be an integer >= 1")
        if isinstance(self.scheduler, ReduceLROnPlateau) and self.monitor is None:
            self.monitor = "val/loss"

    @property
    def is_monitored(self) -> bool:
        return self.monitor is not None

    def step(self) -> None:
        """Advance an unmonitored scheduler by one of its intervals."""
        self.scheduler.step()  # type: ignore[call-arg]  # not a ReduceLROnPlateau: those are monitored

    def step_if_due(self, intervals_done: int) -> None:
        """Step when ``intervals_done`` (steps taken, or epochs) is a multiple of ``frequency``."""
        if intervals_done % self.frequency == 0:
            self.step()


@dataclass
class OptimizerConfig:
    """One optimizer and the LR schedulers bound to it, and when those schedulers step.

    The loops report what happened (:meth:`after_optimizer_step`, :meth:`after_validation`,
    :meth:`after_epoch`); each scheduler's ``interval``, ``frequency`` and ``monitor`` decide.
    """

    optimizer: Optimizer
    schedulers: list[SchedulerConfig] = field(default_factory=list)

    def after_optimizer_step(self, steps_taken: int) -> None:
        """This optimizer took a step (its ``steps_taken``-th; skipped steps do not count)."""
        for config in self.schedulers:
            if config.interval == "step" and not config.is_monitored:
                config.step_if_due(steps_taken)

    def after_validation(self, metrics: Mapping[str, float], broadcast: Broadcast) -> None:
        """A validation run ended: a monitored scheduler steps with its metric."""
        for config in self.schedulers:
            _step_monitored(config, metrics, broadcast)

    def after_epoch(
        self, epochs_done: int, metrics: Mapping[str, float], broadcast: Broadcast, validates: bool
    ) -> None:
        """An epoch ended; a monitored scheduler steps here only when there is no validation run."""
        for config in self.schedulers:
            if config.interval == "epoch" and not config.is_monitored:
                config.step_if_due(epochs_done)
            if not validates:
                _step_monitored(config, metrics, broadcast)


@dataclass
class OptimizerSetup:
    """Every optimizer of a fit (in ``configure_optimizers`` order) with its schedulers.

    Checkpoints keep the optimizers and the schedulers by position (``lr_scheduler.0``, ...).

    Example:
        >>> import torch
        >>> p = torch.nn.Parameter(torch.zeros(1))
        >>> setup = parse_optimizers([torch.optim.SGD([p], lr=0.1), torch.optim.Adam([p])])
        >>> len(setup.optimizers), setup.schedulers
        (2, [])
    """

    configs: list[OptimizerConfig]

    @property
    def optimizers(self) -> list[Optimizer]:
        return [c.optimizer for c in self.configs]

    @property
    def optimizer(self) -> Optimizer:
        """The one optimizer of automatic optimization (the first of several)."""
        return self.configs[0].optimizer

    @property
    def schedulers(self) -> list[SchedulerConfig]:
        """Every scheduler, in the order ``configure_optimizers`` gave them."""
        return [s for c in self.configs for s in c.schedulers]

    def after_optimizer_step(self, steps_taken: int, index: int = 0) -> None:
        """Optimizer ``index`` took its ``steps_taken``-th step."""
        self.configs[index].after_optimizer_step(steps_taken)

    def after_validation(self, metrics: Mapping[str, float], broadcast: Broadcast) -> None:
        for config in self.configs:
            config.after_validation(metrics, broadcast)

    def after_epoch(
        self, epochs_done: int, metrics: Mapping[str, float], broadcast: Broadcast, validates: bool
    ) -> None:
        for config in self.configs:
            config.after_epoch(epochs_done, metrics, broadcast, validates)

    def check_mode(self, automatic: bool, module_name: str) -> None:
        """Refuse several optimizers under automatic optimization, saying what to do instead."""
        if automatic and len(self.configs) > 1:
            raise ValueError(
                f"{module_name}.configure_optimizers() returned {len(self.configs)} optimizers, but automatic "
                "optimization steps exactly one. Set `automatic_optimization = False` on the class and step "
                "them yourself in training_step (self.optimizers(), self.manual_backward(loss), opt.step()); "
                f"see {MANUAL_DOCS}"
            )


MANUAL_DOCS = "the docs page 'Several optimizers and manual optimization' (docs/concepts/optimization.md)"


def _step_monitored(config: SchedulerConfig, metrics: Mapping[str, float], broadcast: Broadcast) -> None:
    # The value is rank 0's, broadcast, so every rank changes its learning rate alike.
    if config.monitor is None:
        return
    value = broadcast(monitored(metrics, config.monitor, "lr_scheduler"))
    if isinstance(config.scheduler, ReduceLROnPlateau):
        if not math.isnan(value):
            config.scheduler.step(value)
    else:
        config.step()


_FORMS = (
    "configure_optimizers() must return an Optimizer, (optimizer, scheduler), "
    "{'optimizer': ..., 'lr_scheduler': ...}, a list of optimizers, a list of such dicts, or "
    "([optimizers], [schedulers])"
)


def parse_optimizers(value: Any) -> OptimizerSetup:
    """Normalise every return form of ``configure_optimizers``.

    Accepted: an optimizer; ``(optimizer, scheduler)``; ``{"optimizer": ..., "lr_scheduler": ...}``;
    a list (or tuple) of optimizers; a list of such dicts; and Lightning's
    ``([optimizers], [schedulers])``, where each scheduler goes to the optimizer it was built on.

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        >>> parse_optimizers(opt).schedulers
        []
    """
    if isinstance(value, Optimizer):
        return OptimizerSetup([OptimizerConfig(value)])
    if isinstance(value, Mapping):
        return OptimizerSetup([_parse_dict(value, "configure_optimizers()")])
    if isinstance(value, (tuple, list)) and value:
        first = value[0]
        if len(value) == 2 and isinstance(first, Optimizer) and not isinstance(value[1], Optimizer):
            return OptimizerSetup([OptimizerConfig(first, [_parse_scheduler(value[1])])])
        if len(value) == 2 and isinstance(first, (list, tuple)) and isinstance(value[1], (list, tuple)):
            return _parse_two_lists(first, value[1])
        if all(isinstance(v, Optimizer) for v in value):
            return OptimizerSetup([OptimizerConfig(v) for v in value])
        if all(isinstance(v, Mapping) for v in value):
            return OptimizerSetup(
                [_parse_dict(v, f"configure_optimizers()[{i}]") for i, v in enumerate(value)]
            )
        kinds = ", ".join(type(v).__name__ for v in value)
        raise TypeError(f"{_FORMS}; got a {type(value).__name__} of ({kinds})")
    raise TypeError(f"{_FORMS}; got {type(value).__name__}")


def _parse_dict(value: Mapping[str, Any], where: str) -> OptimizerConfig:
    if not isinstance(value.get("optimizer"), Optimizer):
        raise TypeError(
            f"{where} is a dict whose 'optimizer' is {type(value.get('optimizer')).__name__}; {_FORMS}"
        )
    unknown = set(value) - {"optimizer", "lr_scheduler"}
    if unknown:
        raise ValueError(
            f"{where} returned unknown keys {sorted(unknown)}; accepted: 'optimizer', 'lr_scheduler'"
        )
    scheduler = value.get("lr_scheduler")
    return OptimizerConfig(value["optimizer"], [] if scheduler is None else [_parse_scheduler(scheduler)])


def _parse_two_lists(optimizers: Sequence[Any], schedulers: Sequence[Any]) -> OptimizerSetup:
    if not all(isinstance(o, Optimizer) for o in optimizers):
        raise TypeError(
            f"{_FORMS}; the first list of ([optimizers], [schedulers]) holds other than optimizers"
        )
    configs = [OptimizerConfig(o) for o in optimizers]
    for i, value in enumerate(schedulers):
        config = _parse_scheduler(value)
        owner = getattr(config.scheduler, "optimizer", None)
        matches = [c for c in configs if c.optimizer is owner]
        if not matches:
            raise ValueError(
                f"configure_optimizers(): scheduler {i} ({type(config.scheduler).__name__}) was built on an "
                "optimizer that is not among the returned optimizers"
            )
        matches[0].schedulers.append(config)
    return OptimizerSetup(configs)


def _parse_scheduler(value: Any) -> SchedulerConfig:
    if isinstance(value, (LRScheduler, ReduceLROnPlateau)):
        return SchedulerConfig(value)
    if isinstance(value, Mapping) and "scheduler" in value:
        unknown = set(value) - {"scheduler", "interval", "frequency", "monitor"}
        if unknown:
            raise ValueError(
                f"lr_scheduler has unknown keys {sorted(unknown)}; accepted: scheduler, interval, frequency, monitor"
            )
        return SchedulerConfig(**value)
    raise TypeError(
        "lr_scheduler must be a torch LR scheduler or {'scheduler': ..., 'interval': 'step'|'epoch', "
        f"'monitor': ...}}; got {type(value).__name__}"
    )
