"""``DeepSpeed``: ZeRO stages 1–3 through ``deepspeed.initialize``, with a config built from the Trainer.

deepspeed is imported only when this strategy sets up (it is an extra, and slow to import).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import timedelta
from typing import Any

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor, nn
from torch.optim import Optimizer

from tasktrain.precision import Precision
from tasktrain.strategies.base import ModelState
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
        timeout: float | timedelta = DEFAULT_TIMEOUT,
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
        self._param_groups: list[list[int]] = []  # ids of the parameters of each optimizer group

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

    def setup_optimizers(self, optimizers: Sequence[Optimizer]) -> list[Optimizer]:
        if len(optimizers) != 1:
            raise ValueError(
                f"DeepSpeed runs one optimizer inside its engine; configure_optimizers() returned {len(optimizers)}. "
                "Use strategy 'ddp' or 'fsdp' for several optimizers"
            )
        return super().setup_optimizers(optimizers)

    def setup_optimizer(self, optimizer: Optimizer) -> Optimizer:
        import deepspeed

        if self.module is None:
            raise RuntimeError("DeepSpeed.setup_optimizer() called before setup_module()")
        _skip_inference_comm_build()
        self._param_groups = [[id(p) for p in group["params"]] for group in optimizer.param_groups]
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
        # No autocast: DeepSpeed runs the module in its own precision.
        return self.engine(step, batch, batch_idx) if self.engine is not None else step(batch, batch_idx)

    def no_backward_sync(self, enabled: bool) -> AbstractContextManager[Any]:
        # The loops decide where a group ends (the remainder group included), not DeepSpeed's counter.
        self.engine.set_gradient_accumulation_boundary(not enabled)
        return nullcontext()

    def backward(self, loss: Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)  # the loops already weighted the loss

    def clip_gradients(
        self, module: nn.Module, optimizer: Optimizer, value: float | None, algorithm: str = "norm"
    ) -> Tensor | None:
        return None  # done inside engine.step() from the config's gradient_clipping

    def optimizer_step(self, optimizer: Optimizer) -> bool:
        self.engine.step()
        return bool(self.engine.was_step_applied())

    # -- checkpoints: full tensors keyed by parameter name, as every other strategy saves them, so a
    # DeepSpeed checkpoint resumes under DDP or FSDP and the other way round. The ZeRO partitions
    # are assembled with DeepSpeed's safe_get_full_* helpers (all-reduces: every rank calls them).
    def get_state(
        self, module: nn.Module, optimizers: Sequence[Optimizer] = (), sharded: bool | None = None
    ) -> ModelState | None:
        if sharded:
            return None  # ZeRO partitions are not DTensors: a sharded checkpoint loads here as full weights
        return ModelState(
            model=self._full_weights(module),
            optimizers=[self._full_optimizer_state(module, opt) for opt in optimizers],
        )

    def set_state(self, module: nn.Module, optimizers: Sequence[Optimizer], state: ModelState) -> None:
        self._load_full_weights(module, state.model)
        for optimizer, saved in zip(optimizers, state.optimizers, strict=True):
            self._load_full_optimizer_state(module, optimizer, saved)

    def _full_weights(self, module: nn.Module) -> dict[str, Tensor]:
        """The full weights; trainable parameters as DeepSpeed's fp32 master copies (exact under bf16)."""
        from deepspeed.utils import safe_get_full_fp32_param

        with self._gathered(module):
            weights = {}
            for name, tensor in module.state_dict(keep_vars=True).items():
                master = safe_get_full_fp32_param(tensor) if _trainable(tensor) else None
                weights[name] = (tensor if master is None else master).detach().cpu().clone()
        return weights

    def _load_full_weights(self, module: nn.Module, weights: dict[str, Tensor]) -> None:
        with self._gathered(module, modify=True):
            module.load_state_dict(weights)
        for name, param in module.named_parameters():
            if param.requires_grad:
                _set_full_hp(param, weights[name].to(self.root_device, torch.float32))

    def _full_optimizer_state(self, module: nn.Module, optimizer: Optimizer) -> dict[str, Any]:
        """The optimizer state in torch's full format: ``{"state": {name: {...}}, "param_groups": [...]}``."""
        from deepspeed.utils import safe_get_full_optimizer_state

        base = _base_optimizer(optimizer)
        keys, step = _state_keys(base), _step(base)
        state: dict[str, dict[str, Any]] = {}
        for name, param in self._trainable_parameters(module):
            entry: dict[str, Any] = {key: safe_get_full_optimizer_state(param, key).cpu() for key in keys}
            if step is not None:
                entry["step"] = step.detach().cpu().clone() if isinstance(step, Tensor) else step
            if entry:
                state[name] = entry
        groups = [
            {**{k: v for k, v in group.items() if k != "params"}, "params": names}
            for group, names in zip(base.param_groups, self._group_names(module), strict=True)
        ]
        return {"state": state, "param_groups": groups}

    def _load_full_optimizer_state(
        self, module: nn.Module, optimizer: Optimizer, state: dict[str, Any]
    ) -> None:
        base = _base_optimizer(optimizer)
        for group, saved in zip(base.param_groups, state["param_groups"], strict=True):
            group.update({k: v for k, v in saved.items() if k != "params"})
        saved_state: dict[str, dict[str, Any]] = state.get("state", {})
        if not saved_state:
            return  # saved before the first step: the optimizer has no state yet either
        _create_state(optimizer, base)
        for name, param in self._trainable_parameters(module):
            for key, value in saved_state[name].items():
                if key != "step":
                    _set_full_hp(param, value.to(self.root_device), key)
        steps = [entry["step"] for entry in saved_state.values() if "step" in entry]
        if steps:
            for flat_state in base.state.values():
                flat_state["step"] = steps[0].clone() if isinstance(steps[0], Tensor) else steps[0]

    def _trainable_parameters(self, module: nn.Module) -> list[tuple[str, nn.Parameter]]:
        return [(name, p) for name, p in module.named_parameters() if p.requires_grad]

    def _group_names(self, module: nn.Module) -> list[list[str]]:
        names = {id(p): name for name, p in module.named_parameters()}
        return [[names[i] for i in group] for group in self._param_groups]

    def _gathered(self, module: nn.Module, modify: bool = False) -> AbstractContextManager[Any]:
        """Stage 3: the partitioned parameters whole for the block (changes on rank 0 are kept)."""
        if self.stage != 3:
            return nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(
            list(module.parameters()), modifier_rank=0 if modify else None
        )


