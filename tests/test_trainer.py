"""Trainer: fit/validate/test/predict, what gets logged and when, FitResult."""

from __future__ import annotations

import csv
import math
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
from tasktrain.callbacks import Callback
from tasktrain.loggers import Logger

QUIET: dict[str, Any] = dict(logger=False, enable_progress_bar=False, enable_checkpointing=False)


class Recorder(Logger):
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []
        self.hparams: dict[str, Any] | None = None

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        self.hparams = params

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.rows.append((step, dict(metrics)))

    def values(self, name: str) -> list[tuple[int, float]]:
        return [(step, m[name]) for step, m in self.rows if name in m]


class Regressor(tt.TaskModule):
    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Linear(3, 1)

    def compute_loss(self, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def _loader(n: int, batch_size: int, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(
        TensorDataset(torch.randn(n, 3, generator=g), torch.randn(n, 1, generator=g)), batch_size
    )


# -- fit, FitResult ------------------------------------------------------------------------------


def test_fit_trains_and_returns_a_fit_result():
    torch.manual_seed(0)
    module = Regressor(lr=0.1)
    loader = _loader(32, 8)
    before = tt.Trainer(**QUIET).validate(module, loader)[0]["val/loss"]
    result = tt.Trainer(max_epochs=5, **QUIET).fit(module, loader)
    after = tt.Trainer(**QUIET).validate(module, loader)[0]["val/loss"]

    assert isinstance(result, tt.FitResult)
    assert result.global_step == 20
    assert after < before
    assert math.isfinite(result.train_loss)
    for key in ("train_runtime", "train_samples_per_second", "train_steps_per_second"):
        assert result.metrics[key] > 0
    assert "train_tokens_per_second" not in result.metrics
    runtime = result.metrics["train_runtime"]
    assert result.metrics["train_steps_per_second"] == pytest.approx(20 / runtime)
    assert result.metrics["train_samples_per_second"] == pytest.approx(5 * 32 / runtime)


def test_tokens_per_second_only_with_count_items():
    class Counting(Regressor):
        def count_items(self, batch):
            return int(batch[0].shape[0]) * 10  # "tokens"

    trainer = tt.Trainer(max_epochs=1, **QUIET)
    result = trainer.fit(Counting(), _loader(12, 4))
    assert trainer.items_seen == 120
    assert result.metrics["train_tokens_per_second"] == pytest.approx(120 / result.metrics["train_runtime"])
    assert (
        "train_tokens_per_second"
        not in tt.Trainer(max_epochs=1, **QUIET).fit(Regressor(), _loader(12, 4)).metrics
    )


def test_train_loss_is_the_mean_of_the_step_losses():
    losses: list[float] = []

    class Recording(Regressor):
        def training_step(self, batch, batch_idx):
            loss = self.compute_loss(batch)
            losses.append(loss.item())
            return loss

    result = tt.Trainer(max_epochs=2, **QUIET).fit(Recording(), _loader(12, 4))
    assert len(losses) == 6
    assert result.train_loss == pytest.approx(sum(losses) / 6)


def test_max_steps_stops_mid_epoch():
    trainer = tt.Trainer(max_steps=3, **QUIET)
    assert trainer.fit(Regressor(), _loader(40, 4)).global_step == 3
    assert trainer.state.epoch == 0


def test_max_epochs_zero_trains_nothing():
    result = tt.Trainer(max_epochs=0, **QUIET).fit(Regressor(), _loader(8, 4))
    assert result.global_step == 0


def test_limit_train_batches():
    trainer = tt.Trainer(max_epochs=2, limit_train_batches=3, **QUIET)
    assert trainer.fit(Regressor(), _loader(40, 4)).global_step == 6
    trainer = tt.Trainer(max_epochs=1, limit_train_batches=0.5, **QUIET)
    assert trainer.fit(Regressor(), _loader(40, 4)).global_step == 5


def test_empty_training_data_raises():
    with pytest.raises(ValueError, match="no batches"):
        tt.Trainer(max_epochs=1, **QUIET).fit(Regressor(), DataLoader(TensorDataset(torch.zeros(0, 3)), 2))


def test_fit_rejects_a_plain_module():
    with pytest.raises(TypeError, match="expects a TaskModule"):
        tt.Trainer(**QUIET).fit(torch.nn.Linear(1, 1), _loader(4, 2))


def test_validate_without_dataloader_names_the_hook():
    with pytest.raises(ValueError, match="val_dataloader"):
        tt.Trainer(**QUIET).validate(Regressor())


def test_on_nonfinite_loss_raise_names_the_step():
    class NaN(Regressor):
        def compute_loss(self, batch):
            loss = super().compute_loss(batch)
            return loss * float("nan") if self.global_step == 1 else loss

    with pytest.raises(FloatingPointError, match=r"step 1 \(micro-batch 1 of 2"):
        tt.Trainer(max_steps=3, accumulate_grad_batches=2, **QUIET).fit(NaN(), _loader(16, 2))


# -- logging: steps ------------------------------------------------------------------------------


def test_train_loss_logged_is_the_mean_of_step_losses_over_the_interval():
    losses: list[float] = []

    class Recording(Regressor):
        def training_step(self, batch, batch_idx):
            loss = self.compute_loss(batch)
            losses.append(loss.item())
            return loss

    rec = Recorder()
    trainer = tt.Trainer(
        max_epochs=1, log_every_n_steps=2, logger=rec, enable_progress_bar=False, enable_checkpointing=False
    )
    trainer.fit(Recording(), _loader(10, 2))  # 5 steps: logged at 2, 4 and 5 (epoch end)
    logged = rec.values("train/loss")
    assert [step for step, _ in logged] == [2, 4, 5]
    expected = [sum(losses[0:2]) / 2, sum(losses[2:4]) / 2, losses[4]]
    assert [v for _, v in logged] == pytest.approx(expected)


def test_train_loss_with_accumulation_is_the_mean_over_micro_batches():
    losses: list[float] = []

    class Recording(Regressor):
        def training_step(self, batch, batch_idx):
            loss = self.compute_loss(batch)
            losses.append(loss.item())
            return loss

    rec = Recorder()
    trainer = tt.Trainer(
        max_steps=2,
        accumulate_grad_batches=3,
        log_every_n_steps=1,
        logger=rec,
        enable_progress_bar=False,
        enable_checkpointing=False,
    )
    trainer.fit(Recording(), _loader(20, 2))
    logged = [v for _, v in rec.values("train/loss")]
    assert logged == pytest.approx([sum(losses[0:3]) / 3, sum(losses[3:6]) / 3])


def test_user_logged_train_loss_is_not_overwritten():
    class Own(Regressor):
        def training_step(self, batch, batch_idx):
            self.log("train/loss", 123.0)
            return super().training_step(batch, batch_idx)

    rec = Recorder()
    tt.Trainer(
        max_steps=2, log_every_n_steps=1, logger=rec, enable_progress_bar=False, enable_checkpointing=False
    ).fit(Own(), _loader(8, 2))
    assert [v for _, v in rec.values("train/loss")] == [123.0, 123.0]


def test_hparams_go_to_the_logger():
    rec = Recorder()
    tt.Trainer(max_steps=1, logger=rec, enable_progress_bar=False, enable_checkpointing=False).fit(
        Regressor(lr=0.25), _loader(4, 2)
    )
    assert rec.hparams == {"lr": 0.25}


# -- logging: epochs -----------------------------------------------------------------------------


class SizeLogger(Regressor):
    """Logs each batch's own size: the epoch value is then sum(size^2) / sum(size)."""

    def training_step(self, batch, batch_idx):
        self.log("train/size", float(batch[0].shape[0]), on_step=False, on_epoch=True)
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.log("val/size", float(batch[0].shape[0]))
        self.log("val/explicit", float(batch_idx), batch_size=batch_idx + 1)


def _weighted(sizes: list[int]) -> float:
    return sum(s * s for s in sizes) / sum(sizes)


def test_training_epoch_values_are_batch_size_weighted():
    rec = Recorder()
    trainer = tt.Trainer(max_epochs=2, logger=rec, enable_progress_bar=False, enable_checkpointing=False)
    trainer.fit(SizeLogger(), _loader(10, 4), _loader(10, 4))
    assert [v for _, v in rec.values("val/size")] == pytest.approx([3.6, 3.6])
    assert [v for _, v in rec.values("train/size")] == pytest.approx([_weighted([4, 4, 2])] * 2)
    assert [step for step, _ in rec.values("train/size")] == [3, 6]


def test_callback_metrics_and_fit_result_hold_the_latest_values():
    trainer = tt.Trainer(max_epochs=2, **QUIET)
    result = trainer.fit(SizeLogger(), _loader(10, 4), _loader(10, 4))
    for name in ("train/loss", "train/size", "val/size", "val/explicit"):
        assert name in trainer.callback_metrics
        assert result.metrics[name] == trainer.callback_metrics[name]


def test_prog_bar_metrics():
    trainer = tt.Trainer(max_epochs=1, **QUIET)
    trainer.fit(Regressor(), _loader(8, 4), _loader(8, 4))
    assert "val/loss" in trainer.progress_bar_metrics  # the default validation_step logs with prog_bar


# -- properties ----------------------------------------------------------------------------------


def test_steps_per_epoch_and_estimated_stepping_batches():
    seen: dict[str, Any] = {}

    class Probe(Callback):
        def on_train_start(self, trainer, module):
            seen["per_epoch"] = trainer.steps_per_epoch
            seen["total"] = trainer.estimated_stepping_batches

    trainer = tt.Trainer(max_epochs=3, accumulate_grad_batches=4, callbacks=[Probe()], **QUIET)
    trainer.fit(Regressor(), _loader(20, 2))  # 10 micro-batches -> 3 steps per epoch (4, 4, 2)
    assert seen == {"per_epoch": 3, "total": 9}
    assert trainer.state.global_step == 9

    trainer = tt.Trainer(max_epochs=3, max_steps=5, accumulate_grad_batches=4, callbacks=[Probe()], **QUIET)
    trainer.fit(Regressor(), _loader(20, 2))
    assert seen["total"] == 5


def test_save_checkpoint_needs_a_module(tmp_path):
    with pytest.raises(RuntimeError, match="needs a module"):
        tt.Trainer(**QUIET).save_checkpoint(str(tmp_path / "x"))


def test_default_checkpointing_writes_under_default_root_dir(tmp_path):
    trainer = tt.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(Regressor(), _loader(8, 4))
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints == ["step=00000004"]  # keep_last=1 by default
    assert (tmp_path / "checkpoints" / "step=00000004" / "model.safetensors").exists()


def test_default_logger_writes_csv(tmp_path):
    tt.Trainer(
        max_steps=2,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    ).fit(Regressor(), _loader(8, 4))
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert (tmp_path / "csv" / "version_0" / "hparams.json").exists()


def test_seed_makes_runs_repeatable():
    results = []
    for _ in range(2):
        tt.seed_everything(3)
        module = Regressor()
        loader = DataLoader(_loader(16, 4).dataset, batch_size=4, shuffle=True)
        tt.Trainer(max_epochs=2, seed=7, **QUIET).fit(module, loader)
        results.append(module.net.weight.detach().clone())
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)
