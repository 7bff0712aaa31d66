"""``Cadence``: when training writes its step logs and when it validates, seen through the Trainer.

Proves that step values are written every ``log_every_n_steps``; that validation runs after every
``val_check_interval`` optimizer steps counted from the start of training (an int) or within each
epoch (a float fraction of its steps), at the end of every ``check_val_every_n_epoch``-th epoch, never
twice at one step and not at all without that schedule; and that validating leaves the training
trajectory exactly as it is without validation.
"""

from __future__ import annotations

import csv
import uuid
from typing import Any

import fsspec
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import tasktrain as tt
from tasktrain.callbacks import Callback
from tasktrain.loggers import CSVLogger


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


# -- step logs -----------------------------------------------------------------------------------


def test_step_values_are_flushed_every_log_every_n_steps_to_csv():
    class Logs(Regressor):
        def training_step(self, batch, batch_idx):
            self.log("my/float", float(batch_idx))
            self.log("my/tensor", torch.tensor(10.0 * batch_idx))
            return super().training_step(batch, batch_idx)

    root = f"memory://tt-{uuid.uuid4().hex}"
    logger = CSVLogger(root)
    # 7 micro-batches, accumulation 1: steps 1..7, logged at 3 and 6, and the rest at epoch end (7)
    trainer = tt.Trainer(
        max_epochs=1,
        log_every_n_steps=3,
        logger=logger,
        enable_progress_bar=False,
        enable_checkpointing=False,
    )
    trainer.fit(Logs(), _loader(14, 2))

    with fsspec.open(f"{logger.log_dir}/metrics.csv", "r") as f:
        rows = list(csv.DictReader(f))
    stepped = [r for r in rows if r["my/float"] != ""]
    assert [int(r["step"]) for r in stepped] == [3, 6, 7]
    # the latest value logged in the interval: batch_idx of the step's micro-batch
    assert [float(r["my/float"]) for r in stepped] == [2.0, 5.0, 6.0]
    assert [float(r["my/tensor"]) for r in stepped] == [20.0, 50.0, 60.0]
    assert all(r["train/loss"] != "" for r in stepped)


# -- when validation runs ------------------------------------------------------------------------

STEPS = 5  # optimizer steps per epoch: 10 samples in batches of 2, no accumulation


