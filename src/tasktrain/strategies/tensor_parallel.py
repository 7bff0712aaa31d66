"""``TensorParallel``: the module's own tensor-parallel plan, optionally FSDP-sharded on a 2-D mesh."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from lightning_utilities.core.apply_func import apply_to_collection
from lightning_utilities.core.overrides import is_overridden
from torch import Tensor, nn
from torch.distributed._functional_collectives import AsyncCollectiveTensor
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy
from torch.distributed.tensor import DTensor
from torch.optim import Optimizer

from tasktrain.precision import Precision
from tasktrain.strategies.dtensor import DTensorCheckpointing, checked_layout, full_tensor, gradient_sync
from tasktrain.strategies.fsdp import _is_manual, apply_fsdp, apply_fsdp_per_child
from tasktrain.strategies.parallel import DEFAULT_TIMEOUT, ParallelStrategy


class TensorParallel(DTensorCheckpointing, ParallelStrategy):
    """Split layers across ``tp_size`` ranks with the plan in ``TaskModule.parallelize(mesh)``.

    The ranks form a ``(dp, tp)`` mesh with ``dp = world_size // tp_size``. Ranks of one TP group
    see the same batches; with ``dp > 1`` the model is also FSDP-sharded over the ``dp`` dimension
    (FSDP × TP). ``tp_size`` defaults to every rank (pure tensor parallelism). ``checkpoint``:
    ``"sharded"`` (each rank writes its shards with ``torch.distributed.checkpoint``) or
    ``"full"`` (rank 0 writes gathered safetensors weights); see :class:`~tasktrain.strategies.FSDP`.

    Example:
        >>> class Net(tt.TaskModule):  # doctest: +SKIP
        ...     def parallelize(self, mesh):
        ...         parallelize_module(self.mlp, mesh, {"up": ColwiseParallel(), "down": RowwiseParallel()})
        >>> trainer = tt.Trainer(strategy=TensorParallel(4, tp_size=2))  # doctest: +SKIP
    """

    name = "tp"

    def __init__(
        self,
        num_processes: int = 1,
        accelerator: str = "auto",
        precision: Precision | None = None,
        timeout: float | timedelta = DEFAULT_TIMEOUT,
        tp_size: int | None = None,
        checkpoint: str = "sharded",
    ) -> None:
        super().__init__(num_processes, accelerator, precision, timeout)
        self.checkpoint = checked_layout("TensorParallel", checkpoint)
        self.tp_size = tp_size
        self.mesh: DeviceMesh | None = None
        self.module: nn.Module | None = None
        self.model: FSDPModule | None = None  # the FSDP root when dp > 1

    @property
    def tensor_parallel_size(self) -> int:
        size = self.tp_size or self.world_size
        if self.world_size % size:
            raise ValueError(f"TensorParallel(tp_size={size}) must divide the world size {self.world_size}")
        return size

    @property
    def data_parallel_size(self) -> int:
        return self.world_size // self.tensor_parallel_size

    @property
    def data_parallel_rank(self) -> int:
        return self.global_rank // self.tensor_parallel_size

    def check_module(self, module: nn.Module) -> None:
        from tasktrain.module import TaskModule

        if _is_manual(module) and any(True for _ in module.parameters(recurse=False)):
            names = [name for name, _ in module.named_parameters(recurse=False)]
            raise ValueError(
                f"{type(module).__name__} has automatic_optimization = False and parameters of its own "
                f"({names[:5]}); under strategy 'tp' each submodule is sharded as its own FSDP unit over the "
                "data-parallel ranks in manual optimization, so put those parameters into a submodule"
            )
        if isinstance(module, TaskModule) and not is_overridden("parallelize", module, parent=TaskModule):
            raise ValueError(
                f"strategy='tp' needs {type(module).__name__}.parallelize(mesh) to apply the tensor-parallel plan "
                "(e.g. with torch.distributed.tensor.parallel.parallelize_module)"
            )

    def setup_environment(self) -> None:
        super().setup_environment()
        shape = (self.data_parallel_size, self.tensor_parallel_size)
        self.mesh = init_device_mesh(self.root_device.type, shape, mesh_dim_names=("dp", "tp"))

    def setup_module(self, module: nn.Module) -> nn.Module:
        assert self.mesh is not None
        self.check_module(module)
        self.module = module = self.precision.convert_module(module).to(self.root_device)
        module.parallelize(self.mesh["tp"])  # type: ignore[operator]
        if self.data_parallel_size > 1 and _is_manual(module):  # no root unit around the step: see FSDP
            apply_fsdp_per_child(module, (), MixedPrecisionPolicy(), mesh=self.mesh["dp"])
        elif self.data_parallel_size > 1:
            self.model = apply_fsdp(module, (), MixedPrecisionPolicy(), mesh=self.mesh["dp"])
        return module

    def _data_parallel_group(self) -> dist.ProcessGroup | None:
        assert self.mesh is not None
        return self.mesh["dp"].get_group()

    def _call_step(self, step: Callable[[Any, int], Any], batch: Any, batch_idx: int) -> Any:
        outputs = self.model(step, batch, batch_idx) if self.model is not None else step(batch, batch_idx)  # type: ignore[operator]
        if torch.is_grad_enabled():
            return outputs
        # Evaluation outputs of a tensor-parallel layer are AsyncCollectiveTensors whose all-reduce may
        # still be in flight; gathering predictions pickles them, which reads the buffer without waiting.
        return apply_to_collection(outputs, AsyncCollectiveTensor, _wait)

    def no_backward_sync(self, enabled: bool) -> AbstractContextManager[Any]:
        return gradient_sync(self.model, sync=not enabled) if self.model is not None else nullcontext()

    def clip_gradients(
        self, module: nn.Module, optimizer: Optimizer, value: float | None, algorithm: str = "norm"
    ) -> Tensor | None:
        """Clip like the base strategy; by norm, also when only some parameters are split (DTensors)
        and the rest replicated plain tensors, as in a transformers model with its TP plan."""
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        sharded = [g for g in grads if isinstance(g, DTensor)]
        if value is None or algorithm != "norm" or not sharded or len(sharded) == len(grads):
            return full_tensor(super().clip_gradients(module, optimizer, value, algorithm))
        self.precision.unscale_gradients(optimizer)
        plain = [g for g in grads if not isinstance(g, DTensor)]
        sharded_norm = full_tensor(torch.nn.utils.get_total_norm(sharded))  # a collective over the TP group
        assert sharded_norm is not None
        total = torch.linalg.vector_norm(torch.stack([sharded_norm, torch.nn.utils.get_total_norm(plain)]))
        coefficient = torch.clamp(value / (total + 1e-6), max=1.0)  # as clip_grad_norm_ computes it
        for grad in plain:
            grad.mul_(coefficient)
        for grad in sharded:
            grad.to_local().mul_(coefficient)  # the local shard is the DTensor's storage
        return total


def _wait(tensor: AsyncCollectiveTensor) -> Tensor:
    return tensor.wait()
