"""LearningRateMonitor: logs the learning rate the scheduler set."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
from tasktrain.callbacks import LearningRateMonitor
from tasktrain.loggers import Logger


class Recorder(Logger):
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.rows.append((step, dict(metrics)))

    def values(self, name: str) -> list[tuple[int, float]]:
        return [(step, m[name]) for step, m in self.rows if name in m]


def _loader(n: int = 12, batch_size: int = 2) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(
        TensorDataset(torch.randn(n, 2, generator=g), torch.randn(n, 1, generator=g)), batch_size
    )


class Scheduled(tt.TaskModule):
    def __init__(self, interval: str = "step", groups: int = 1) -> None:
        super().__init__()
        self.interval = interval
        self.groups = groups
        self.a = torch.nn.Linear(2, 1)
        self.b = torch.nn.Linear(2, 1)

    def compute_loss(self, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(self.a(x) + self.b(x), y)

    def configure_optimizers(self):
        if self.groups == 1:
            opt = torch.optim.SGD(self.parameters(), lr=1.0)
        else:
            opt = torch.optim.SGD(
                [{"params": self.a.parameters(), "lr": 1.0}, {"params": self.b.parameters(), "lr": 0.1}]
            )
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": self.interval}}


def _fit(module: tt.TaskModule, monitor: LearningRateMonitor, **kwargs: Any) -> Recorder:
    rec = Recorder()
    trainer = tt.Trainer(
        callbacks=[monitor], logger=rec, enable_progress_bar=False, enable_checkpointing=False, **kwargs
    )
    trainer.fit(module, _loader())
    return rec


def test_step_interval_matches_the_scheduler():
    rec = _fit(Scheduled("step"), LearningRateMonitor("step"), max_steps=6, log_every_n_steps=2)
    # the rate each logged step used: step s runs with lr = 0.5 ** (s - 1)
    assert rec.values("lr") == [(2, 0.5), (4, 0.5**3), (6, 0.5**5)]


def test_epoch_interval_logs_the_lr_of_each_epoch():
    rec = _fit(Scheduled("epoch"), LearningRateMonitor("epoch"), max_epochs=3)
    # the lr in force during epochs 0, 1, 2 (logged at epoch start, written at epoch end)
    assert [v for _, v in rec.values("lr")] == pytest.approx([1.0, 0.5, 0.25])
    assert [s for s, _ in rec.values("lr")] == [6, 12, 18]


def test_several_param_groups():
    rec = _fit(Scheduled("step", groups=2), LearningRateMonitor("step"), max_steps=2, log_every_n_steps=1)
    assert rec.values("lr/pg0") == [(1, 1.0), (2, 0.5)]
    assert rec.values("lr/pg1") == [(1, pytest.approx(0.1)), (2, pytest.approx(0.05))]
    assert rec.values("lr") == []


def test_matches_the_optimizer_at_every_step():
    seen: list[float] = []

    class Check(LearningRateMonitor):
        def on_before_optimizer_step(self, trainer, module, optimizer):
            super().on_before_optimizer_step(trainer, module, optimizer)
            seen.append(optimizer.param_groups[0]["lr"])  # the rate optimizer.step() is about to use

    rec = _fit(Scheduled("step"), Check("step"), max_steps=4, log_every_n_steps=1)
    assert [v for _, v in rec.values("lr")] == seen


def test_bad_interval():
    with pytest.raises(ValueError, match="logging_interval='batch'"):
        LearningRateMonitor("batch")
