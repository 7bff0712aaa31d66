"""``EmptyCache``: return the caching allocator's unused memory every N steps (HF's ``torch_empty_cache_steps``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from typing_extensions import override

from tasktrain import hardware
from tasktrain.callbacks.base import Callback

if TYPE_CHECKING:
    from tasktrain.module import TaskModule
    from tasktrain.trainer import Trainer


class EmptyCache(Callback):
    """Call the device's ``empty_cache()`` (e.g. ``torch.cuda.empty_cache``) after every ``every_n_steps``-th optimizer step.

    It lowers the reserved memory that fragmentation leaves behind (at the price of new
    allocations afterwards, so a few percent of speed), which can avoid an out-of-memory error
    late in a run. On a CPU there is no cache: it does nothing.

    Args:
        every_n_steps: how many optimizer steps between two calls (an int >= 1).

    Example:
        >>> import tasktrain as tt
        >>> trainer = tt.Trainer(callbacks=[EmptyCache(every_n_steps=100)])
    """

    def __init__(self, every_n_steps: int) -> None:
        if not isinstance(every_n_steps, int) or isinstance(every_n_steps, bool) or every_n_steps < 1:
            raise ValueError(f"EmptyCache(every_n_steps={every_n_steps!r}): accepted values are ints >= 1")
        self.every_n_steps = every_n_steps

    @override
    def on_train_step_end(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        if trainer.state.global_step % self.every_n_steps == 0:
            hardware.empty_cache(trainer.strategy.root_device)
