"""DESIGN §5.3: with the defaults on (progress bar, logger, ModelCheckpoint, Preemption) and
``Throughput`` (FLOPs, MFU, peak memory: DESIGN §5.5), steps that neither log nor save read
nothing back to the host and run no collective besides the strategy's own gradient
synchronisation: single process, DDP and FSDP (two gloo ranks)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
from _syncs import SyncCounter
from tasktrain.callbacks import ModelCheckpoint, Preemption, Throughput
from tasktrain.loops import NonFiniteLossError


class Regressor(tt.TaskModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))

    def compute_loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _loader(n: int = 64) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 3, generator=g), torch.randn(n, 1, generator=g)), 4)


class SignalAt(tt.callbacks.Callback):
    """Rank 1 alone receives a SIGTERM at the start of step 6."""

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.state.global_step == 6 and trainer.strategy.global_rank == 1:
            os.kill(os.getpid(), signal.SIGTERM)


def _fit_with_defaults(root: Path, **kwargs: Any) -> tt.Trainer:
    counter = SyncCounter()
    trainer = tt.Trainer(
        max_epochs=1,
        log_every_n_steps=5,
        accumulate_grad_batches=2,
        callbacks=[counter, Throughput(peak_flops=1e12)],
        default_root_dir=root,
        accelerator="cpu",
        **kwargs,
    )
    trainer.fit(Regressor(), _loader(128))
    return trainer


def _counter(trainer: tt.Trainer) -> SyncCounter:
    return next(cb for cb in trainer.callbacks if isinstance(cb, SyncCounter))


@pytest.mark.parametrize(
    "strategy",
    [
        pytest.param({}, id="single"),
        pytest.param({"strategy": "ddp", "devices": 2}, id="ddp"),
        pytest.param({"strategy": "fsdp", "devices": 2}, id="fsdp"),
    ],
)
def test_quiet_steps_make_no_host_read_and_no_collective(tmp_path: Path, strategy: dict[str, Any]) -> None:
    trainer = _fit_with_defaults(tmp_path, **strategy)
    kinds = {type(cb) for cb in trainer.callbacks}
    assert {ModelCheckpoint, Preemption} <= kinds and trainer.loggers, "the defaults are on"
    counter = _counter(trainer)
    world = strategy.get("devices", 1)
    micro_batches = 128 // 4 // world
    assert len(counter.batches) == micro_batches
    quiet = counter.quiet_batches()
    # 32 (16 under two ranks) micro-batches in steps of 2: steps 5, 10, 15 log, the last one ends the epoch.
    assert len(quiet) >= micro_batches - 8, counter.report()
    assert all(b["host_reads"] == 0 and b["collectives"] == 0 for b in quiet), counter.report(quiet)
    # The counter does count: the logging steps read their values back.
    logged = [b for b in counter.batches if b["logged"]]
    assert logged and all(b["host_reads"] > 0 for b in logged), counter.report()


def test_a_nonfinite_loss_is_reported_at_the_next_logging_step_naming_the_first_bad_one(
    tmp_path: Path,
) -> None:
    class NaNAt(Regressor):
        def compute_loss(self, batch: Any) -> torch.Tensor:
            loss = super().compute_loss(batch)
            return loss * float("nan") if self.global_step in (6, 7) else loss

    counter = SyncCounter()
    trainer = tt.Trainer(
        max_epochs=1,
        log_every_n_steps=4,
        callbacks=[counter],
        default_root_dir=tmp_path,
        enable_checkpointing=False,
        logger=False,
        accelerator="cpu",
    )
    with pytest.raises(
        NonFiniteLossError, match=r"at step 6 \(micro-batch 1 of 1, batch_idx 6\).*found at step 8"
    ):
        trainer.fit(NaNAt(), _loader())
    assert trainer.state.global_step == 8  # the next logging step
    quiet = [
        b for b in counter.quiet_batches() if b["step"] != 7
    ]  # the last one raised before it was flagged
    assert len(quiet) == 6 and all(b["host_reads"] == 0 for b in quiet), counter.report(quiet)


def test_preemption_under_two_ranks_agrees_only_on_logging_steps_and_stops_there(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as stop:
        tt.Trainer(
            max_epochs=1,
            strategy="ddp",
            devices=2,
            log_every_n_steps=4,
            callbacks=[SignalAt()],
            default_root_dir=tmp_path,
            enable_progress_bar=False,
            logger=False,
            accelerator="cpu",
        ).fit(Regressor(), _loader(128))  # 16 steps per rank
    assert stop.value.code == 99
    saved = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert saved == ["step=00000008"], saved  # signal at step 6 on rank 1, agreed at step 8
