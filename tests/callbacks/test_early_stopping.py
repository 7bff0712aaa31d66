"""EarlyStopping: stop when the monitored metric stops improving."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
from tasktrain.callbacks import EarlyStopping

QUIET: dict[str, Any] = dict(logger=False, enable_progress_bar=False, enable_checkpointing=False)


def _loader(n: int = 8, batch_size: int = 4) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(
        TensorDataset(torch.randn(n, 2, generator=g), torch.randn(n, 1, generator=g)), batch_size
    )


class Scripted(tt.TaskModule):
    """Logs ``val/loss`` from a script, one value per validation run (by epoch)."""

    def __init__(self, values: list[float], log_train_metric: bool = False) -> None:
        super().__init__()
        self.values = values
        self.log_train_metric = log_train_metric
        self.net = torch.nn.Linear(2, 1)

    def compute_loss(self, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def training_step(self, batch, batch_idx):
        if self.log_train_metric:
            self.log("train/score", self.values[self.current_epoch], on_step=False, on_epoch=True)
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.values[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_stops_when_val_loss_stops_improving():
    # improves for 3 epochs, then flat: patience 2 -> 3 checks without improvement -> stop after epoch 5
    values = [5.0, 4.0, 3.0, 3.0, 3.0, 3.0, 1.0, 1.0, 1.0, 1.0]
    stopper = EarlyStopping("val/loss", patience=2)
    trainer = tt.Trainer(max_epochs=10, callbacks=[stopper], **QUIET)
    result = trainer.fit(Scripted(values), _loader(), _loader())

    assert trainer.state.should_stop
    assert result.global_step == 6 * 2 < 10 * 2  # 6 epochs of 2 steps
    assert stopper.stopped_at_step == 12
    assert stopper.best == 3.0
    assert stopper.wait == 3


def test_min_delta_and_max_mode():
    values = [1.0, 1.05, 1.09, 1.5, 1.6, 1.7]
    stopper = EarlyStopping("val/loss", mode="max", patience=1, min_delta=0.1)
    trainer = tt.Trainer(max_epochs=6, callbacks=[stopper], **QUIET)
    result = trainer.fit(Scripted(values), _loader(), _loader())
    # 1.05 and 1.09 do not beat 1.0 by more than 0.1: stop after epoch 3
    assert result.global_step == 3 * 2
    assert stopper.best == 1.0


def test_nan_never_counts_as_improvement():
    values = [2.0, math.nan, math.nan, math.nan, 0.5]
    stopper = EarlyStopping("val/loss", patience=1, check_finite=False)
    trainer = tt.Trainer(max_epochs=5, callbacks=[stopper], **QUIET)
    result = trainer.fit(Scripted(values), _loader(), _loader())
    assert result.global_step == 3 * 2  # two NaNs after 2.0 exceed patience 1
    assert stopper.best == 2.0


def test_non_finite_stops_at_once_with_check_finite():
    stopper = EarlyStopping("val/loss", patience=5)
    trainer = tt.Trainer(max_epochs=5, callbacks=[stopper], **QUIET)
    result = trainer.fit(Scripted([1.0, math.inf, 0.5, 0.4, 0.3]), _loader(), _loader())
    assert result.global_step == 2 * 2
    assert stopper.stopped_at_step == 4


def test_without_validation_checks_at_epoch_end():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    stopper = EarlyStopping("train/score", patience=0)
    trainer = tt.Trainer(max_epochs=5, callbacks=[stopper], **QUIET)
    result = trainer.fit(Scripted(values, log_train_metric=True), _loader())
    assert result.global_step == 2 * 2


def test_without_validation_monitors_the_train_loss():
    """``train/loss`` is logged by the trainer; epoch-end checks must see it even with rare log steps."""
    stopper = EarlyStopping("train/loss", patience=10)
    trainer = tt.Trainer(max_epochs=3, log_every_n_steps=50, callbacks=[stopper], **QUIET)
    result = trainer.fit(Scripted([1.0] * 3), _loader())
    assert result.global_step == 3 * 2
    assert math.isfinite(stopper.best)


def test_missing_monitor_names_available_metrics():
    stopper = EarlyStopping("val/accuracy")
    trainer = tt.Trainer(max_epochs=2, callbacks=[stopper], **QUIET)
    with pytest.raises(KeyError) as info:
        trainer.fit(Scripted([1.0, 1.0]), _loader(), _loader())
    message = str(info.value)
    assert "'val/accuracy'" in message
    assert "val/loss" in message  # what was logged


def test_a_monitor_typo_fails_at_the_first_check_with_the_close_match():
    stopper = EarlyStopping("val_loss")
    trainer = tt.Trainer(max_epochs=3, callbacks=[stopper], **QUIET)
    with pytest.raises(KeyError) as info:
        trainer.fit(Scripted([1.0] * 3), _loader(), _loader())
    assert str(info.value) == (
        "EarlyStopping: monitor='val_loss' was not logged; logged metrics: ['val/loss']; "
        "did you mean 'val/loss'?"
    )
    assert trainer.state.global_step == 2  # the first validation, at the end of the first epoch


def test_without_validation_a_monitor_typo_fails_at_the_first_epoch_end():
    stopper = EarlyStopping("train/los")
    trainer = tt.Trainer(max_epochs=3, callbacks=[stopper], **QUIET)
    with pytest.raises(KeyError, match=r"monitor='train/los' was not logged; .*did you mean 'train/loss'\?"):
        trainer.fit(Scripted([1.0] * 3), _loader())
    assert trainer.state.global_step == 2


def test_validate_alone_does_not_stop():
    stopper = EarlyStopping("val/loss", patience=0)
    trainer = tt.Trainer(callbacks=[stopper], **QUIET)
    for _ in range(3):
        trainer.validate(Scripted([1.0]), _loader())
    assert stopper.wait == 0
    assert not trainer.state.should_stop


def test_a_new_fit_starts_without_should_stop():
    stopper = EarlyStopping("val/loss", patience=0)
    trainer = tt.Trainer(max_epochs=3, callbacks=[stopper], **QUIET)
    trainer.fit(Scripted([1.0, 1.0, 1.0]), _loader(), _loader())
    assert trainer.state.should_stop
    trainer.fit_loop.max_epochs = 4
    steps_before = trainer.state.global_step
    trainer.fit(Scripted([1.0] * 4), _loader(), _loader())
    assert trainer.state.global_step > steps_before


def test_state_dict_round_trip():
    stopper = EarlyStopping("val/loss", patience=2)
    trainer = tt.Trainer(max_epochs=3, callbacks=[stopper], **QUIET)
    trainer.fit(Scripted([3.0, 2.0, 2.5]), _loader(), _loader())
    state = stopper.state_dict()
    assert state == {"best": 2.0, "wait": 1, "stopped_at_step": None}
    other = EarlyStopping("val/loss", patience=2)
    other.load_state_dict(state)
    assert (other.best, other.wait, other.stopped_at_step) == (2.0, 1, None)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        (dict(mode="avg"), "mode='avg'"),
        (dict(patience=-1), "patience=-1"),
        (dict(min_delta=-0.1), "min_delta"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], fragment: str):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(")):
        EarlyStopping(**kwargs)
