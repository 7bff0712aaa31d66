"""``FSDP``: fully sharded data parallelism with FSDP2 (``fully_shard``).

Parameters, gradients and optimizer state are sharded over the ranks; each layer is gathered
just before it runs. Every step goes through the root module's ``forward`` so FSDP's hooks fire.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from datetime import timedelta
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.optim import Optimizer

from tasktrain.precision import Precision
from tasktrain.strategies.ddp import _StepRouter
from tasktrain.strategies.dtensor import DTensorCheckpointing, checked_layout, full_tensor, gradient_sync
from tasktrain.strategies.parallel import DEFAULT_TIMEOUT, ParallelStrategy


class FSDP(DTensorCheckpointing, ParallelStrategy):
    """Shard the module with FSDP2: each module of a class in ``shard_modules`` becomes its own unit.

    Args:
        shard_modules: module classes to shard separately (e.g. your transformer block); the rest
            of the model forms the root unit. Empty: one unit for the whole model.
        reshard_after_forward: free gathered parameters after forward (less memory, more communication).
        checkpoint: ``"sharded"``: every rank writes its own shards with ``torch.distributed.checkpoint``
            (nothing is gathered); ``"full"``: rank 0 writes the gathered weights as safetensors.
            Both load under any world size and any strategy.

    With ``precision="bf16-mixed"`` parameters are gathered in bfloat16 and gradients reduced in
    float32.

    Example:
        >>> import tasktrain as tt
        >>> trainer = tt.Trainer(strategy=FSDP(2, shard_modules=(Block,)))  # doctest: +SKIP
    """

    name = "fsdp"

    def __init__(
        self,
        num_processes: int = 1,
        accelerator: str = "auto",
        precision: Precision | None = None,
        timeout: float | timedelta = DEFAULT_TIMEOUT,
        shard_modules: Iterable[type[nn.Module]] = (),
        reshard_after_forward: bool = True,
        checkpoint: str = "sharded",
    ) -> None:
        super().__init__(num_processes, accelerator, precision, timeout)
        self.checkpoint = checked_layout("FSDP", checkpoint)
        self.shard_modules = tuple(shard_modules)
        self.reshard_after_forward = reshard_after_forward
        self.model: FSDPModule | None = None
        self.module: nn.Module | None = None

    def check_module(self, module: nn.Module) -> None:
        if _is_manual(module) and any(True for _ in module.parameters(recurse=False)):
            names = [name for name, _ in module.named_parameters(recurse=False)]
            raise ValueError(
                f"{type(module).__name__} has automatic_optimization = False and parameters of its own "
                f"({names[:5]}); under strategy 'fsdp' each submodule is sharded as its own unit in manual "
                "optimization, so put those parameters into a submodule"
            )

    def setup_module(self, module: nn.Module) -> nn.Module:
        self.module = module = self.precision.convert_module(module).to(self.root_device)
        policy = self._mixed_precision_policy()
        if _is_manual(module):
            # Manual optimization steps inside training_step: one root unit would gather the
            # parameters once for the whole step, so a step taken in the middle would not be seen by
            # the rest of it. Each child is its own unit instead, gathered at each of its forwards
            # (and reduce-scattered at each backward), and training_step runs outside any wrapper.
            self.model = None
            apply_fsdp_per_child(module, self.shard_modules, policy, self.reshard_after_forward)
            return module
        self.model = apply_fsdp(module, self.shard_modules, policy, self.reshard_after_forward)
        return module

    def _call_step(self, step: Callable[[Any, int], Any], batch: Any, batch_idx: int) -> Any:
        if self.model is None:  # manual optimization: the units' own hooks fire in each forward
            return step(batch, batch_idx)
        return self.model(step, batch, batch_idx)  # type: ignore[operator]

    def no_backward_sync(self, enabled: bool) -> AbstractContextManager[Any]:
        if self.model is None:  # manual optimization (no accumulation): every backward reduce-scatters
            return nullcontext()
        return gradient_sync(self.model, sync=not enabled)

    def clip_gradients(
        self, module: nn.Module, optimizer: Optimizer, value: float | None, algorithm: str = "norm"
    ) -> Tensor | None:
        return full_tensor(super().clip_gradients(module, optimizer, value, algorithm))

    def _mixed_precision_policy(self) -> MixedPrecisionPolicy:
        if self.precision.name == "bf16-mixed":
            return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        return MixedPrecisionPolicy()


def apply_fsdp_per_child(
    module: nn.Module,
    shard_modules: tuple[type[nn.Module], ...],
    policy: MixedPrecisionPolicy,
    reshard_after_forward: bool = True,
    mesh: DeviceMesh | None = None,
) -> list[FSDPModule]:
    """Shard each submodule of a ``shard_modules`` class, then each direct child that holds
    parameters, as its own unit (manual optimization: no root unit around the step)."""
    options: dict[str, Any] = {
        "mp_policy": policy,
        "reshard_after_forward": reshard_after_forward,
        "mesh": mesh,
    }
    for submodule in module.modules():
        if shard_modules and isinstance(submodule, shard_modules) and submodule is not module:
            fully_shard(submodule, **options)
    units = []
    for child in module.children():
        if any(True for _ in child.parameters()) and not isinstance(child, FSDPModule):
            units.append(fully_shard(child, **options))
    return units


def _is_manual(module: nn.Module) -> bool:
    from tasktrain.module import TaskModule

    return isinstance(module, TaskModule) and not module.automatic_optimization


def apply_fsdp(
    module: nn.Module,
    shard_modules: tuple[type[nn.Module], ...],
    policy: MixedPrecisionPolicy,
    reshard_after_forward: bool = True,
    mesh: DeviceMesh | None = None,
) -> FSDPModule:
    """Shard each submodule of a ``shard_modules`` class, then the rest under a step router.

    Returns the root FSDP unit, whose ``forward(step, batch, batch_idx)`` runs a module step.
    """
    options: dict[str, Any] = {
        "mp_policy": policy,
        "reshard_after_forward": reshard_after_forward,
        "mesh": mesh,
    }
    for submodule in module.modules():
        if shard_modules and isinstance(submodule, shard_modules):
            fully_shard(submodule, **options)
    router = _StepRouter(module)
    fully_shard(router, **options)
    return router  # type: ignore[return-value]  # fully_shard made it an FSDPModule
