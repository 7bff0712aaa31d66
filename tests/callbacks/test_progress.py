"""ProgressBar: a tqdm bar on stderr with step, loss and lr."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
from tasktrain.callbacks import ProgressBar


class Task(tt.TaskModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(2, 1)

    def compute_loss(self, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        self.log("val/score", 0.125, prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader(n: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 2, generator=g), torch.randn(n, 1, generator=g)), 2)


def test_progress_bar_shows_step_loss_lr_and_prog_bar_metrics(capsys):
    trainer = tt.Trainer(max_epochs=2, log_every_n_steps=1, logger=False, enable_checkpointing=False)
    assert any(isinstance(cb, ProgressBar) for cb in trainer.callbacks)
    trainer.fit(Task(), _loader(), _loader(4))
    err = capsys.readouterr().err
    assert "epoch 0" in err and "epoch 1" in err
    assert "loss=" in err
    assert "lr=0.01" in err
    assert "step=8" in err
    assert "val/score=0.125" in err
    assert "4/4" in err  # total = optimizer steps per epoch
    assert "epoch=1" in err  # the postfix names the epoch too


def test_progress_bar_shows_samples_per_second_from_the_second_write(capsys):
    trainer = tt.Trainer(max_epochs=1, log_every_n_steps=1, logger=False, enable_checkpointing=False)
    trainer.fit(Task(), _loader())
    bar = next(cb for cb in trainer.callbacks if isinstance(cb, ProgressBar))
    assert bar._samples_per_second is not None and bar._samples_per_second > 0
    assert "samples/s=" in capsys.readouterr().err


def test_progress_bar_with_accumulation_counts_optimizer_steps(capsys):
    trainer = tt.Trainer(
        max_epochs=1,
        accumulate_grad_batches=3,
        callbacks=[ProgressBar(leave=True)],
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
    )
    trainer.fit(Task(), _loader(10))  # 5 micro-batches -> 2 steps
    err = capsys.readouterr().err
    assert "2/2" in err


def test_progress_bar_closes_on_exception(capsys):
    class Failing(Task):
        def compute_loss(self, batch):
            if self.global_step == 1:
                raise RuntimeError("boom")
            return super().compute_loss(batch)

    bar = ProgressBar()
    trainer = tt.Trainer(max_epochs=1, callbacks=[bar], logger=False, enable_checkpointing=False)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(Failing(), _loader())
    assert bar._bar is None
    capsys.readouterr()


def test_progress_bar_disabled_writes_nothing(capsys):
    trainer = tt.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False)
    assert not any(isinstance(cb, ProgressBar) for cb in trainer.callbacks)
    trainer.fit(Task(), _loader())
    assert "epoch 0" not in capsys.readouterr().err
