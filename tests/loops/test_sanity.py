"""``Trainer(num_sanity_val_steps=N)``: validation batches before training that leave training bit-identical."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
from tasktrain.callbacks import Callback, EarlyStopping, ModelCheckpoint
from tasktrain.loggers import Logger


class Recorder(Logger):
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.rows.append((step, dict(metrics)))


class Noisy(tt.TaskModule):
    """Dropout in training and a random draw in validation: both consume the global RNG."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 1))
        self.sanity_batches = 0
        self.val_batches = 0

    def compute_loss(self, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        if self.trainer.sanity_checking:
            self.sanity_batches += 1
        else:
            self.val_batches += 1
        noise = torch.rand(()) * 1e-3  # draws from the global RNG during validation
        self.log("val/loss", self.compute_loss(batch) + noise, prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g))


def _fit(
    tmp_path: Path, name: str, **trainer_args: Any
) -> tuple[Noisy, tt.Trainer, Recorder, ModelCheckpoint]:
    torch.manual_seed(0)
    module = Noisy()
    recorder = Recorder()
    checkpoint = ModelCheckpoint(monitor="val/loss", save_top_k=1)
    trainer = tt.Trainer(
        max_epochs=3,
        seed=0,
        accumulate_grad_batches=2,
        val_check_interval=3,
        logger=recorder,
        callbacks=[checkpoint, EarlyStopping("val/loss", patience=1)],
        enable_progress_bar=False,
        default_root_dir=tmp_path / name,
        accelerator="cpu",
        **trainer_args,
    )
    train = DataLoader(_data(40, 0), batch_size=4, shuffle=True)  # shuffled by the global RNG
    val = DataLoader(_data(24, 1), batch_size=4, shuffle=True)
    trainer.fit(module, train, val_dataloaders=val)
    return module, trainer, recorder, checkpoint


@pytest.mark.parametrize("steps", [2, -1], ids=["two-batches", "whole-set"])
def test_training_is_bit_identical_with_and_without_a_sanity_check(tmp_path, steps):
    plain, plain_trainer, plain_log, plain_ckpt = _fit(tmp_path, "plain")
    checked, trainer, log, ckpt = _fit(tmp_path, "checked", num_sanity_val_steps=steps)

    assert checked.sanity_batches == (2 if steps == 2 else 6)  # 24 samples / 4
    assert plain.sanity_batches == 0 and checked.val_batches == plain.val_batches > 0
    for name, weight in plain.state_dict().items():
        assert torch.equal(checked.state_dict()[name], weight), name
    # Nothing of the check reached the loggers, the callbacks or the counters.
    assert log.rows == plain_log.rows
    assert trainer.callback_metrics == plain_trainer.callback_metrics
    assert [(e["step"], e["score"]) for e in ckpt.saved] == [
        (e["step"], e["score"]) for e in plain_ckpt.saved
    ]
    loops, plain_loops = trainer.fit_loop.state_dict(), plain_trainer.fit_loop.state_dict()
    rng, plain_rng = loops.pop("epoch_loop.epoch_start_rng"), plain_loops.pop("epoch_loop.epoch_start_rng")
    assert loops == plain_loops
    assert torch.equal(rng["torch_cpu"], plain_rng["torch_cpu"])
    assert trainer.global_step == plain_trainer.global_step
    # The check's own metrics are kept: the untrained model's score.
    assert "val/loss" in trainer.sanity_check.metrics


def test_the_sanity_check_runs_after_on_fit_start_and_before_on_train_start(quiet):
    class Order(Callback):
        def __init__(self) -> None:
            self.events: list[str] = []

        def on_fit_start(self, trainer: Any, module: Any) -> None:
            self.events.append("fit_start")

        def on_validation_start(self, trainer: Any, module: Any) -> None:
            self.events.append("sanity" if trainer.sanity_checking else "validation")

        def on_train_start(self, trainer: Any, module: Any) -> None:
            self.events.append("train_start")

    order = Order()
    trainer = tt.Trainer(max_epochs=1, num_sanity_val_steps=1, callbacks=[order], **quiet)
    loader = DataLoader(_data(8, 0), batch_size=4)
    trainer.fit(Noisy(), loader, val_dataloaders=loader)
    assert order.events == ["fit_start", "sanity", "train_start", "validation"]
    assert not trainer.sanity_checking


def test_the_sanity_check_respects_limit_val_batches_and_needs_validation_data(quiet):
    module = Noisy()
    loader = DataLoader(_data(24, 1), batch_size=4)
    trainer = tt.Trainer(max_steps=1, num_sanity_val_steps=-1, limit_val_batches=3, **quiet)
    trainer.fit(module, loader, val_dataloaders=loader)
    assert module.sanity_batches == 3

    module = Noisy()
    tt.Trainer(max_steps=1, num_sanity_val_steps=5, **quiet).fit(module, loader)  # no validation data
    assert module.sanity_batches == 0
    tt.Trainer(max_steps=1, num_sanity_val_steps=5, limit_val_batches=0, **quiet).fit(
        module, loader, val_dataloaders=loader
    )
    assert module.sanity_batches == 0


def test_a_broken_validation_step_fails_before_the_first_training_step(quiet):
    class Broken(Noisy):
        def validation_step(self, batch, batch_idx):
            raise RuntimeError("bad validation_step")

    module = Broken()
    trainer = tt.Trainer(max_epochs=1, num_sanity_val_steps=1, **quiet)
    loader = DataLoader(_data(8, 0), batch_size=4)
    with pytest.raises(RuntimeError, match="bad validation_step"):
        trainer.fit(module, loader, val_dataloaders=loader)
    assert trainer.global_step == 0


@pytest.mark.parametrize("value", [-2, 1.5, "2", True, None])
def test_num_sanity_val_steps_is_checked(value):
    with pytest.raises(ValueError, match=r"num_sanity_val_steps=.*-1 \(the whole validation set\)"):
        tt.Trainer(num_sanity_val_steps=value)