def _trainable(tensor: Tensor) -> bool:
    return isinstance(tensor, nn.Parameter) and tensor.requires_grad


def _set_full_hp(param: Tensor, value: Tensor, key: str | None = None) -> None:
    """Set this rank's partition of a parameter's fp32 master copy (``key`` None) or optimizer state.

    DeepSpeed's ``safe_set_full_*`` helpers, except for ZeRO-3 parameters: there (deepspeed 0.19)
    they read past the end of the value on the last rank when the parameter's size is not a
    multiple of the world size, so this rank's slice is copied here instead.
    """
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    if not hasattr(param, "ds_id"):
        if key is None:
            safe_set_full_fp32_param(param, value)
        else:
            safe_set_full_optimizer_state(param, value, key)
        return
    zero3 = param._z3_optimizer  # type: ignore[attr-defined]
    partition, _ = zero3._get_fp32_opt_state_partition(param, release_swap_buffers=False, optim_state_key=key)
    start = partition.numel() * zero3._get_param_partition_rank(param)
    piece = value.flatten()[start : start + partition.numel()]
    partition.data[: piece.numel()].copy_(piece)


def _base_optimizer(optimizer: Optimizer) -> Optimizer:
    """The torch optimizer that a ZeRO optimizer steps over its flat fp32 partitions."""
    base: Optimizer = getattr(optimizer, "optimizer", optimizer)
    return base


def _state_keys(base: Optimizer) -> list[str]:
    """The per-element state of the optimizer (e.g. ``exp_avg``), not scalars such as ``step``."""
    return sorted(
        {
            key
            for state in base.state.values()
            for key, value in state.items()
            if key != "step" and isinstance(value, Tensor) and value.dim() > 0
        }
    )


def _step(base: Optimizer) -> Any:
    """The optimizer's step count (all flat groups step together), or None before the first step."""
    return next((state["step"] for state in base.state.values() if "step" in state), None)


@torch.no_grad()
def _create_state(optimizer: Optimizer, base: Optimizer) -> None:
    """Make the torch optimizer create its state (zero gradients, learning rate 0), to be overwritten.

    ZeRO creates it lazily at the first step, and DeepSpeed's state setters need it to exist.
    ZeRO 1/2 keep their flat fp32 partitions in the optimizer's groups; ZeRO-3 puts each
    sub-group's partition into its group only for the time of its step, as done here.
    """
    if any(base.state.values()):  # torch's state is a defaultdict: lookups leave empty entries
        return
    zero3_flats = getattr(optimizer, "fp32_partitioned_groups_flat", None)
    if zero3_flats is None:
        steps = [[(group, group["params"]) for group in base.param_groups]]
    else:
        to_group = optimizer.sub_group_to_group_id  # type: ignore[attr-defined]
        steps = [[(base.param_groups[to_group[i]], [flat])] for i, flat in enumerate(zero3_flats)]
    lrs = [group["lr"] for group in base.param_groups]
    for group in base.param_groups:
        group["lr"] = 0.0
    for step in steps:
        held = [(group, group["params"]) for group, _ in step]
        for group, flats in step:
            group["params"] = flats
            for p in flats:
                p.grad = torch.zeros_like(p)
        base.step()
        for group, params in held:
            for p in group["params"]:
                p.grad = None
            group["params"] = params
    for group, lr in zip(base.param_groups, lrs, strict=True):
        group["lr"] = lr
    link = getattr(optimizer, "_lazy_init_hp_params_optimizer_state", None)  # ZeRO 1/2: map it to params
    if callable(link):
        link()


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
