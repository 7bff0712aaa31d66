"""A module whose validation loss is a hand-made sequence, for tests of "the best checkpoint".

Shared by single-process tests and the ranks that distributed tests spawn (``tests/`` is on
``sys.path`` in both).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
from tasktrain.callbacks import Callback


class ScriptedVal(tt.TaskModule):
    """Trains a small regressor for real; the n-th validation run logs ``val/loss = losses[n]``."""

    def __init__(self, losses: tuple[float, ...] = (0.9, 0.5, 0.7, 0.6)) -> None:
        super().__init__()
        self.losses = losses  # not a hyperparameter: NaN is no JSON
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        self.runs = 0

    def compute_loss(self, batch: Any) -> Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val/loss", float(self.losses[self.runs]), sync_dist=True)

    def on_validation_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.runs += 1

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.net(batch[0])

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class WeightsAtValidation(Callback):
    """The module's full weights at every validation run during fit, by global step.

    ``full_weights(trainer, module)`` gathers them (a collective under FSDP: every rank calls it).
    """

    def __init__(self) -> None:
        self.by_step: dict[int, dict[str, Tensor]] = {}

    def on_validation_end(self, trainer: Any, module: Any) -> None:
        if trainer.state.stage == "fit":
            self.by_step[trainer.global_step] = full_weights(trainer, module)


def full_weights(trainer: Any, module: Any) -> dict[str, Tensor]:
    state = trainer.strategy.get_state(module, sharded=False)
    return {} if state is None else {k: v.detach().cpu().clone() for k, v in state.model.items()}


def data(n: int = 32, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g))


def loader(n: int = 32, batch_size: int = 4, seed: int = 0) -> DataLoader:
    return DataLoader(data(n, seed), batch_size=batch_size)
