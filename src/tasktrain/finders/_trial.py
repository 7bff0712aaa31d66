"""What both finders share: a quiet in-process Trainer for a trial, and restoring the weights."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from torch import nn

from tasktrain.callbacks.base import Callback
from tasktrain.trainer import Trainer

#: Trainer arguments a finder sets itself.
FINDER_OWNED = (
    "max_steps",
    "max_epochs",
    "callbacks",
    "logger",
    "enable_checkpointing",
    "enable_progress_bar",
)


def trial_trainer(
    caller: str, trainer_kwargs: Mapping[str, Any] | None, max_steps: int, callbacks: Sequence[Callback]
) -> Trainer:
    """A Trainer for ``max_steps`` steps that logs and saves nothing, run in this process."""
    kwargs = dict(trainer_kwargs or {})
    owned = sorted(set(kwargs) & set(FINDER_OWNED))
    if owned:
        raise ValueError(
            f"{caller}(trainer_kwargs={kwargs!r}): {owned} are set by the finder; pass any other Trainer argument"
        )
    kwargs.setdefault("on_nonfinite_loss", "skip")  # a diverging trial is data, not an error
    trainer = Trainer(
        max_steps=max_steps,
        callbacks=list(callbacks),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        **kwargs,
    )
    if trainer.strategy.processes_to_launch:
        raise ValueError(
            f"{caller}(trainer_kwargs={kwargs!r}): finders run in this process; drop devices>1 "
            "(a batch size or learning rate found on one process carries over per rank)"
        )
    return trainer


@contextmanager
def restored_weights(module: nn.Module) -> Iterator[None]:
    """Put the module's parameters and buffers back as they were, however the block ends."""
    initial = {k: v.detach().clone() for k, v in module.state_dict().items()}
    try:
        yield
    finally:
        module.load_state_dict(initial)
