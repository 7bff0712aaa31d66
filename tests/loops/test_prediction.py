"""``PredictionLoop``: ``predict_step`` over a dataloader, every output collected in dataset order.

Proves that the default ``predict_step`` returns the module's own forward, batch by batch in dataset
order, that outputs of any type come back as returned, that the module runs in eval mode without
gradients and gets its mode back, that ``limit_batches`` cuts the run, and that ``batch_progress``
counts the batches.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
from tasktrain.loops import PredictionLoop


class _Task(tt.TaskModule):
    def __init__(self, calls: list[tuple[Any, ...]]) -> None:
        super().__init__()
        self.calls = calls
        self.net = torch.nn.Linear(2, 1)

    def compute_loss(self, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def predict_step(self, batch, batch_idx):
        return self.net(batch[0])


def _loader(n: int, batch_size: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(
        TensorDataset(torch.randn(n, 2, generator=g), torch.randn(n, 1, generator=g)), batch_size
    )


def _trainer(**kwargs: Any) -> tt.Trainer:
    defaults: dict[str, Any] = dict(logger=False, enable_progress_bar=False, enable_checkpointing=False)
    return tt.Trainer(**{**defaults, **kwargs})


class Net(tt.TaskModule):
    """A module whose default ``predict_step`` is ``self(batch)``: a plain forward of a tensor batch."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Dropout(0.5), torch.nn.Linear(4, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def compute_loss(self, batch):
        return self(batch).pow(2).mean()


def _rows(n: int) -> torch.Tensor:
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(1))


