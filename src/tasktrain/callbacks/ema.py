"""``EMA``: an exponential moving average of the module's parameters, for validation and export."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from tasktrain.callbacks.base import Callback

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from tasktrain.module import TaskModule
    from tasktrain.trainer import Trainer

_Group = tuple[list[Tensor], list[Tensor]]  # (averages, parameters) of one device and dtype


class EMA(Callback):
    """Keep ``ema = decay * ema + (1 - decay) * p`` of every parameter, as ``torch.optim.swa_utils`` does.

    The update is torch's ``get_ema_multi_avg_fn(decay)`` (one ``torch._foreach_lerp_`` per device
    and dtype), and the first update copies the parameters, as ``AveragedModel`` does. It runs
    after every ``every_n_steps``-th optimizer step (after steps n, 2n, ...; in manual
    optimization after every n-th ``training_step``). Buffers are not averaged: the averaged
    weights use the module's own buffers (``AveragedModel(use_buffers=False)``).

    With ``validate_with_ema`` every validation runs on the averaged weights and the training
    weights are put back after. The average is saved in every checkpoint (under
    ``callbacks.EMA``) and restored exactly; ``TaskModule.load_from_checkpoint(path,
    weights="ema")`` and ``tasktrain export CKPT OUT --weights ema`` use it.

    Under FSDP and tensor parallelism each rank averages its own shards (the averages are
    DTensors placed like the parameters; the update runs on the local shards and communicates
    nothing); under DDP each rank keeps its own replica, identical on all ranks. Only a
    checkpoint save gathers the average into full tensors.

    Args:
        decay: weight of the old average, in [0, 1].
        every_n_steps: update after every n-th optimizer step.
        validate_with_ema: validate on the averaged weights.

    Example:
        >>> import tasktrain as tt
        >>> trainer = tt.Trainer(callbacks=[EMA(decay=0.999)], max_steps=10)
    """

    def __init__(self, decay: float = 0.999, every_n_steps: int = 1, validate_with_ema: bool = True) -> None:
        from torch.optim.swa_utils import get_ema_multi_avg_fn

        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA(decay={decay!r}): must be a number in [0, 1]")
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"EMA(every_n_steps={every_n_steps!r}): must be an integer >= 1")
        if not isinstance(validate_with_ema, bool):
            raise ValueError(f"EMA(validate_with_ema={validate_with_ema!r}): must be True or False")
        self.decay = float(decay)
        self.every_n_steps = every_n_steps
        self.validate_with_ema = validate_with_ema
        self.n_averaged = 0
        self._multi_avg_fn: Callable[[list[Tensor], list[Tensor], Any], None] = get_ema_multi_avg_fn(
            self.decay
        )  # a local function: rebuilt after pickling (devices=N sends the callbacks to the ranks)
        self._names: list[str] = []
        self._averages: list[Tensor] = []  # one per parameter, placed like it (DTensors under FSDP/TP)
        self._groups: list[_Group] = []
        self._source: list[Tensor] = []  # the parameters, in ``_names`` order
        self._params: list[Tensor] = []  # their local tensors (shards under FSDP/TP)
        self._pending: dict[str, Tensor] | None = None  # loaded, not yet placed like the parameters
        self._backup: list[Tensor] | None = None  # the training weights while validation uses the average

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_multi_avg_fn"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        from torch.optim.swa_utils import get_ema_multi_avg_fn

        self.__dict__.update(state)
        self._multi_avg_fn = get_ema_multi_avg_fn(self.decay)

    # -- hooks -----------------------------------------------------------------------------------
    def on_fit_start(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        self._bind(module)

    def on_before_zero_grad(self, trainer: Trainer, module: TaskModule[Any], optimizer: Optimizer) -> None:
        if module.automatic_optimization:  # once per optimizer step, after it
            self._after_step(trainer.state.global_step + 1)  # global_step counts it just after this hook

    def on_train_batch_end(
        self, trainer: Trainer, module: TaskModule[Any], outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not module.automatic_optimization:  # manual: after each training_step
            self._after_step(trainer.state.global_step + 1)

    def on_validation_start(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        if self.validate_with_ema:
            self._bind(module)
            if self._averages:
                self._swap_in()

    def on_validation_end(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        self._swap_out()

    def on_exception(self, trainer: Trainer, module: TaskModule[Any], error: BaseException) -> None:
        self._swap_out()

    # -- the average -----------------------------------------------------------------------------
    def update(self) -> None:
        """Fold the current parameters into the average (the first call copies them)."""
        if self._averages:
            for averages, params in self._groups:  # local shards only: no collective
                self._multi_avg_fn(averages, params, None)  # torch's update (under no_grad itself)
        else:
            self._averages = [_clone(p) for p in self._source]
            self._groups = _grouped([_local(a) for a in self._averages], self._params)
        self.n_averaged += 1

    def _after_step(self, step: int) -> None:
        if step % self.every_n_steps == 0:
            self.update()

    def averaged_weights(self) -> dict[str, Tensor]:
        """The averaged parameters as full CPU tensors, by name (a gather under FSDP/TP: every rank calls it)."""
        if self._pending is not None:
            return dict(self._pending)
        return {name: _full_cpu(a) for name, a in zip(self._names, self._averages, strict=True)}

    @torch.no_grad()
    def _swap_in(self) -> None:
        if self._backup is None:
            self._backup = [p.clone() for p in self._params]
            torch._foreach_copy_(self._params, [_local(a) for a in self._averages])

    @torch.no_grad()
    def _swap_out(self) -> None:
        if self._backup is not None:
            torch._foreach_copy_(self._params, self._backup)
            self._backup = None

    def _bind(self, module: nn.Module) -> None:
        """Find the module's parameters (their local shards), and place a loaded average like them."""
        named = list(module.named_parameters())
        partitioned = [name for name, p in named if hasattr(p, "ds_id")]
        if partitioned:  # ZeRO-3 keeps an empty placeholder in the module, the values in its partitions
            raise ValueError(
                f"EMA: the parameters ({partitioned[:3]}, ...) are partitioned by DeepSpeed ZeRO-3, whose "
                "partitions EMA cannot average; use DeepSpeed stage 1 or 2, or strategy 'fsdp' (EMA is sharded there)"
            )
        self._names = [name for name, _ in named]
        self._source = [p for _, p in named]
        self._params = [_local(p.detach()) for p in self._source]
        if self._pending is not None:
            self._averages = _placed_like(self._pending, named)
            self._pending = None
        if self._averages:
            self._groups = _grouped([_local(a) for a in self._averages], self._params)

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        weights = self.averaged_weights() if (self._averages or self._pending is not None) else {}
        return {
            "decay": self.decay,
            "every_n_steps": self.every_n_steps,
            "n_averaged": self.n_averaged,
            "weights": weights,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n_averaged = int(state["n_averaged"])
        weights: Mapping[str, Tensor] = state["weights"]
        self._pending = dict(weights) if weights else None
        self._averages, self._groups = [], []


def _local(tensor: Tensor) -> Tensor:
    """A DTensor's local shard (the tensor itself otherwise): what the update touches."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor


def _clone(param: Tensor) -> Tensor:
    return param.detach().clone()  # a DTensor stays a DTensor with the same placements (local copy)


def _full_cpu(tensor: Tensor) -> Tensor:
    full = getattr(tensor, "full_tensor", None)
    return (full() if callable(full) else tensor).detach().cpu().clone()


def _grouped(averages: list[Tensor], params: list[Tensor]) -> list[_Group]:
    """Pairs of lists per (device, dtype), as ``AveragedModel`` groups them for the foreach update."""
    groups: dict[tuple[torch.device, torch.dtype], _Group] = {}
    for average, param in zip(averages, params, strict=True):
        pair = groups.setdefault((param.device, param.dtype), ([], []))
        pair[0].append(average)
        pair[1].append(param)
    return list(groups.values())


def _placed_like(weights: Mapping[str, Tensor], named: list[tuple[str, nn.Parameter]]) -> list[Tensor]:
    """Loaded full tensors placed as the parameters are (each rank keeps its shard of a DTensor)."""
    missing = [name for name, _ in named if name not in weights]
    extra = sorted(set(weights) - {name for name, _ in named})
    if missing or extra:
        raise ValueError(
            f"the checkpoint's EMA weights do not fit the module: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    placed = []
    for name, param in named:
        value = weights[name].to(_local(param).device, param.dtype)
        if value.shape != param.shape:
            raise ValueError(
                f"the checkpoint's EMA weight {name!r} has shape {tuple(value.shape)}; the parameter has {tuple(param.shape)}"
            )
        mesh = getattr(param, "device_mesh", None)
        if mesh is not None:  # every rank holds the full tensor: each slices its own shard, no communication
            from torch.distributed.tensor import distribute_tensor

            value = distribute_tensor(value, mesh, param.placements, src_data_rank=None)  # type: ignore[attr-defined]
        placed.append(value.clone())
    return placed
