"""``FSDP``: fully sharded data parallelism with FSDP2 (``fully_shard``).

Parameters, gradients and optimizer state are sharded over the ranks; each layer is gathered
just before it runs. Every step goes through the root module's ``forward`` so FSDP's hooks fire.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.optim import Optimizer

from tasktrain.precision import Precision
from tasktrain.strategies.ddp import _StepRouter
from tasktrain.strategies.parallel import ParallelStrategy

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


class FSDP(ParallelStrategy):
    """Shard the module with FSDP2: each module of a class in ``shard_modules`` becomes its own unit.

    Args:
        shard_modules: module classes to shard separately (e.g. your transformer block); the rest
            of the model forms the root unit. Empty: one unit for the whole model.
        reshard_after_forward: free gathered parameters after forward (less memory, more communication).

    With ``precision="bf16-mixed"`` parameters are gathered in bfloat16 and gradients reduced in
    float32. Checkpoints hold full (gathered) weights, so they load under any world size.

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
        shard_modules: Iterable[type[nn.Module]] = (),
        reshard_after_forward: bool = True,
    ) -> None:
        super().__init__(num_processes, accelerator, precision)
        self.shard_modules = tuple(shard_modules)
        self.reshard_after_forward = reshard_after_forward
        self.model: FSDPModule | None = None

    def setup_module(self, module: nn.Module) -> nn.Module:
        module = self.precision.convert_module(module).to(self.root_device)
        policy = self._mixed_precision_policy()
        for submodule in module.modules():
            if self.shard_modules and isinstance(submodule, self.shard_modules):
                fully_shard(submodule, mp_policy=policy, reshard_after_forward=self.reshard_after_forward)
        router = _StepRouter(module)
        fully_shard(router, mp_policy=policy, reshard_after_forward=self.reshard_after_forward)
        self.model = router  # type: ignore[assignment]  # fully_shard turned the router into an FSDPModule
        return module

    def forward_step(self, step: Callable[[Any, int], Any], batch: Any, batch_idx: int) -> Any:
        assert self.model is not None
        return self.model(step, batch, batch_idx)  # type: ignore[operator]

    def no_backward_sync(self, enabled: bool) -> AbstractContextManager[Any]:
        return self._gradient_sync(not enabled)

    @contextmanager
    def _gradient_sync(self, sync: bool) -> Any:
        assert self.model is not None
        if sync:
            yield
            return
        self.model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self.model.set_requires_gradient_sync(True)

    def clip_gradients(
        self, module: nn.Module, optimizer: Optimizer, value: float, algorithm: str
    ) -> Tensor | None:
        norm = super().clip_gradients(module, optimizer, value, algorithm)
        full = getattr(norm, "full_tensor", None)  # the norm of sharded gradients is a DTensor
        return full() if callable(full) else norm

    # -- checkpoints: full tensors, gathered (every rank must call these) -------------------------
    def module_state_dict(self, module: nn.Module) -> dict[str, Tensor]:
        return get_model_state_dict(module, options=_FULL)  # type: ignore[return-value]  # tensors only, no nested dicts

    def optimizer_state_dict(self, optimizer: Optimizer) -> dict[str, Any] | None:
        assert self.model is not None
        return get_optimizer_state_dict(self.model, optimizer, options=_FULL)  # type: ignore[arg-type]

    def load_module_state_dict(self, module: nn.Module, weights: dict[str, Tensor]) -> None:
        set_model_state_dict(module, dict(weights), options=StateDictOptions(full_state_dict=True))

    def load_optimizer_state_dict(self, optimizer: Optimizer, state: dict[str, Any]) -> None:
        assert self.model is not None
        set_optimizer_state_dict(
            self.model,  # type: ignore[arg-type]
            optimizer,
            state,
            options=StateDictOptions(full_state_dict=True),
        )

    def _mixed_precision_policy(self) -> MixedPrecisionPolicy:
        if self.precision.name == "bf16-mixed":
            return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        return MixedPrecisionPolicy()
