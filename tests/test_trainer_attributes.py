"""The Lightning names users reach for: ``trainer.global_step``, ``current_epoch``,
``logged_metrics``, ``checkpoint_callback``, ``total_train_batch_size``, and ``self.log(logger=False)``."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler, TensorDataset

import tasktrain as tt
from tasktrain.callbacks import Callback, ModelCheckpoint
from tasktrain.loggers import Logger


class Recorder(Logger):
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.rows.append((step, dict(metrics)))

    def names(self) -> set[str]:
        return {name for _, metrics in self.rows for name in metrics}


class Regressor(tt.TaskModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(3, 1)

    def compute_loss(self, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _data(n: int = 32) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 3, generator=g), torch.randn(n, 1, generator=g))


class Positions(Callback):
    """``(trainer.current_epoch, trainer.global_step)`` at every epoch start and step end."""

    def __init__(self) -> None:
        self.epoch_starts: list[tuple[int, int]] = []
        self.step_ends: list[tuple[int, int]] = []

    def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
        self.epoch_starts.append((trainer.current_epoch, trainer.global_step))

    def on_train_step_end(self, trainer: Any, module: Any) -> None:
        self.step_ends.append((trainer.current_epoch, trainer.global_step))


def test_global_step_and_current_epoch_follow_the_run(quiet):
    """32 samples, batch 8, accumulation 2: 4 micro-batches = 2 optimizer steps per epoch, 3 epochs."""
    positions = Positions()
    trainer = tt.Trainer(max_epochs=3, accumulate_grad_batches=2, callbacks=[positions], **quiet)
    assert (trainer.global_step, trainer.current_epoch) == (0, 0)
    trainer.fit(Regressor(), DataLoader(_data(), batch_size=8))

    assert positions.epoch_starts == [(0, 0), (1, 2), (2, 4)]
    assert positions.step_ends == [(0, 1), (0, 2), (1, 3), (1, 4), (2, 5), (2, 6)]
    assert trainer.global_step == trainer.state.global_step == 6
    assert trainer.current_epoch == trainer.state.epoch == 2


class LogsBoth(Regressor):
    def training_step(self, batch, batch_idx):
        loss = self.compute_loss(batch)
        self.log("hidden", float(self.global_step), logger=False, prog_bar=True)
        self.log("shown", float(self.global_step) * 10)
        return loss


def test_log_with_logger_false_reaches_callback_metrics_and_progress_bar_but_not_loggers(quiet):
    recorder = Recorder()
    trainer = tt.Trainer(max_steps=4, log_every_n_steps=2, **{**quiet, "logger": recorder})
    trainer.fit(LogsBoth(), DataLoader(_data(), batch_size=8))

    # hidden is logged in step 4's training_step, before global_step becomes 4: its last value is 3.
    assert trainer.callback_metrics["hidden"] == 3.0
    assert trainer.progress_bar_metrics["hidden"] == 3.0
    assert "hidden" not in recorder.names()
    assert "hidden" not in trainer.logged_metrics
    assert [step for step, _ in recorder.rows] == [2, 4]
    assert [metrics["shown"] for _, metrics in recorder.rows] == [10.0, 30.0]
    # logged_metrics is the latest value of each name the loggers received.
    assert trainer.logged_metrics["shown"] == 30.0
    assert trainer.logged_metrics["train/loss"] == recorder.rows[-1][1]["train/loss"]
    assert set(trainer.logged_metrics) == recorder.names()


def test_logged_metrics_are_filled_without_a_logger(quiet):
    trainer = tt.Trainer(max_steps=2, log_every_n_steps=1, **quiet)  # quiet: logger=False
    trainer.fit(LogsBoth(), DataLoader(_data(), batch_size=8))
    assert trainer.logged_metrics["shown"] == 10.0
    assert "hidden" not in trainer.logged_metrics and trainer.callback_metrics["hidden"] == 1.0


def test_a_callback_monitors_a_metric_logged_with_logger_false(quiet):
    class ValLoss(Regressor):
        def validation_step(self, batch, batch_idx):
            self.log("val/quiet_loss", self.compute_loss(batch), logger=False)

    class Seen(Callback):
        def __init__(self) -> None:
            self.values: list[float] = []

        def on_validation_end(self, trainer: Any, module: Any) -> None:
            self.values.append(trainer.callback_metrics["val/quiet_loss"])

    recorder, seen = Recorder(), Seen()
    checkpoint = ModelCheckpoint(monitor="val/quiet_loss", save_top_k=1)
    args = {**quiet, "logger": recorder, "enable_checkpointing": True}
    trainer = tt.Trainer(max_epochs=2, callbacks=[seen, checkpoint], **args)
    loader = DataLoader(_data(), batch_size=8)
    trainer.fit(ValLoss(), loader, val_dataloaders=loader)
    assert len(seen.values) == 2
    assert checkpoint.best_model_score == min(seen.values)
    assert "val/quiet_loss" not in recorder.names()


def test_checkpoint_callback_is_the_first_model_checkpoint(quiet):
    assert tt.Trainer(**quiet).checkpoint_callback is None  # enable_checkpointing=False
    default = tt.Trainer(**{**quiet, "enable_checkpointing": True})
    assert isinstance(default.checkpoint_callback, ModelCheckpoint)
    assert default.checkpoint_callbacks == [default.checkpoint_callback]
    first, second = ModelCheckpoint(monitor="val/loss"), ModelCheckpoint(every_n_train_steps=5)
    trainer = tt.Trainer(callbacks=[first, second], **{**quiet, "enable_checkpointing": True})
    assert trainer.checkpoint_callback is first
    assert trainer.checkpoint_callbacks == [first, second]


def test_total_train_batch_size_is_batch_times_accumulation_times_data_parallel_size(quiet):
    trainer = tt.Trainer(max_steps=1, accumulate_grad_batches=4, **quiet)
    assert trainer.total_train_batch_size is None  # before fit: no loader yet
    trainer.fit(Regressor(), DataLoader(_data(), batch_size=8))
    assert trainer.total_train_batch_size == 8 * 4 * 1

    sampler = BatchSampler(SequentialSampler(range(32)), batch_size=5, drop_last=False)
    trainer = tt.Trainer(max_steps=1, accumulate_grad_batches=3, **quiet)
    trainer.fit(Regressor(), DataLoader(_data(), batch_sampler=sampler))
    assert trainer.total_train_batch_size == 5 * 3  # the batch sampler's batch size


def test_total_train_batch_size_is_none_without_a_fixed_batch_size(quiet):
    class Varying:
        def __iter__(self):
            data = _data()
            yield data[0:3]
            yield data[3:8]

    trainer = tt.Trainer(max_steps=2, **quiet)
    trainer.fit(Regressor(), Varying())
    assert trainer.total_train_batch_size is None
