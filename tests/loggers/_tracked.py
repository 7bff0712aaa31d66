"""A tiny task and runs shared by the tracker tests: a CSV logger beside the tracker is the reference."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
from tasktrain.callbacks import ModelCheckpoint
from tasktrain.loggers import CSVLogger, Logger


class Net(tt.TaskModule):
    def __init__(self, hidden: int = 4, lr: float = 0.05, opts: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(3, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1)
        )

    def compute_loss(self, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4, shuffle=True, generator=g)


def fit(
    root: Path, tracker: Logger, max_steps: int, ckpt_path: str | None = None, **kwargs: Any
) -> tt.Trainer:
    """Fit ``Net`` with ``tracker`` and a CSV logger (under ``root/csv``), validating every 2 steps."""
    torch.manual_seed(0)
    trainer = tt.Trainer(
        max_steps=max_steps,
        logger=[tracker, CSVLogger(str(root))],
        log_every_n_steps=1,
        val_check_interval=2,
        enable_progress_bar=False,
        default_root_dir=root,
        accelerator="cpu",
        callbacks=[ModelCheckpoint(every_n_train_steps=1, keep_last=100)],
        **kwargs,
    )
    trainer.fit(Net(opts={"depth": 2, "act": "tanh"}), loader(), loader(), ckpt_path=ckpt_path)
    return trainer


def csv_history(root: Path) -> dict[str, list[tuple[int, float]]]:
    """``{metric: [(step, value), ...]}`` from the rows of every CSV logger version under ``root``
    (a resumed fit writes a new version), step-sorted."""
    history: dict[str, list[tuple[int, float]]] = {}
    for version in sorted((root / "csv").iterdir()):
        with open(version / "metrics.csv") as f:
            for row in csv.DictReader(f):
                for key, value in row.items():
                    if key != "step" and value:
                        history.setdefault(key, []).append((int(row["step"]), float(value)))
    return {key: sorted(points) for key, points in history.items()}


def steps(history: dict[str, list[tuple[int, float]]]) -> dict[str, list[int]]:
    return {key: [s for s, _ in points] for key, points in history.items()}
