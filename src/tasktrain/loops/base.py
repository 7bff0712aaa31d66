"""What every loop shares: the ``run`` skeleton, the collaborators it receives, and its state."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tasktrain.state import Progress

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from tasktrain.log_buffer import LogBuffer
    from tasktrain.loops.evaluation import EvalLoaders
    from tasktrain.loops.hooks import HookDispatcher
    from tasktrain.module import TaskModule
    from tasktrain.optim import OptimizerSetup
    from tasktrain.state import TrainState
    from tasktrain.strategies.base import Strategy
    from tasktrain.totals import TrainTotals


@dataclass
class LoopContext:
    """The collaborators a loop works with, handed down from the trainer (never the trainer itself)."""

    module: TaskModule[Any]
    strategy: Strategy
    hooks: HookDispatcher
    state: TrainState
    logs: LogBuffer
    totals: TrainTotals
    optim: OptimizerSetup | None = None
    train_dataloader: DataLoader[Any] | None = None
    val_dataloader: EvalLoaders | None = None  # one loader, or {name: loader}


class Loop:
    """Base of every loop: ``state_dict()`` walks the object tree.

    A loop's state is every :class:`~tasktrain.state.Progress` (and every attribute with
    ``state_dict``/``load_state_dict``) it holds, plus its child loops under dotted keys. A loop
    with more to resume (a position, an RNG snapshot) adds it in its own ``state_dict`` and
    ``load_state_dict``: that is all a replaced loop needs to resume exactly.

    Example:
        >>> from tasktrain.loops import FitLoop
        >>> sorted(FitLoop().state_dict())[:2]
        ['epoch_loop.accumulation.progress', 'epoch_loop.batch_progress']
    """

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for name, value in vars(self).items():
            if isinstance(value, Loop):
                state.update({f"{name}.{k}": v for k, v in value.state_dict().items()})
            elif _is_stateful(value):
                state[name] = value.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, value in vars(self).items():
            if isinstance(value, Loop):
                prefix = f"{name}."
                value.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
            elif _is_stateful(value) and name in state:
                value.load_state_dict(state[name])
                if isinstance(value, Progress):
                    value.reset_on_restart()


def _is_stateful(value: Any) -> bool:
    return callable(getattr(value, "state_dict", None)) and callable(getattr(value, "load_state_dict", None))
