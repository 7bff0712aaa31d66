"""A tiny regression task that brings its own data: the CLI tests train it in milliseconds."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt

Batch = tuple[Tensor, Tensor]


def dataset(n: int = 32) -> TensorDataset:
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(0))
    return TensorDataset(x, x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1)


class TinyTask(tt.TaskModule[Batch]):
    """Linear regression on 32 fixed samples.

    Args:
        lr: SGD learning rate.
        batch_size: samples per micro-batch (per rank under DDP).
        marker_dir: when set, each rank writes ``rank<N>.txt`` (holding the world size) there.
    """

    def __init__(self, lr: float = 0.1, batch_size: int = 4, marker_dir: str | None = None) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Linear(3, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def compute_loss(self, batch: Batch) -> Tensor:
        x, y = batch
        return F.mse_loss(self(x), y)

    def predict_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    def train_dataloader(self) -> DataLoader[Batch]:
        return DataLoader(dataset(), batch_size=self.hparams.batch_size)

    def val_dataloader(self) -> DataLoader[Batch]:
        return DataLoader(dataset(16), batch_size=8)

    def test_dataloader(self) -> DataLoader[Batch]:
        return DataLoader(dataset(16), batch_size=8)

    def predict_dataloader(self) -> DataLoader[Batch]:
        return DataLoader(dataset(12), batch_size=4)

    def on_fit_start(self) -> None:
        if self.hparams.get("marker_dir"):
            rank, world = os.environ.get("RANK", "0"), self.trainer.strategy.world_size
            (Path(self.hparams["marker_dir"]) / f"rank{rank}.txt").write_text(str(world))
