"""``PredictionLoop``: ``predict_step`` over a dataloader, outputs collected in order."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from tasktrain.loops.base import Loop, LoopContext
from tasktrain.loops.evaluation import limited
from tasktrain.state import Progress


class PredictionLoop(Loop):
    """Collect ``predict_step`` outputs for every batch, in eval mode under ``torch.no_grad()``.

    Example:
        >>> loop = PredictionLoop(limit_batches=2)
        >>> loop.batch_progress.total.completed
        0
    """

    def __init__(self, limit_batches: int | float | None = None) -> None:
        self.limit_batches = limit_batches
        self.batch_progress = Progress()

    def run(self, ctx: LoopContext, dataloader: Iterable[Any]) -> list[Any]:
        module, strategy, hooks = ctx.module, ctx.strategy, ctx.hooks
        was_training = module.training
        module.eval()
        outputs: list[Any] = []
        self.batch_progress.reset_current()
        hooks.call("on_predict_start")
        hooks.call("on_predict_epoch_start")
        try:
            with torch.no_grad():
                for batch_idx, batch in enumerate(limited(dataloader, self.limit_batches)):
                    self.batch_progress.start()
                    batch = strategy.batch_to_device(batch)
                    hooks.call("on_predict_batch_start", batch, batch_idx)
                    out = strategy.forward_step(module.predict_step, batch, batch_idx)
                    hooks.call("on_predict_batch_end", out, batch, batch_idx)
                    outputs.append(out)
                    self.batch_progress.finish()
            hooks.call("on_predict_epoch_end")
            hooks.call("on_predict_end")
        finally:
            module.train(was_training)
        return outputs
