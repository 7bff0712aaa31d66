"""``DebugUnderflowOverflow``: name the first module whose activations or gradients turn inf/nan."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor, nn
from typing_extensions import override

from tasktrain.callbacks.base import Callback

if TYPE_CHECKING:
    from torch.utils.hooks import RemovableHandle

    from tasktrain.module import TaskModule
    from tasktrain.trainer import Trainer


class DebugUnderflowOverflow(Callback):
    """Find where training first produces inf or NaN: the module, forward output or gradient, and step.

    During every training micro-batch it records, for each submodule's floating-point outputs (in
    forward order) and each parameter's gradient (in the order backward produces them), whether
    they are finite and their smallest and largest absolute value. After the micro-batch's
    backward it checks them all at once; at the first non-finite value it raises a
    ``FloatingPointError`` naming it, with the ``max_frames`` records before it: values that
    shrink towards 0 (underflow) or grow towards the dtype's maximum (65504 in float16) show
    where the trouble starts. The seeds' HF ``DebugUnderflowOverflow``, as a callback.

    A debugging aid, not for production runs: the statistics cost a few small kernels per
    module and one host read per micro-batch (under several processes, plus one collective, so
    every rank stops together).

    Args:
        max_frames: how many records before the first bad one the error shows.

    Example:
        >>> import tasktrain as tt
        >>> trainer = tt.Trainer(callbacks=[DebugUnderflowOverflow()])
    """

    def __init__(self, max_frames: int = 21) -> None:
        if not isinstance(max_frames, int) or isinstance(max_frames, bool) or max_frames < 0:
            raise ValueError(
                f"DebugUnderflowOverflow(max_frames={max_frames!r}): accepted values are ints >= 0"
            )
        self.max_frames = max_frames
        self._frames: list[tuple[str, Tensor]] = []
        self._handles: list[RemovableHandle] = []
        self._recording = False

    @override
    def on_train_start(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        for name, submodule in module.named_modules():
            label = f"{name or 'the module'} ({type(submodule).__name__})"
            self._handles.append(submodule.register_forward_hook(self._forward_hook(label)))
        for name, parameter in module.named_parameters():
            if parameter.requires_grad:
                self._handles.append(parameter.register_post_accumulate_grad_hook(self._grad_hook(name)))

    @override
    def on_train_batch_start(
        self, trainer: Trainer, module: TaskModule[Any], batch: Any, batch_idx: int
    ) -> None:
        self._frames, self._recording = [], True

    @override
    def on_train_batch_end(
        self, trainer: Trainer, module: TaskModule[Any], outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._recording = False
        if not self._frames:
            return
        stats = torch.stack([s for _, s in self._frames])  # (frames, 3): finite, abs min, abs max
        finite = stats[:, 0].bool()
        bad_here = ~finite.all()
        if not trainer.strategy.any_rank(bad_here):  # host read: one per micro-batch
            self._frames = []
            return
        where = f"at step {trainer.state.global_step}, batch_idx {batch_idx}"
        if not bool(bad_here):
            raise FloatingPointError(f"DebugUnderflowOverflow: inf/nan on another rank {where}")
        first = int((~finite).nonzero()[0, 0])
        shown = stats[max(0, first - self.max_frames) : first + 1].tolist()
        names = [name for name, _ in self._frames[max(0, first - self.max_frames) : first + 1]]
        lines = [
            f"  {name}: abs min {low:.3e}, abs max {high:.3e}"
            for name, (_, low, high) in zip(names, shown, strict=True)
        ]
        raise FloatingPointError(
            f"DebugUnderflowOverflow: inf/nan first in {self._frames[first][0]} {where}"
            f"{f' (rank {trainer.strategy.global_rank})' if trainer.strategy.world_size > 1 else ''}. "
            "Records up to it, in the order they were computed:\n" + "\n".join(lines)
        )

    @override
    def on_train_end(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        self._remove_hooks()

    @override
    def on_exception(self, trainer: Trainer, module: TaskModule[Any], error: BaseException) -> None:
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._frames, self._recording = [], [], False

    def _forward_hook(self, label: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if self._recording:
                apply_to_collection(output, Tensor, lambda t: self._record(f"{label} forward output", t))

        return hook

    def _grad_hook(self, name: str) -> Any:
        def hook(parameter: Tensor) -> None:
            if self._recording and parameter.grad is not None:
                self._record(f"{name} gradient", parameter.grad)

        return hook

    def _record(self, what: str, tensor: Tensor) -> None:
        if not tensor.is_floating_point() or tensor.numel() == 0:
            return
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor  # a DTensor: this rank's shard
        values = local.detach().abs().float()
        self._frames.append(
            (what, torch.stack([torch.isfinite(values).all().float(), values.amin(), values.amax()]))
        )
