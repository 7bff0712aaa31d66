"""``Trainer(fast_dev_run=True | N)``: N batches of every stage, one epoch, nothing written to disk."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
from tasktrain.callbacks import ModelCheckpoint
from tasktrain.loggers import CSVLogger


class Counting(tt.TaskModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(3, 1)
        self.calls = {"train": 0, "val": 0, "test": 0, "predict": 0}

    def compute_loss(self, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def training_step(self, batch, batch_idx):
        self.calls["train"] += 1
        return self.compute_loss(batch)

    def validation_step(self, batch, batch_idx):
        self.calls["val"] += 1
        return super().validation_step(batch, batch_idx)

    def test_step(self, batch, batch_idx):
        self.calls["test"] += 1
        return super().test_step(batch, batch_idx)

    def predict_step(self, batch, batch_idx):
        self.calls["predict"] += 1
        return self.net(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader(n: int = 40) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(
        TensorDataset(torch.randn(n, 3, generator=g), torch.randn(n, 1, generator=g)), batch_size=4
    )


def _files(root: Any) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.mark.parametrize(("value", "batches"), [(True, 1), (3, 3)])
def test_fast_dev_run_runs_n_batches_of_each_stage_and_writes_nothing(tmp_path, value, batches):
    root = tmp_path / "root"
    root.mkdir()
    module = Counting()
    trainer = tt.Trainer(
        fast_dev_run=value,
        max_epochs=50,  # overridden: one epoch of N batches
        max_steps=1000,
        num_sanity_val_steps=2,  # overridden: no sanity check
        default_root_dir=root,  # logger=True and enable_checkpointing=True by default
        callbacks=[ModelCheckpoint(dirpath=str(tmp_path / "ckpts"), every_n_train_steps=1)],
        logger=CSVLogger(str(tmp_path / "logs")),
        enable_progress_bar=False,
        accelerator="cpu",
    )
    assert trainer.fast_dev_run == batches
    result = trainer.fit(module, _loader(), val_dataloaders=_loader(20))
    trainer.test(module, _loader(20))
    predictions = trainer.predict(module, _loader(20))

    assert module.calls == {"train": batches, "val": batches, "test": batches, "predict": batches}
    assert len(predictions) == batches
    assert result.global_step == batches
    assert "val/loss" in trainer.callback_metrics  # validated at the end of the one epoch
    assert trainer.loggers == []
    assert trainer.checkpoint_callback is not None and trainer.checkpoint_callback.saved == []
    assert _files(root) == []
    assert not (tmp_path / "ckpts").exists() and not (tmp_path / "logs").exists()


def test_fast_dev_run_with_accumulation_steps_once_per_group(quiet):
    module = Counting()
    trainer = tt.Trainer(fast_dev_run=3, accumulate_grad_batches=2, **quiet)
    result = trainer.fit(module, _loader())
    assert module.calls["train"] == 3
    assert result.global_step == 2  # a group of 2 and the remainder group of 1


def test_fast_dev_run_off_changes_nothing():
    args = tt.Trainer(fast_dev_run=0, max_steps=7).args
    assert (args.max_steps, args.limit_train_batches, args.logger) == (7, None, True)
    assert tt.Trainer(fast_dev_run=False).fast_dev_run == 0


@pytest.mark.parametrize("value", [-1, 1.5, "1", None])
def test_fast_dev_run_is_checked(value):
    with pytest.raises(ValueError, match=r"fast_dev_run=.*accepted values are True \(1 batch\), False"):
        tt.Trainer(fast_dev_run=value)