def _batches(data: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """``data`` cut in dataset order, as a non-shuffling DataLoader reads it."""
    return [data[i : i + batch_size] for i in range(0, len(data), batch_size)]


# -- outputs -------------------------------------------------------------------------------------


def test_predict_returns_outputs_in_order():
    loader = _loader(7, 3)
    module = _Task([])
    outputs = _trainer().predict(module, loader)
    assert len(outputs) == 3
    with torch.no_grad():
        expected = torch.cat([module.net(x) for x, _ in loader])
    torch.testing.assert_close(torch.cat(outputs), expected)


def test_default_predict_step_outputs_are_the_module_forward_in_dataset_order(quiet: dict[str, Any]) -> None:
    torch.manual_seed(0)
    module = Net()
    data = _rows(7)

    outputs = tt.Trainer(**quiet).predict(module, DataLoader(data, batch_size=3))

    module.eval()  # the reference forward: eval mode (no dropout), no gradients
    with torch.no_grad():
        expected = [module(batch) for batch in _batches(data, 3)]
    assert [out.shape for out in outputs] == [(3, 2), (3, 2), (1, 2)]
    assert all(torch.equal(out, ref) for out, ref in zip(outputs, expected, strict=True))
    assert not any(out.requires_grad for out in outputs)


def test_a_custom_predict_step_output_is_collected_as_returned(quiet: dict[str, Any]) -> None:
    returned: list[dict[str, Any]] = []

    class Dicts(Net):
        def predict_step(self, batch, batch_idx):
            out = {"batch_idx": batch_idx, "rows": len(batch), "y": self(batch), "tag": f"b{batch_idx}"}
            returned.append(out)
            return out

    outputs = tt.Trainer(**quiet).predict(Dicts(), DataLoader(_rows(5), batch_size=2))

    assert len(outputs) == len(returned) == 3
    assert all(out is ref for out, ref in zip(outputs, returned, strict=True))  # the very objects
    assert [(out["batch_idx"], out["rows"], out["tag"]) for out in outputs] == [
        (0, 2, "b0"),
        (1, 2, "b1"),
        (2, 1, "b2"),
    ]


# -- eval mode, no gradients ---------------------------------------------------------------------


@pytest.mark.parametrize("was_training", [True, False], ids=["from-train", "from-eval"])
def test_predict_runs_in_eval_mode_without_grad_and_restores_the_mode(
    quiet: dict[str, Any], was_training: bool
) -> None:
    seen: list[tuple[bool, bool, bool]] = []

    class Probe(Net):
        def predict_step(self, batch, batch_idx):
            seen.append((self.training, self.net[1].training, torch.is_grad_enabled()))
            return super().predict_step(batch, batch_idx)

    module = Probe()
    module.train(was_training)
    tt.Trainer(**quiet).predict(module, DataLoader(_rows(4), batch_size=2))

    assert seen == [(False, False, False)] * 2
    assert module.training is was_training
    assert module.net[1].training is was_training
    assert torch.is_grad_enabled()


def test_predict_restores_the_mode_when_a_step_fails(quiet: dict[str, Any]) -> None:
    class Failing(Net):
        def predict_step(self, batch, batch_idx):
            raise RuntimeError("boom")

    module = Failing()
    module.train()
    with pytest.raises(RuntimeError, match="boom"):
        tt.Trainer(**quiet).predict(module, DataLoader(_rows(4), batch_size=2))
    assert module.training


# -- limit_batches -------------------------------------------------------------------------------


# 7 rows in batches of 2: 4 batches (2, 2, 2, 1).
@pytest.mark.parametrize(
    ("limit", "num_batches"),
    [(None, 4), (2, 2), (0, 0), (10, 4), (0.5, int(4 * 0.5)), (0.8, int(4 * 0.8)), (1.0, 4)],
    ids=["none", "int", "zero", "int-past-the-end", "half", "fraction-rounds-down", "whole"],
)
def test_limit_batches_predicts_only_the_first_batches(
    quiet: dict[str, Any], limit: int | float | None, num_batches: int
) -> None:
    module = Net()
    data = _rows(7)
    trainer = tt.Trainer(**quiet)
    trainer.predict_loop = PredictionLoop(limit_batches=limit)

    outputs = trainer.predict(module, DataLoader(data, batch_size=2))

    module.eval()
    with torch.no_grad():
        expected = [module(batch) for batch in _batches(data, 2)[:num_batches]]
    assert len(outputs) == num_batches
    assert all(torch.equal(out, ref) for out, ref in zip(outputs, expected, strict=True))


def test_a_fractional_limit_on_a_loader_without_length_is_refused(quiet: dict[str, Any]) -> None:
    trainer = tt.Trainer(**quiet)
    trainer.predict_loop = PredictionLoop(limit_batches=0.5)
    unsized = (batch for batch in _batches(_rows(4), 2))  # an iterable of batches, no len()
    with pytest.raises(ValueError, match="is a fraction, but the dataloader has no length"):
        trainer.predict(Net(), unsized)


# -- batch_progress ------------------------------------------------------------------------------


def _counts(progress: Any, which: str) -> int:
    counts = getattr(progress, which)
    assert counts.ready == counts.started == counts.processed == counts.completed
    return counts.completed


def test_batch_progress_counts_batches_in_total_over_calls_and_current_per_call(
    quiet: dict[str, Any],
) -> None:
    module = Net()
    trainer = tt.Trainer(**quiet)
    first, second = (
        DataLoader(_rows(7), batch_size=3),
        DataLoader(_rows(4), batch_size=2),
    )  # 3, then 2 batches
    progress = trainer.predict_loop.batch_progress
    assert _counts(progress, "total") == _counts(progress, "current") == 0

    trainer.predict(module, first)
    assert _counts(progress, "total") == _counts(progress, "current") == len(first)

    trainer.predict(module, second)
    assert _counts(progress, "total") == len(first) + len(second)
    assert _counts(progress, "current") == len(second)


def test_batch_progress_counts_only_the_batches_run(quiet: dict[str, Any]) -> None:
    trainer = tt.Trainer(**quiet)
    trainer.predict_loop = PredictionLoop(limit_batches=2)
    for _ in range(2):
        trainer.predict(Net(), DataLoader(_rows(20), batch_size=2))  # 10 batches, 2 run
    assert _counts(trainer.predict_loop.batch_progress, "total") == 2 + 2
    assert _counts(trainer.predict_loop.batch_progress, "current") == 2
