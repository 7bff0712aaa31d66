"""FitLoop: its state follows the object tree (the golden schema), progress counters, loading state."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
from tasktrain.checkpoint.codec import decode, encode
from tasktrain.loops import FitLoop

#: The golden schema of ``FitLoop.state_dict()``: changing it is a deliberate, CHANGELOG-worthy act.
FIT_LOOP_KEYS = {
    "epoch_progress",
    "epoch_loop.batch_progress",
    "epoch_loop.exhausted",
    "epoch_loop.epoch_start_rng",
    "epoch_loop.dataloader",
    "epoch_loop.accumulation.progress",
    "epoch_loop.optimization.progress",
    "epoch_loop.optimization.skipped",
    "epoch_loop.manual.progress",
    "epoch_loop.manual.optimizer_steps",
    "epoch_loop.manual.skipped_steps",
    "epoch_loop.cadence.val_loop.batch_progress",
    "epoch_loop.cadence.last_val_step",
}


def _as_saved(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` after a trip through the checkpoint encoding (strict JSON plus tensors)."""
    tensors: dict[str, torch.Tensor] = {}
    text = json.dumps(encode(state, tensors, "fit_loop"), allow_nan=False)
    return decode(json.loads(text), tensors)


class Task(tt.TaskModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(2, 1)

    def compute_loss(self, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader(n: int, batch_size: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(
        TensorDataset(torch.randn(n, 2, generator=g), torch.randn(n, 1, generator=g)), batch_size
    )


def _trainer(**kwargs: Any) -> tt.Trainer:
    defaults: dict[str, Any] = dict(logger=False, enable_progress_bar=False, enable_checkpointing=False)
    return tt.Trainer(**{**defaults, **kwargs})


def _counts(progress: dict[str, Any], which: str = "total") -> int:
    counts = progress[which]
    assert counts["ready"] == counts["started"] == counts["processed"] == counts["completed"]
    return counts["completed"]


def test_fresh_state_dict_keys_follow_the_object_tree():
    state = FitLoop().state_dict()
    assert set(state) == FIT_LOOP_KEYS
    json.dumps(state)  # before the first epoch there is no RNG snapshot: plain JSON


def test_state_dict_after_a_run_is_json_and_counts_the_work():
    trainer = _trainer(max_epochs=2, accumulate_grad_batches=2)
    # 10 samples in batches of 2: 5 micro-batches, groups [2, 2, 1] -> 3 optimizer steps per epoch.
    trainer.fit(Task(), _loader(10, 2), _loader(9, 3))
    state = _as_saved(trainer.fit_loop.state_dict())

    assert set(state) == FIT_LOOP_KEYS
    assert _counts(state["epoch_progress"]) == 2
    assert _counts(state["epoch_loop.batch_progress"]) == 10
    assert _counts(state["epoch_loop.batch_progress"], "current") == 5  # this epoch
    assert _counts(state["epoch_loop.accumulation.progress"]) == 10
    assert _counts(state["epoch_loop.accumulation.progress"], "current") == 1  # the remainder group
    assert _counts(state["epoch_loop.optimization.progress"]) == 6
    assert _counts(state["epoch_loop.optimization.skipped"]) == 0
    assert _counts(state["epoch_loop.cadence.val_loop.batch_progress"]) == 6  # 3 val batches x 2 epochs
    assert _counts(state["epoch_loop.cadence.val_loop.batch_progress"], "current") == 3
    assert state["epoch_loop.cadence.last_val_step"] == 6
    assert state["epoch_loop.exhausted"] is True  # the epoch's data is done: a resume starts the next one
    assert set(state["epoch_loop.epoch_start_rng"]) == {
        "python",
        "numpy",
        "torch_cpu",
        "torch_cuda",
        "generator",
    }
    assert trainer.totals.state_dict() == {
        "samples": {"value": 20},
        "items": {"value": 0},
        "losses": {"total": pytest.approx(trainer.totals.losses.total), "steps": 6},
    }
    assert trainer.state.global_step == 6
    assert trainer.state.epoch == 1


def test_max_steps_counts():
    trainer = _trainer(max_steps=4, accumulate_grad_batches=3)
    trainer.fit(Task(), _loader(12, 2))  # 6 micro-batches -> 2 steps per epoch
    state = trainer.fit_loop.state_dict()
    assert trainer.state.global_step == 4
    assert _counts(state["epoch_progress"]) == 2
    assert _counts(state["epoch_loop.accumulation.progress"]) == 12
    assert _counts(state["epoch_loop.optimization.progress"]) == 4


def test_load_state_dict_into_a_fresh_fit_loop_reproduces_it():
    trainer = _trainer(max_epochs=2, accumulate_grad_batches=2)
    trainer.fit(Task(), _loader(10, 2), _loader(9, 3))
    saved = _as_saved(trainer.fit_loop.state_dict())

    fresh = FitLoop()
    fresh.load_state_dict(saved)
    again = fresh.state_dict()
    rng, saved_rng = again.pop("epoch_loop.epoch_start_rng"), saved.pop("epoch_loop.epoch_start_rng")
    assert again == saved
    assert torch.equal(rng["torch_cpu"], saved_rng["torch_cpu"])
    assert torch.equal(rng["python"][1], saved_rng["python"][1])  # the Mersenne Twister words
    assert fresh.epoch_progress.total.completed == 2
    assert fresh.epoch_loop.optimization.progress.total.completed == 6


def test_load_state_dict_rolls_back_unfinished_work():
    loop = FitLoop()
    loop.epoch_progress.start()  # an epoch that started but never completed
    loop.epoch_loop.batch_progress.complete(3)
    loop.epoch_loop.batch_progress.start()
    state = json.loads(json.dumps(loop.state_dict()))

    fresh = FitLoop()
    fresh.load_state_dict(state)
    assert fresh.epoch_progress.total.started == 0
    assert fresh.epoch_progress.total.ready == 0
    assert fresh.epoch_loop.batch_progress.total.started == 3
    assert fresh.epoch_loop.batch_progress.total.completed == 3
