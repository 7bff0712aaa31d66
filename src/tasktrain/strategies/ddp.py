"""``DDP``: data parallelism with ``DistributedDataParallel``, one full model copy per process."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import timedelta
from typing import Any

import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer

from tasktrain.precision import Precision
from tasktrain.strategies.parallel import DEFAULT_TIMEOUT, ParallelStrategy


class _StepRouter(nn.Module):
    """Lets a wrapper's ``forward`` run any module step, so DDP's forward hooks see every step."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, step: Callable[[Any, int], Any], batch: Any, batch_idx: int) -> Any:
        return step(batch, batch_idx)


class DDP(ParallelStrategy):
    """Each rank holds the whole model and a disjoint shard of the data; gradients are averaged.

    Gradient sync is skipped (``no_sync``) on all but the last micro-batch of an accumulation
    group. ``timeout`` (seconds or a ``timedelta``) bounds every collective; extra keyword
    arguments go to ``DistributedDataParallel``.

    Example:
        >>> import tasktrain as tt
        >>> trainer = tt.Trainer(strategy="ddp", devices=2)  # doctest: +SKIP
    """

    name = "ddp"

    def __init__(
        self,
        num_processes: int = 1,
        accelerator: str = "auto",
        precision: Precision | None = None,
        timeout: float | timedelta = DEFAULT_TIMEOUT,
        **ddp_kwargs: Any,
    ) -> None:
        super().__init__(num_processes, accelerator, precision, timeout)
        self.ddp_kwargs = ddp_kwargs
        self.model: DistributedDataParallel | None = None

    def setup_module(self, module: nn.Module) -> nn.Module:
        module = super().setup_module(module)
        device_ids = [self.root_device.index] if self.root_device.type == "cuda" else None
        self.model = DistributedDataParallel(_StepRouter(module), device_ids=device_ids, **self.ddp_kwargs)
        return module

    def teardown(self) -> None:
        self.model = None  # the wrapper's reducer holds the process group: it goes first
        super().teardown()

    def _call_step(self, step: Callable[[Any, int], Any], batch: Any, batch_idx: int) -> Any:
        assert self.model is not None
        if not self.model.module.module.training:  # evaluation: no gradients, no DDP bookkeeping
            return step(batch, batch_idx)
        return self.model(step, batch, batch_idx)

    def no_backward_sync(self, enabled: bool) -> AbstractContextManager[Any]:
        return self.model.no_sync() if enabled and self.model is not None else nullcontext()

    def manual_optimization(self) -> AbstractContextManager[Any]:
        # DDP's reducer expects one backward per forward; a manual training_step may run several
        # (a GAN: the discriminator's, then the generator's). So backward never syncs here and each
        # optimizer averages its own gradients when it steps (sync_gradients).
        return self.no_backward_sync(True)

    def sync_gradients(self, optimizer: Optimizer) -> None:
        """Average ``optimizer``'s gradients over the ranks: one all-reduce of them flattened (a collective)."""
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        for grad, synced in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
            grad.copy_(synced)
