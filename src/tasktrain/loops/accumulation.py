"""``AccumulationLoop``: forward and backward for every micro-batch of one optimizer step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from lightning_utilities.core.overrides import is_overridden
from torch import Tensor

from tasktrain.log_buffer import batch_size_of
from tasktrain.loops.base import Loop, LoopContext
from tasktrain.module import TaskModule
from tasktrain.state import Progress
from tasktrain.totals import NonFiniteLossError as NonFiniteLossError  # re-exported by tasktrain.loops

NONFINITE_POLICIES = ("raise", "skip")
_NO_ITEMS: Any = object()  # the weight of a micro-batch that holds no loss items: it is skipped


def _as_int(count: Any) -> int | None:
    """A count as a Python int when that needs no device sync (an int, or a CPU tensor)."""
    if isinstance(count, int):
        return count
    if isinstance(count, Tensor) and count.device.type == "cpu":
        return int(count)
    return None


class AccumulationLoop(Loop):
    """Run one accumulation group (``accumulate_grad_batches`` micro-batches, fewer at epoch end).

    Every micro-batch's loss is weighted so the accumulated gradient equals the gradient of one
    big batch: by its share of the group's items when ``count_items`` returns numbers (totals
    reduced over all data-parallel ranks), else by ``1 / len(group)``. Gradient sync is skipped on
    all but the last micro-batch.

    Args:
        on_nonfinite_loss: ``"raise"`` (stop, naming the first bad step; losses stay on the device
            and are checked on logging steps, saves and epoch ends) or ``"skip"`` (drop the step;
            one host read per optimizer step).

    Example:
        >>> loop = AccumulationLoop(on_nonfinite_loss="skip")
        >>> loop.progress.total.completed
        0
    """

    def __init__(self, on_nonfinite_loss: str = "raise") -> None:
        if on_nonfinite_loss not in NONFINITE_POLICIES:
            raise ValueError(
                f"on_nonfinite_loss={on_nonfinite_loss!r}: accepted values are {list(NONFINITE_POLICIES)}"
            )
        self.on_nonfinite_loss = on_nonfinite_loss
        self.progress = Progress()  # one item per micro-batch; ``current`` is this group
        self._counts_items_cache: tuple[TaskModule[Any], bool] | None = None
        self._source_cache: tuple[TaskModule[Any], str] | None = None

    def run(self, ctx: LoopContext, group: Sequence[tuple[int, Any]]) -> Tensor | None:
        """Forward and backward every ``(batch_idx, batch)`` of ``group``.

        Returns:
            The group's loss (the weighted sum of micro-batch losses, detached), or None when a
            non-finite loss made the step be skipped.
        """
        module, strategy, hooks = ctx.module, ctx.strategy, ctx.hooks
        self.progress.reset_current()
        weights = self._loss_weights(ctx, group)
        last = len(group) - 1
        parts: list[Tensor] = []
        losses: list[Tensor] = []
        for i, (batch_idx, batch) in enumerate(group):
            self.progress.start()
            ctx.totals.samples.add(batch_size_of(batch))
            if (
                weights is not None and weights[i] is _NO_ITEMS
            ):  # nothing to learn; a mean over 0 items is NaN
                self.progress.finish()
                continue
            ctx.logs.current_batch = batch  # epoch values logged in training_step are weighted by its size
            hooks.call("on_train_batch_start", batch, batch_idx)
            with strategy.no_backward_sync(i < last):
                outputs = strategy.forward_step(module.training_step, batch, batch_idx)
                loss = self._loss_of(outputs, ctx, i, len(group), batch_idx)
                if self.on_nonfinite_loss == "skip":
                    losses.append(loss.detach())
                else:  # no sync: checked where one happens anyway (logging, saving, epoch end)
                    ctx.totals.nonfinite.note(
                        loss, self._source(ctx.module), ctx.state.global_step, i, len(group), batch_idx
                    )
                weighted = loss if weights is None else loss * weights[i]
                hooks.call("on_before_backward", weighted)
                strategy.backward(weighted)
            hooks.call("on_after_backward")
            hooks.call("on_train_batch_end", outputs, batch, batch_idx)
            parts.append(weighted.detach())
            self.progress.finish()
        if losses and strategy.any_rank(
            ~torch.isfinite(torch.stack(losses)).all()
        ):  # all ranks skip together
            return None  # host sync ("skip" only): one per optimizer step
        if not parts:  # every micro-batch had zero items: no update
            return None
        return parts[0] if len(parts) == 1 else torch.stack(parts).sum()

    def _loss_weights(self, ctx: LoopContext, group: Sequence[tuple[int, Any]]) -> list[Any] | None:
        counts = (
            [ctx.module.count_items(batch) for _, batch in group] if self.counts_items(ctx.module) else None
        )
        if counts is None or any(c is None for c in counts):
            return None if len(group) == 1 else [1.0 / len(group)] * len(group)
        dp_size = ctx.strategy.data_parallel_size
        ints = [n for n in map(_as_int, counts) if n is not None]
        if dp_size == 1 and len(ints) == len(counts):  # plain numbers: no tensor work, no sync
            total = sum(ints)
            ctx.totals.items.add(total)
            return [n / total if n else _NO_ITEMS for n in ints]
        device = ctx.strategy.root_device
        local = torch.stack([torch.as_tensor(c, device=device).to(torch.int64).reshape(()) for c in counts])
        local_total = local.sum()
        ctx.totals.items.add(local_total)
        # Gradients are averaged over the data-parallel ranks: a weight of dp * share undoes that.
        global_total = ctx.strategy.reduce(local_total, "sum", data_parallel=True)
        return list((local * dp_size / global_total).float().unbind())

    def counts_items(self, module: TaskModule[Any]) -> bool:
        """Whether ``module`` defines ``count_items`` (worked out once per module)."""
        cached = self._counts_items_cache
        if cached is None or cached[0] is not module:
            cached = self._counts_items_cache = (
                module,
                is_overridden("count_items", module, parent=TaskModule),
            )
        return cached[1]

    def _loss_of(self, outputs: Any, ctx: LoopContext, i: int, n: int, batch_idx: int) -> Tensor:
        loss = outputs
        if isinstance(outputs, Tensor) and outputs.ndim == 0:  # the usual case first: the ABC check is slower
            return outputs
        if isinstance(outputs, Mapping):
            loss = outputs.get("loss")
        elif isinstance(outputs, tuple) and outputs:
            loss = outputs[0]
        if isinstance(loss, Tensor) and loss.ndim == 0:
            return loss
        got = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else type(outputs).__name__
        raise TypeError(
            f"{_loss_hook(ctx.module)} must return a scalar loss tensor, (loss, outputs) or a mapping with key "
            f"'loss'; got {got} at step {ctx.state.global_step} (micro-batch {i + 1} of {n}, batch_idx {batch_idx})"
        )

    def _source(self, module: TaskModule[Any]) -> str:
        """``Class.hook`` that returned the loss, for messages (worked out once per module)."""
        cached = self._source_cache
        if cached is None or cached[0] is not module:
            cached = self._source_cache = (module, _loss_hook(module))
        return cached[1]


def _loss_hook(module: TaskModule[Any]) -> str:
    name = "training_step" if is_overridden("training_step", module, parent=TaskModule) else "compute_loss"
    return f"{type(module).__name__}.{name}"
