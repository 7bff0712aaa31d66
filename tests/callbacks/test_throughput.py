"""Throughput: samples/s, steps/s and (with count_items) items/s at every logging step."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
from tasktrain.callbacks import Throughput
from tasktrain.loggers import Logger


class Recorder(Logger):
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.rows.append((step, dict(metrics)))

    def values(self, name: str) -> list[tuple[int, float]]:
        return [(step, m[name]) for step, m in self.rows if name in m]


class Task(tt.TaskModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(4, 1)

    def compute_loss(self, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Tokens(Task):
    def count_items(self, batch):
        return int(batch[0].shape[0]) * 7


def _fit(module: tt.TaskModule, **kwargs) -> tuple[Recorder, tt.Trainer]:
    rec = Recorder()
    trainer = tt.Trainer(
        callbacks=[Throughput()], logger=rec, enable_progress_bar=False, enable_checkpointing=False, **kwargs
    )
    g = torch.Generator().manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(24, 4, generator=g), torch.randn(24, 1, generator=g)), 3)
    trainer.fit(module, loader)
    return rec, trainer


def test_logs_samples_and_steps_per_second_at_log_steps():
    rec, _ = _fit(Task(), max_steps=6, log_every_n_steps=2, accumulate_grad_batches=2)
    samples = rec.values("throughput/samples_per_sec")
    steps = rec.values("throughput/steps_per_sec")
    assert [s for s, _ in samples] == [2, 4, 6]
    assert [s for s, _ in steps] == [2, 4, 6]
    assert all(v > 0 for _, v in samples + steps)
    # 2 micro-batches of 3 samples per step: samples/s == 6 x steps/s within one interval
    for (_, sps), (_, stps) in zip(samples, steps, strict=True):
        assert abs(sps - 6 * stps) <= 1e-6 * sps
    assert rec.values("throughput/items_per_sec") == []


def test_logs_items_per_second_with_count_items():
    rec, trainer = _fit(Tokens(), max_steps=4, log_every_n_steps=2)
    items = rec.values("throughput/items_per_sec")
    samples = rec.values("throughput/samples_per_sec")
    assert [s for s, _ in items] == [2, 4]
    for (_, ips), (_, sps) in zip(items, samples, strict=True):
        assert abs(ips - 7 * sps) <= 1e-6 * ips
    assert trainer.items_seen == 4 * 3 * 7
