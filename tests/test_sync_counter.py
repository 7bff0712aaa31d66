"""The suite's ``SyncCounter`` sees host reads and collectives, and places them on the right batch."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
from _syncs import SyncCounter


class Regressor(tt.TaskModule):
    def __init__(self, read_at: set[int] = frozenset(), reduce_at: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        super().__init__()
        self.net = torch.nn.Linear(3, 1)
        self.read_at, self.reduce_at = read_at, reduce_at
        self.calls = 0

    def compute_loss(self, batch):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        if self.calls in self.read_at:
            loss.detach().tolist()
            float(loss.detach())
        if self.calls in self.reduce_at:
            dist.all_reduce(loss.detach().clone())
        self.calls += 1
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(32, 3, generator=g), torch.randn(32, 1, generator=g)), 4)


def _fit(module: Regressor, counter: SyncCounter, quiet: dict[str, Any], **kwargs: Any) -> None:
    tt.Trainer(max_epochs=1, callbacks=[counter], **{**quiet, **kwargs}).fit(module, _loader())


def test_reads_are_counted_on_the_batch_that_made_them(quiet):
    counter = SyncCounter()
    module = Regressor(read_at={2, 5})
    _fit(module, counter, quiet, log_every_n_steps=100)
    assert len(counter.batches) == 8
    # The module's own reads: a tolist and a float on batches 2 and 5 (the loop may add its own).
    quiet = counter.quiet_batches()
    assert [b["batch_idx"] for b in quiet] == list(range(7))  # the last one ends the epoch
    baseline = min(b["host_reads"] for b in quiet)
    extra = {b["batch_idx"]: b["host_reads"] - baseline for b in quiet}
    assert extra == {i: (2 if i in (2, 5) else 0) for i in range(7)}, counter.report()
    assert any("tolist" in e for e in counter.batches[2]["events"])


def test_logging_validation_and_epoch_end_are_flagged(quiet):
    counter = SyncCounter()
    val = DataLoader(TensorDataset(torch.randn(8, 3), torch.randn(8, 1)), 4)
    trainer = tt.Trainer(
        max_epochs=1, callbacks=[counter], log_every_n_steps=3, val_check_interval=4, **quiet
    )
    trainer.fit(Regressor(), _loader(), val)
    logged = [b["step"] + 1 for b in counter.batches if b["logged"]]
    validated = [b["step"] + 1 for b in counter.batches if b["validated"]]
    assert logged == [3, 6] and validated == [4, 8]
    assert counter.batches[-1]["epoch_end"]
    assert [b["step"] + 1 for b in counter.quiet_batches()] == [1, 2, 5, 7]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def process_group():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_collectives_outside_the_strategy_are_counted(quiet, process_group):
    counter = SyncCounter()
    _fit(Regressor(reduce_at={1}), counter, quiet, log_every_n_steps=100)
    collectives = [b["collectives"] for b in counter.batches]
    assert collectives == [0, 1, 0, 0, 0, 0, 0, 0], counter.report()
    assert dist.all_reduce.__module__ == "torch.distributed.distributed_c10d"  # patches undone
