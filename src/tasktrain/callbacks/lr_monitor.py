"""``LearningRateMonitor``: log every parameter group's learning rate."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from typing_extensions import override

from tasktrain.callbacks.base import Callback

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from tasktrain.module import TaskModule
    from tasktrain.trainer import Trainer

_INTERVALS = ("step", "epoch")


class LearningRateMonitor(Callback):
    """Log ``lr`` (one group) or ``lr/pg{i}`` (several): the rate each logged step used, or each epoch's.

    With several optimizers the names carry the optimizer's position: ``lr/opt{k}`` (or
    ``lr/opt{k}/pg{i}``).

    Example:
        >>> import tasktrain as tt
        >>> trainer = tt.Trainer(callbacks=[LearningRateMonitor("step")])
    """

    def __init__(self, logging_interval: str = "step") -> None:
        if logging_interval not in _INTERVALS:
            raise ValueError(
                f"LearningRateMonitor(logging_interval={logging_interval!r}): accepted {_INTERVALS}"
            )
        self.logging_interval = logging_interval

    @override
    def on_before_optimizer_step(
        self, trainer: Trainer, module: TaskModule[Any], optimizer: Optimizer
    ) -> None:
        # The rate this step uses, logged with the step it completes (written right after it).
        if (
            self.logging_interval == "step"
            and (trainer.state.global_step + 1) % trainer.log_every_n_steps == 0
        ):
            self._log(trainer, module, on_step=True, only=optimizer)

    @override
    def on_train_epoch_start(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        if self.logging_interval == "epoch":
            self._log(trainer, module, on_step=False)

    def _log(
        self, trainer: Trainer, module: TaskModule[Any], on_step: bool, only: Optimizer | None = None
    ) -> None:
        # Per step, only the optimizer about to step: under manual optimization the others may
        # already have stepped (and their schedulers with them) within the same training_step.
        optimizers = trainer.optimizers
        for k, optimizer in enumerate(optimizers):
            if only is not None and len(optimizers) > 1 and optimizer is not only:
                continue
            prefix = "lr" if len(optimizers) == 1 else f"lr/opt{k}"
            groups = optimizer.param_groups
            for i, group in enumerate(groups):
                name = prefix if len(groups) == 1 else f"{prefix}/pg{i}"
                module.log(name, float(group["lr"]), on_step=on_step, on_epoch=not on_step)
