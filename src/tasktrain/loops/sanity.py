"""``SanityCheck``: a few validation batches before training, that leave training exactly as it was."""

from __future__ import annotations

from typing import Any

from tasktrain.data import sampler_generator
from tasktrain.loops.base import LoopContext
from tasktrain.loops.evaluation import EvaluationLoop, each_dataloader, limited, map_dataloaders
from tasktrain.rng import RngState

#: ``trainer.state.stage`` while the sanity check runs (``trainer.sanity_checking`` is then True).
SANITY_CHECK_STAGE = "sanity_check"


class SanityCheck:
    """Run ``num_steps`` validation batches (``-1``: the whole set) before the first training step.

    It catches a broken ``validation_step`` before an epoch of training is spent, and with
    ``-1`` gives the score of the untrained model (the HF Trainer's ``eval_on_start``). Training
    is bit-identical with and without it, because what it could change is put back:

    - the random generators (iterating a loader draws a seed; a ``validation_step`` may draw),
      the validation sampler's own generator included;
    - the metrics: nothing reaches the loggers, and ``callback_metrics`` is as before once it ends
      (hooks inside it see its values; ``metrics`` keeps them, e.g. the untrained model's
      ``val/loss``);
    - the loop counters: it has its own :class:`EvaluationLoop`, so the fit loop's (checkpointed)
      progress does not move.

    While it runs, ``trainer.state.stage`` is ``"sanity_check"`` (``trainer.sanity_checking``), so
    ``EarlyStopping``, ``ModelCheckpoint`` and monitored schedulers, which act on validation
    during ``"fit"``, ignore it.

    Example:
        >>> check = SanityCheck(num_steps=2)
        >>> check.val_loop.limit_batches
        2
    """

    def __init__(self, num_steps: int = 0, limit_val_batches: int | float | None = None) -> None:
        self.num_steps = num_steps
        self.limit_val_batches = limit_val_batches  # the fit's own cut comes first
        self.val_loop = EvaluationLoop("validate", None if num_steps == -1 else num_steps)
        self.metrics: dict[str, float] = {}  # what the last check computed (never logged)

    def run(self, ctx: LoopContext) -> dict[str, float]:
        """Validate on ``ctx.val_dataloader`` (nothing without one); return the metrics it computed."""
        loaders = ctx.val_dataloader
        if self.num_steps == 0 or loaders is None or self.limit_val_batches == 0:
            return {}
        generators = [sampler_generator(loader) for _, loader in each_dataloader(loaders)]
        rngs = [RngState.capture(generator) for generator in generators]  # the globals, and each sampler's
        stage = ctx.state.stage
        ctx.state.stage = SANITY_CHECK_STAGE
        try:
            with ctx.logs.muted():
                batches: Any = map_dataloaders(
                    loaders, lambda loader: limited(loader, self.limit_val_batches)
                )
                self.metrics = self.val_loop.run(ctx, batches)
                return self.metrics
        finally:
            ctx.state.stage = stage
            for rng, generator in zip(rngs, generators, strict=True):
                rng.restore(generator)
