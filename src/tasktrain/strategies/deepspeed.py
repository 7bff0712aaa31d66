"""``DeepSpeed``: ZeRO stages 1–3 through ``deepspeed.initialize``, with a config built from the Trainer.

deepspeed is imported only when this strategy sets up (it is an extra, and slow to import).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from datetime import timedelta
from typing import Any

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor, nn
from torch.optim import Optimizer

from tasktrain.precision import Precision
from tasktrain.strategies.ddp import _StepRouter
from tasktrain.strategies.parallel import DEFAULT_TIMEOUT, ParallelStrategy

_STAGES = (1, 2, 3)


class DeepSpeed(ParallelStrategy):
    """ZeRO data parallelism: optimizer state (1), gradients (2) and parameters (3) partitioned.

    The config is generated from the Trainer's arguments so they keep their meaning exactly:
    ``accumulate_grad_batches`` (the loops weight and bound each accumulation group; DeepSpeed
    never rescales the loss again), ``gradient_clip_val`` (none unless set; only ``"norm"``),
    and ``precision`` (``bf16-mixed``/``bf16-true`` → DeepSpeed bf16 with fp32 master weights).
    ``config`` (a dict or a JSON file) is merged over the generated one, key by key.

    Example:
        >>> import tasktrain as tt
        >>> trainer = tt.Trainer(strategy=DeepSpeed(2, stage=3))  # doctest: +SKIP
    """

    name = "deepspeed"

    def __init__(
        self,
        num_processes: int = 1,
        accelerator: str = "auto",
        precision: Precision | None = None,
        timeout: timedelta = DEFAULT_TIMEOUT,
        stage: int = 2,
        config: Mapping[str, Any] | str | None = None,
    ) -> None:
        if stage not in _STAGES:
            raise ValueError(f"DeepSpeed(stage={stage!r}): accepted values are {list(_STAGES)}")
        super().__init__(num_processes, accelerator, precision, timeout)
        self.stage = stage
        self.user_config = _read_config(config)
        self.accumulate_grad_batches = 1
        self.gradient_clip_val: float | None = None
        self.engine: Any = None
        self.module: nn.Module | None = None

    def configure(
        self, accumulate_grad_batches: int, gradient_clip_val: float | None, gradient_clip_algorithm: str
    ) -> None:
        """Take the Trainer's settings that DeepSpeed's config must carry."""
        if gradient_clip_val is not None and gradient_clip_algorithm != "norm":
            raise ValueError(
                f"Trainer(gradient_clip_algorithm={gradient_clip_algorithm!r}) with DeepSpeed: only 'norm' is supported"
            )
        self.accumulate_grad_batches = accumulate_grad_batches
        self.gradient_clip_val = gradient_clip_val

    def config(self) -> dict[str, Any]:
        """The DeepSpeed config: generated from the Trainer's arguments, the user's config merged over it."""
        bf16 = self.precision.name in ("bf16-mixed", "bf16-true")
        generated: dict[str, Any] = {
            "train_micro_batch_size_per_gpu": 1,  # only used by DeepSpeed's own logging here
            "gradient_accumulation_steps": self.accumulate_grad_batches,
            "gradient_clipping": float(self.gradient_clip_val or 0.0),
            "zero_optimization": {"stage": self.stage},
            "zero_allow_untested_optimizer": True,
            "bf16": {"enabled": bf16},
            "fp16": {"enabled": self.precision.name == "16-mixed"},
            "steps_per_print": 2**31 - 1,
        }
        return _merge(generated, self.user_config)

    def setup_environment(self) -> None:
        if self.precision.name == "16-mixed" and not (
            self.accelerator != "cpu" and torch.cuda.is_available()
        ):
            raise ValueError(
                "Trainer(precision='16-mixed') with DeepSpeed needs CUDA; on CPU use 'bf16-mixed' or '32-true'"
            )
        super().setup_environment()

    def setup_module(self, module: nn.Module) -> nn.Module:
        self.module = module.to(self.root_device)  # DeepSpeed converts precision itself, in setup_optimizer
        return self.module

    def setup_optimizer(self, optimizer: Optimizer) -> Optimizer:
        import deepspeed

        if self.module is None:
            raise RuntimeError("DeepSpeed.setup_optimizer() called before setup_module()")
        _skip_inference_comm_build()
        self.engine, ds_optimizer, _, _ = deepspeed.initialize(
            model=_StepRouter(self.module), optimizer=optimizer, config=self.config()
        )
        return ds_optimizer

    def batch_to_device(self, batch: Any) -> Any:
        batch = super().batch_to_device(batch)
        if self.config()["bf16"]["enabled"]:  # the engine holds bf16 weights
            batch = apply_to_collection(batch, Tensor, _to_bf16_if_float)
        return batch

    def forward_step(self, step: Callable[[Any, int], Any], batch: Any, batch_idx: int) -> Any:
        return self.engine(step, batch, batch_idx) if self.engine is not None else step(batch, batch_idx)

    def autocast(self) -> AbstractContextManager[Any]:
        return nullcontext()  # DeepSpeed runs the module in its own precision

    def no_backward_sync(self, enabled: bool) -> AbstractContextManager[Any]:
        # The loops decide where a group ends (the remainder group included), not DeepSpeed's counter.
        self.engine.set_gradient_accumulation_boundary(not enabled)
        return nullcontext()

    def backward(self, loss: Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)  # the loops already weighted the loss

    def clip_gradients(
        self, module: nn.Module, optimizer: Optimizer, value: float, algorithm: str
    ) -> Tensor | None:
        return None  # done inside engine.step() from the config's gradient_clipping

    def optimizer_step(self, optimizer: Optimizer) -> bool:
        self.engine.step()
        return bool(self.engine.was_step_applied())

    def module_state_dict(self, module: nn.Module) -> dict[str, Tensor]:
        if self.stage == 3:  # parameters are partitioned: gather them (rank 0 gets the full dict)
            gathered = self.engine._zero3_consolidated_16bit_state_dict() or {}
            return {k.removeprefix("module."): v for k, v in gathered.items()}
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}

    def sharded_state_dict(
        self, module: nn.Module, optimizer: Optimizer | None = None
    ) -> dict[str, Any] | None:
        return None  # ZeRO partitions are not DTensors: a sharded checkpoint loads here as full weights

    def optimizer_state_dict(self, module: nn.Module, optimizer: Optimizer) -> dict[str, Any] | None:
        return None  # partitioned ZeRO state is not saved yet: checkpoints hold weights, resume refuses


def _skip_inference_comm_build() -> None:
    """Stop DeepSpeed's comm backend from JIT-compiling its shared-memory all-reduce on CPU.

    That C++ op serves only inference all-reduce; training never calls it, and building it
    costs one to two minutes on a fresh machine. DeepSpeed consults this table before building.
    """
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        deepspeed.ops.__compatible_ops__[builder.NAME] = False


def _to_bf16_if_float(tensor: Tensor) -> Tensor:
    return tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor


def _read_config(config: Mapping[str, Any] | str | None) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, str):
        with open(config) as f:
            loaded: dict[str, Any] = json.load(f)
        return loaded
    return dict(config)


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = (
            _merge(merged[key], value)
            if isinstance(value, Mapping) and isinstance(merged.get(key), dict)
            else value
        )
    return merged
