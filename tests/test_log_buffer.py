"""LogBuffer: step values, batch-size-weighted epoch values, torchmetrics metrics, publishing."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics import MeanMetric

from tasktrain.log_buffer import LogBuffer, batch_size_of, is_metric
from tasktrain.loggers import Logger


class Recorder(Logger):
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.rows.append((step, dict(metrics)))


def test_training_defaults_to_step_values():
    buf = LogBuffer(loggers=[])
    buf.begin("train")
    buf.log("a", 1.0)
    buf.log("a", torch.tensor(2.0))  # the latest value of the interval wins
    assert buf.has_step_value("a")
    assert buf.flush_step(step=3) == {"a": 2.0}
    assert not buf.has_step_value("a")
    assert buf.flush_epoch(step=3) == {}  # nothing was logged on_epoch


def test_evaluation_defaults_to_epoch_values():
    buf = LogBuffer(loggers=[])
    buf.begin("validate")
    buf.log("v", 1.0, batch_size=1)
    assert not buf.has_step_value("v")
    assert buf.flush_step(step=0) == {}
    assert buf.flush_epoch(step=0) == {"v": 1.0}


def test_epoch_mean_is_weighted_by_batch_size():
    buf = LogBuffer(loggers=[])
    buf.begin("validate")
    for value, batch in [(1.0, torch.zeros(4, 2)), (2.0, torch.zeros(4, 2)), (4.0, torch.zeros(1, 2))]:
        buf.current_batch = (batch, torch.zeros(batch.shape[0]))
        buf.log("v", torch.tensor(value))
    assert buf.flush_epoch(step=0)["v"] == pytest.approx((1 * 4 + 2 * 4 + 4 * 1) / 9)


def test_explicit_batch_size_wins_over_the_batch():
    buf = LogBuffer(loggers=[])
    buf.begin("validate")
    buf.current_batch = torch.zeros(100)
    buf.log("v", 1.0, batch_size=1)
    buf.log("v", 3.0, batch_size=3)
    assert buf.flush_epoch(step=0)["v"] == pytest.approx((1 + 9) / 4)


def test_on_step_and_on_epoch_together_in_training():
    buf = LogBuffer(loggers=[])
    buf.begin("train")
    buf.log("x", 1.0, on_step=True, on_epoch=True, batch_size=1)
    assert buf.flush_step(1) == {"x": 1.0}
    buf.log("x", 3.0, on_step=True, on_epoch=True, batch_size=1)
    assert buf.flush_step(2) == {"x": 3.0}
    assert buf.flush_epoch(2) == {"x": 2.0}
    assert buf.flush_epoch(2) == {}  # epoch values start over


def test_metric_is_computed_and_reset_at_epoch_end():
    metric = MeanMetric()
    buf = LogBuffer(loggers=[])
    buf.begin("validate")
    metric.update(torch.tensor([1.0, 2.0, 3.0]))
    buf.log("m", metric)
    metric.update(torch.tensor([6.0]))
    buf.log("m", metric)
    assert buf.flush_epoch(step=0) == {"m": 3.0}
    assert metric.update_count == 0  # reset
    buf.begin("validate")
    metric.update(torch.tensor([10.0]))
    buf.log("m", metric)
    assert buf.flush_epoch(step=1) == {"m": 10.0}


def test_metric_in_training_defaults_to_epoch():
    metric = MeanMetric()
    buf = LogBuffer(loggers=[])
    buf.begin("train")
    metric.update(torch.tensor(4.0))
    buf.log("m", metric)
    assert buf.flush_step(1) == {}
    assert buf.flush_epoch(1) == {"m": 4.0}


def test_stages_keep_their_epoch_values_apart():
    buf = LogBuffer(loggers=[])
    buf.begin("train")
    buf.log("t", 1.0, on_epoch=True, on_step=False, batch_size=1)
    buf.begin("validate")  # a validation run in the middle of a training epoch
    buf.log("v", 5.0, batch_size=1)
    assert buf.flush_epoch(0) == {"v": 5.0}
    buf.resume("train")
    buf.log("t", 3.0, on_epoch=True, on_step=False, batch_size=1)
    assert buf.flush_epoch(0) == {"t": 2.0}


def test_publish_to_loggers_callback_and_progress_bar_metrics():
    rec = Recorder()
    buf = LogBuffer(loggers=[rec])
    buf.begin("train")
    buf.log("loss", 0.5, prog_bar=True)
    buf.log("other", 1.0)
    buf.flush_step(step=10, extra={"lr": 0.1})
    assert rec.rows == [(10, {"lr": 0.1, "loss": 0.5, "other": 1.0})]
    assert buf.callback_metrics == {"lr": 0.1, "loss": 0.5, "other": 1.0}
    assert buf.progress_bar_metrics == {"loss": 0.5}
    buf.flush_step(step=11)  # nothing new: loggers are not called
    assert len(rec.rows) == 1


def test_sync_dist_reduces_sum_and_weight():
    calls = []

    def reduce(tensor, op):
        calls.append(op)
        return tensor * 2  # as if a second rank logged the same values

    buf = LogBuffer(loggers=[], reduce=reduce)
    buf.begin("validate")
    buf.log("v", 1.0, batch_size=2, sync_dist=True)
    buf.log("w", 1.0, batch_size=2)
    assert buf.flush_epoch(0) == {"v": 1.0, "w": 1.0}
    assert calls == ["sum"]  # only the sync_dist value is reduced


def test_sync_dist_step_values_are_reduced_once_per_flush_not_per_log():
    calls = []

    def reduce(tensor, op):
        calls.append((op, tuple(tensor.shape)))
        return tensor + 1  # stands in for the collective, so the written values show it ran

    buf = LogBuffer(loggers=[], reduce=reduce)
    buf.begin("train")
    for step in range(3):  # three steps in one logging interval: the latest value is written
        buf.log("a", torch.tensor(float(step)), sync_dist=True)
        buf.log("b", 10.0 * step, sync_dist=True)
        buf.log("local", torch.tensor(5.0))
    assert calls == []  # logging alone never reduces
    assert buf.flush_step(3) == {"a": 3.0, "b": 21.0, "local": 5.0}
    assert calls == [("mean", (2,))]  # one collective for both synced values
    buf.log("local", 1.0)
    buf.flush_step(4)
    assert len(calls) == 1  # nothing synced in this interval: no collective


def test_sync_dist_epoch_values_are_reduced_in_one_collective():
    calls = []

    def reduce(tensor, op):
        calls.append((op, tuple(tensor.shape)))
        return tensor * 2

    buf = LogBuffer(loggers=[], reduce=reduce)
    buf.begin("validate")
    for _ in range(4):
        buf.log("x", 1.0, batch_size=2, sync_dist=True)
        buf.log("y", torch.tensor(3.0), batch_size=1, sync_dist=True)
    assert buf.flush_epoch(0) == {"x": 1.0, "y": 3.0}
    assert calls == [("sum", (2, 2))]  # [weighted sum, weight] of both names, one all_reduce


def test_zero_weight_gives_nan():
    buf = LogBuffer(loggers=[])
    buf.begin("validate")
    buf.log("v", 1.0, batch_size=0)
    assert math.isnan(buf.flush_epoch(0)["v"])


def test_values_of_any_number_type_are_read_as_floats():
    buf = LogBuffer(loggers=[])
    buf.begin("train")
    buf.log("one_element", torch.tensor([2.5]))
    buf.log("int", 3)
    buf.log("bf16", torch.tensor(0.5, dtype=torch.bfloat16))
    buf.log("long", torch.tensor(7))
    assert buf.flush_step(1) == {"one_element": 2.5, "int": 3.0, "bf16": 0.5, "long": 7.0}


def test_a_non_scalar_value_or_metric_is_refused_by_name():
    from torchmetrics.classification import MulticlassConfusionMatrix

    buf = LogBuffer(loggers=[])
    buf.begin("train")
    buf.log("vector", torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"log\('vector'\).*one-element tensor, got shape \(2,\)"):
        buf.flush_step(1)
    matrix = MulticlassConfusionMatrix(num_classes=3)
    matrix.update(torch.tensor([0, 1]), torch.tensor([0, 2]))
    buf.begin("validate")
    buf.log("val/confusion", matrix)
    with pytest.raises(ValueError, match=r"log\('val/confusion'\).*got shape \(3, 3\).*confusion matrix"):
        buf.flush_epoch(1)


def test_batch_size_of():
    assert batch_size_of(torch.zeros(5, 3)) == 5
    assert batch_size_of((torch.zeros(7), torch.zeros(7, 2))) == 7
    assert batch_size_of({"input_ids": torch.zeros(3, 9)}) == 3
    assert batch_size_of([[torch.zeros(2)]]) == 2
    assert batch_size_of(torch.tensor(1.0)) == 1
    assert batch_size_of(None) == 1


def test_is_metric_duck_typing():
    assert is_metric(MeanMetric())
    assert not is_metric(1.0)
    assert not is_metric(torch.tensor(1.0))


@pytest.mark.parametrize("stage", ["train", "validate"])
def test_synced_values_are_stacked_in_name_order_whatever_order_they_were_logged(stage):
    """Every rank must put the same name in the same row of the collective: two ranks logging in
    different orders (or keeping names in a set, whose order differs between processes) agree."""
    stacked = []

    def reduce(tensor, op):
        stacked.append(tensor.tolist())
        return tensor

    for order in (["zeta", "alpha", "mid"], ["mid", "zeta", "alpha"]):
        buf = LogBuffer(loggers=[], reduce=reduce)
        buf.begin(stage)
        for name in order:
            buf.log(name, {"alpha": 1.0, "mid": 2.0, "zeta": 3.0}[name], sync_dist=True, batch_size=1)
        buf.flush_step(step=1) if stage == "train" else buf.flush_epoch(step=1)
    assert stacked[0] == stacked[1]
    rows = [row[0] if isinstance(row, list) else row for row in stacked[0]]
    assert rows == [1.0, 2.0, 3.0]