class ValidationSteps(Callback):
    """The global step at each validation run."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_validation_start(self, trainer, module):
        self.steps.append(trainer.state.global_step)


def _validation_steps(quiet: dict[str, Any], epochs: int, **kwargs: Any) -> list[int]:
    record = ValidationSteps()
    trainer = tt.Trainer(max_epochs=epochs, callbacks=[record], **quiet, **kwargs)
    train = _loader(2 * STEPS, 2)
    assert len(train) == STEPS
    trainer.fit(Regressor(), train, _loader(4, 2))
    assert trainer.state.global_step == epochs * STEPS
    return record.steps


def _epoch_ends(epochs: int, every: int = 1) -> set[int]:
    """The global step at the end of every ``every``-th epoch."""
    return {STEPS * (epoch + 1) for epoch in range(epochs) if (epoch + 1) % every == 0}


def test_an_int_val_check_interval_counts_steps_from_the_start_of_training(quiet: dict[str, Any]) -> None:
    steps = _validation_steps(quiet, epochs=2, val_check_interval=2)

    by_interval = {step for step in range(1, 2 * STEPS + 1) if step % 2 == 0}  # 2, 4, 6, 8, 10
    # ... and at each epoch end (5, 10), but only once at 10, where the interval already validated.
    assert steps == sorted(by_interval | _epoch_ends(2))
    assert steps == [2, 4, 5, 6, 8, 10]


def test_a_float_val_check_interval_is_a_fraction_of_each_epoch(quiet: dict[str, Any]) -> None:
    steps = _validation_steps(quiet, epochs=2, val_check_interval=0.5)

    every = int(STEPS * 0.5)  # 2 steps into each epoch, counted afresh in every epoch
    by_fraction = {epoch * STEPS + k for epoch in range(2) for k in range(1, STEPS + 1) if k % every == 0}
    assert steps == sorted(by_fraction | _epoch_ends(2))
    assert steps == [2, 4, 5, 7, 9, 10]  # not 6 and 8: the second epoch starts counting at step 5


def test_a_fraction_that_ends_on_the_epoch_end_validates_there_once(quiet: dict[str, Any]) -> None:
    steps = _validation_steps(quiet, epochs=2, val_check_interval=1.0)

    assert steps == sorted(_epoch_ends(2))
    assert steps == [5, 10]


def test_check_val_every_n_epoch_validates_at_the_end_of_every_nth_epoch(quiet: dict[str, Any]) -> None:
    steps = _validation_steps(quiet, epochs=4, check_val_every_n_epoch=2)

    assert steps == sorted(_epoch_ends(4, every=2))
    assert steps == [10, 20]


def test_an_interval_without_epoch_end_validation(quiet: dict[str, Any]) -> None:
    steps = _validation_steps(quiet, epochs=2, val_check_interval=2, check_val_every_n_epoch=None)

    assert steps == [step for step in range(1, 2 * STEPS + 1) if step % 2 == 0]
    assert steps == [2, 4, 6, 8, 10]  # no run at step 5


@pytest.mark.parametrize(
    "kwargs",
    [dict(check_val_every_n_epoch=None), dict(val_check_interval=2, limit_val_batches=0)],
    ids=["no-schedule", "limit-zero"],
)
def test_no_validation_without_a_schedule_or_batches(quiet: dict[str, Any], kwargs: dict[str, Any]) -> None:
    assert _validation_steps(quiet, epochs=2, **kwargs) == []


class _Unsized(IterableDataset):
    def __init__(self, data: TensorDataset) -> None:
        self.data = data

    def __iter__(self):
        return iter(self.data)


def test_a_fractional_interval_needs_a_training_loader_with_length(quiet: dict[str, Any]) -> None:
    train = DataLoader(_Unsized(_loader(8, 2).dataset), batch_size=2)
    with pytest.raises(ValueError, match=r"val_check_interval=0.5 is a fraction of an epoch.*no length"):
        tt.Trainer(max_epochs=1, val_check_interval=0.5, **quiet).fit(Regressor(), train, _loader(4, 2))
    record = ValidationSteps()
    tt.Trainer(max_epochs=1, val_check_interval=2, callbacks=[record], **quiet).fit(
        Regressor(), train, _loader(4, 2)
    )
    assert record.steps == [
        2,
        4,
    ]  # an int interval needs no length (4 steps; epoch end at 4 is not run twice)


# -- validation leaves training alone ------------------------------------------------------------


class Noisy(tt.TaskModule):
    """Dropout in training: each step draws from the global torch RNG, as does the shuffling loader."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))

    def compute_loss(self, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class DrawAfterEachStep(Callback):
    """Takes one number from the global RNG after every step, as an unprotected validation would."""

    def on_train_step_end(self, trainer, module):
        torch.rand(())


def _fit_weights(
    quiet: dict[str, Any], val: DataLoader | None, callbacks: list[Callback]
) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    module = Noisy()
    train = DataLoader(_loader(16, 4).dataset, batch_size=4, shuffle=True)
    trainer = tt.Trainer(max_epochs=3, val_check_interval=1, callbacks=callbacks, **quiet)
    trainer.fit(module, train, val)
    return module.state_dict()


def test_validation_inside_fit_does_not_change_the_training_trajectory(quiet: dict[str, Any]) -> None:
    record = ValidationSteps()
    with_validation = _fit_weights(quiet, _loader(8, 2), [record])
    without = _fit_weights(quiet, None, [])

    assert record.steps == list(range(1, 3 * 4 + 1))  # validated after every one of the 12 steps
    assert with_validation.keys() == without.keys()
    assert all(torch.equal(with_validation[name], without[name]) for name in without)
    # The premise: one random draw between steps is enough to change the weights.
    drawn = _fit_weights(quiet, None, [DrawAfterEachStep()])
    assert not all(torch.equal(drawn[name], without[name]) for name in without)
