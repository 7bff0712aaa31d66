"""``monitored`` and ``close_match``: the one way a monitored metric is read, or reported missing.

Each consumer (EarlyStopping, ModelCheckpoint, a monitored LR scheduler, tune.search) has its own
tests of *when* it checks; these pin the message they share.
"""

from __future__ import annotations

import pickle

import pytest

from tasktrain.monitor import MonitorError, close_match, monitored


def test_a_logged_monitor_is_read_as_a_float():
    assert monitored({"val/loss": 1}, "val/loss", "EarlyStopping") == 1.0
    assert type(monitored({"val/loss": 1}, "val/loss", "EarlyStopping")) is float


def test_a_missing_monitor_names_who_the_monitor_and_the_logged_metrics():
    with pytest.raises(MonitorError) as info:
        monitored({"val/loss": 0.5, "train/loss": 0.7}, "val_loss", "ModelCheckpoint")
    assert str(info.value) == (
        "ModelCheckpoint: monitor='val_loss' was not logged; logged metrics: ['train/loss', 'val/loss']; "
        "did you mean 'val/loss'?"
    )
    assert isinstance(info.value, KeyError)  # ``except KeyError`` keeps working


def test_without_a_close_match_it_says_how_to_fix_it():
    with pytest.raises(KeyError) as info:
        monitored({"val/loss": 0.5}, "val/acc", "search")
    assert str(info.value) == (
        "search: monitor='val/acc' was not logged; logged metrics: ['val/loss'] "
        "(log it with self.log, or pass monitor= one of these)"
    )
    with pytest.raises(KeyError, match=r"logged metrics: none \(log it"):
        monitored({}, "val/loss", "EarlyStopping")


@pytest.mark.parametrize(
    "name, expected",
    [
        ("val_loss", "val/loss"),  # another separator
        ("Val/Loss", "val/loss"),  # case
        ("val.loss", "val/loss"),
        ("val/los", "val/loss"),  # a typo
        ("valid/loss", "val/loss"),
        ("train_acc", "train/acc"),
        ("val/acc", None),  # another metric of the same stage is not a suggestion
        ("loss", None),
        ("val/f1", None),
    ],
)
def test_close_match(name, expected):
    assert close_match(name, ["train/loss", "train/acc", "val/loss"]) == expected


def test_the_error_survives_pickling_between_processes():
    """Spawned ranks send their errors to the launching process."""
    error = pickle.loads(pickle.dumps(MonitorError("EarlyStopping: monitor='x' was not logged")))
    assert isinstance(error, MonitorError) and str(error) == "EarlyStopping: monitor='x' was not logged"
