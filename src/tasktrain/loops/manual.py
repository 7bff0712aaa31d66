"""``ManualOptimization``: the user steps the optimizers in ``training_step`` (``automatic_optimization = False``).

It takes the place of ``AccumulationLoop`` + ``OptimizationStep`` inside the ``EpochLoop``: one
batch, one ``training_step`` call, ``global_step += 1``, however many optimizers stepped. The
optimizers the module sees (``self.optimizers()``) are :class:`ManualOptimizer` handles whose
``step()`` and ``zero_grad()`` go through the strategy and its precision plugin, so a 16-mixed
step with inf gradients is skipped, DeepSpeed's engine steps, and data-parallel gradients are
averaged before the step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from torch import Tensor

from tasktrain.log_buffer import batch_size_of
from tasktrain.loops.base import Loop, LoopContext
from tasktrain.state import Progress

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from tasktrain.optim import SchedulerConfig

Group = list[tuple[int, Any]]


class ManualOptimizer:
    """What ``self.optimizers()`` returns in manual optimization: an optimizer whose step goes
    through the strategy.

    ``step()`` averages the gradients over data-parallel ranks where the strategy left that to
    the step (DDP), unscales them (16-mixed), calls ``on_before_optimizer_step``, steps through
    the precision plugin (skipped on inf/NaN gradients under 16-mixed) and then advances the
    optimizer's ``interval="step"`` schedulers if it stepped. ``zero_grad()`` calls
    ``on_before_zero_grad`` first. Every other attribute (``param_groups``, ``state``, ...) is
    the wrapped optimizer's.

    Example:
        >>> def training_step(self, batch, batch_idx):  # doctest: +SKIP
        ...     opt = self.optimizers()
        ...     opt.zero_grad()
        ...     self.manual_backward(self.compute_loss(batch))
        ...     opt.step()
    """

    def __init__(self, optimizer: Optimizer, index: int, loop: ManualOptimization, ctx: LoopContext) -> None:
        self.optimizer = optimizer
        self.index = index
        self._loop = loop
        self._ctx = ctx
        self._synced = False  # this step's gradients already averaged over the ranks

    def __getattr__(self, name: str) -> Any:  # only called for what this class does not define
        try:
            optimizer = self.__dict__["optimizer"]
        except KeyError:  # during unpickling or copying
            raise AttributeError(name) from None
        return getattr(optimizer, name)

    def __repr__(self) -> str:
        return f"ManualOptimizer({self.optimizer!r})"

    def sync_gradients(self) -> None:
        """Average this optimizer's gradients over the data-parallel ranks (once per step; a collective under DDP)."""
        if not self._synced:
            self._ctx.strategy.sync_gradients(self.optimizer)
            self._synced = True

    def clip_gradients(
        self, gradient_clip_val: float | None, gradient_clip_algorithm: str = "norm"
    ) -> Tensor | None:
        """Unscale (16-mixed) and clip this optimizer's gradients; the norm before clipping with ``"norm"``."""
        self.sync_gradients()
        return self._ctx.strategy.clip_gradients(
            self._ctx.module, self.optimizer, gradient_clip_val, gradient_clip_algorithm
        )

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Step through the strategy; returns what ``closure`` returned (it runs first, when given)."""
        result = closure() if closure is not None else None
        ctx = self._ctx
        self.clip_gradients(None)  # averaged over the ranks and unscaled: hooks see the true gradients
        ctx.hooks.call("on_before_optimizer_step", self.optimizer)
        stepped = ctx.strategy.optimizer_step(self.optimizer)
        self._synced = False
        self._loop.optimizer_stepped(ctx, self.index, stepped)
        return result

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._ctx.hooks.call("on_before_zero_grad", self.optimizer)
        self.optimizer.zero_grad(set_to_none=set_to_none)
        self._synced = False


class ManualOptimization(Loop):
    """One ``training_step`` per batch, in which the user steps the optimizers.

    Its state is the number of batches run (``progress``) and, per optimizer, the steps it took
    and skipped (``optimizer_steps``, ``skipped_steps``): a ``frequency`` of a per-step scheduler
    counts its optimizer's steps, across a resume too.

    Example:
        >>> loop = ManualOptimization()
        >>> loop.progress.total.completed, loop.optimizer_steps
        (0, [])
    """

    def __init__(self) -> None:
        self.progress = Progress()  # one item per training_step call (= global_step)
        self.optimizer_steps: list[int] = []  # steps taken, per optimizer (by position)
        self.skipped_steps: list[int] = []  # steps skipped for non-finite gradients, per optimizer
        self._handles: list[ManualOptimizer] = []
        self._bound_to: tuple[Any, ...] | None = None

    def attach(self, ctx: LoopContext) -> None:
        """Give the module its optimizer handles for this fit (``self.optimizers()``)."""
        assert ctx.optim is not None
        key = (ctx.module, ctx.optim, ctx.strategy)
        if self._bound_to != key:
            optimizers = ctx.optim.optimizers
            self._handles = [ManualOptimizer(opt, i, self, ctx) for i, opt in enumerate(optimizers)]
            if len(self.optimizer_steps) != len(optimizers):  # a fresh run (a resumed one loaded them)
                self.optimizer_steps = [0] * len(optimizers)
                self.skipped_steps = [0] * len(optimizers)
            self._bound_to = key
        ctx.module._manual_optimization = _ManualStep(self._handles, ctx)

    def run(self, ctx: LoopContext, group: Group) -> Tensor | None:
        """Run ``training_step`` on the one batch of ``group``; return its loss (detached) if it returned one."""
        ((batch_idx, batch),) = group
        module, strategy, hooks = ctx.module, ctx.strategy, ctx.hooks
        self.progress.start()
        ctx.totals.samples.add(batch_size_of(batch))
        ctx.logs.current_batch = batch
        hooks.call("on_train_batch_start", batch, batch_idx)
        with strategy.manual_optimization():  # DDP: no sync in backward; each step averages its own
            outputs = strategy.forward_step(module.training_step, batch, batch_idx)
        hooks.call("on_train_batch_end", outputs, batch, batch_idx)
        self.progress.finish()
        ctx.state.global_step += 1
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        return loss.detach() if isinstance(loss, Tensor) and loss.ndim == 0 else None

    def optimizer_stepped(self, ctx: LoopContext, index: int, stepped: bool) -> None:
        """Optimizer ``index`` stepped (or its step was skipped): its per-step schedulers follow."""
        assert ctx.optim is not None
        if stepped:
            self.optimizer_steps[index] += 1
            ctx.optim.after_optimizer_step(self.optimizer_steps[index], index)
        else:
            self.skipped_steps[index] += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "optimizer_steps": list(self.optimizer_steps),
            "skipped_steps": list(self.skipped_steps),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.optimizer_steps = [int(n) for n in state.get("optimizer_steps", [])]
        self.skipped_steps = [int(n) for n in state.get("skipped_steps", [])]
        self._bound_to = None


class _ManualStep:
    """What a module in manual optimization reaches through its methods (bound by :meth:`ManualOptimization.attach`)."""

    def __init__(self, handles: list[ManualOptimizer], ctx: LoopContext) -> None:
        self.handles = handles
        self.ctx = ctx

    @property
    def schedulers(self) -> list[SchedulerConfig]:
        assert self.ctx.optim is not None
        return self.ctx.optim.schedulers

    def backward(self, loss: Tensor) -> None:
        hooks = self.ctx.hooks
        hooks.call("on_before_backward", loss)
        self.ctx.strategy.backward(loss)
        hooks.call("on_after_backward")

    def handle(self, optimizer: Any) -> ManualOptimizer:
        """The handle of ``optimizer`` (a handle, or the optimizer it wraps)."""
        for handle in self.handles:
            if optimizer is handle or optimizer is handle.optimizer:
                return handle
        raise ValueError(
            f"{type(optimizer).__name__} is not one of this module's optimizers; pass one that self.optimizers() returned"
        )
