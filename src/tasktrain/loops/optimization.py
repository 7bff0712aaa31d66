"""``OptimizationStep``: one optimizer step once an accumulation group's gradients are complete."""

from __future__ import annotations

from tasktrain.loops.base import Loop, LoopContext
from tasktrain.state import Progress


class OptimizationStep(Loop):
    """Unscale, clip, ``on_before_optimizer_step``, step, scheduler, ``on_before_zero_grad``, zero_grad.

    Args:
        gradient_clip_val: clip threshold, or None: the module's ``default_gradient_clip_val``
            (None for most modules: no clipping).
        gradient_clip_algorithm: ``"norm"`` (total 2-norm) or ``"value"`` (element-wise).

    Example:
        >>> step = OptimizationStep(gradient_clip_val=1.0)
        >>> step.progress.total.completed
        0
    """

    def __init__(self, gradient_clip_val: float | None = None, gradient_clip_algorithm: str = "norm") -> None:
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = gradient_clip_algorithm
        self.progress = Progress()  # one item per optimizer step, taken or skipped
        self.skipped = Progress()  # steps skipped for non-finite loss or gradients

    def run(self, ctx: LoopContext, skip: bool = False) -> bool:
        """Finish the step whose gradients are accumulated; return whether the optimizer stepped.

        ``skip`` (a non-finite loss under ``on_nonfinite_loss="skip"``) discards the gradients.
        """
        assert ctx.optim is not None
        optimizer, strategy, hooks = ctx.optim.optimizer, ctx.strategy, ctx.hooks
        self.progress.start()
        stepped = False
        if not skip:
            # Unscaled (and clipped when asked) first, so hooks see the true gradients.
            clip = self.gradient_clip_val
            if clip is None:
                clip, algorithm = ctx.module.default_gradient_clip_val, "norm"
            else:
                algorithm = self.gradient_clip_algorithm
            strategy.clip_gradients(ctx.module, optimizer, clip, algorithm)
            hooks.call("on_before_optimizer_step", optimizer)
            stepped = strategy.optimizer_step(optimizer)
        if stepped:
            ctx.optim.after_optimizer_step(self.progress.total.started - self.skipped.total.completed)
        else:
            self.skipped.start()
            self.skipped.finish()
        hooks.call("on_before_zero_grad", optimizer)
        optimizer.zero_grad(set_to_none=True)
        self.progress.finish()
        ctx.state.global_step += 1
        return stepped
