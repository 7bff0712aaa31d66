"""Loop state: JSON state_dicts that follow the object tree, progress counters, replaceable loops."""

from __future__ import annotations

import json
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
from tasktrain.loops import AccumulationLoop, EpochLoop, EvaluationLoop, FitLoop, OptimizationStep
from tasktrain.state import Progress

#: The golden schema of ``FitLoop.state_dict()``: changing it is a deliberate, CHANGELOG-worthy act.
FIT_LOOP_KEYS = {
    "epoch_progress",
    "epoch_loop.batch_progress",
    "epoch_loop.losses",
    "epoch_loop.accumulation.progress",
    "epoch_loop.accumulation.samples_seen",
    "epoch_loop.accumulation.items_seen",
    "epoch_loop.optimization.progress",
    "epoch_loop.optimization.skipped",
    "epoch_loop.val_loop.batch_progress",
    "epoch_loop.last_val_step",
}


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
    json.dumps(state)


def test_state_dict_after_a_run_is_json_and_counts_the_work():
    trainer = _trainer(max_epochs=2, accumulate_grad_batches=2)
    # 10 samples in batches of 2: 5 micro-batches, groups [2, 2, 1] -> 3 optimizer steps per epoch.
    trainer.fit(Task(), _loader(10, 2), _loader(9, 3))
    state = json.loads(json.dumps(trainer.fit_loop.state_dict()))

    assert set(state) == FIT_LOOP_KEYS
    assert _counts(state["epoch_progress"]) == 2
    assert _counts(state["epoch_loop.batch_progress"]) == 10
    assert _counts(state["epoch_loop.batch_progress"], "current") == 5  # this epoch
    assert _counts(state["epoch_loop.accumulation.progress"]) == 10
    assert _counts(state["epoch_loop.accumulation.progress"], "current") == 1  # the remainder group
    assert _counts(state["epoch_loop.optimization.progress"]) == 6
    assert _counts(state["epoch_loop.optimization.skipped"]) == 0
    assert _counts(state["epoch_loop.val_loop.batch_progress"]) == 6  # 3 val batches x 2 epochs
    assert _counts(state["epoch_loop.val_loop.batch_progress"], "current") == 3
    assert state["epoch_loop.accumulation.samples_seen"] == {"value": 20}
    assert state["epoch_loop.accumulation.items_seen"] == {"value": 0}
    assert state["epoch_loop.losses"]["steps"] == 6
    assert state["epoch_loop.last_val_step"] == 6
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
    saved = json.loads(json.dumps(trainer.fit_loop.state_dict()))

    fresh = FitLoop()
    fresh.load_state_dict(saved)
    assert fresh.state_dict() == saved
    assert fresh.epoch_progress.total.completed == 2
    assert fresh.epoch_loop.optimization.progress.total.completed == 6
    assert fresh.epoch_loop.accumulation.samples_seen.value == 20
    assert fresh.epoch_loop.losses.steps == 6


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


def test_custom_loop_attributes_join_the_state_dict():
    class MyEpochLoop(EpochLoop):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.my_progress = Progress()

    loop = FitLoop(epoch_loop=MyEpochLoop())
    assert "epoch_loop.my_progress" in loop.state_dict()


# -- replacing loops ----------------------------------------------------------------------------


class RecordingEpochLoop(EpochLoop):
    """Counts advances and stops each epoch after ``steps_per_epoch`` optimizer steps."""

    def __init__(self, steps_per_epoch: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.steps_per_epoch = steps_per_epoch
        self.advances = 0
        self._epoch_start_step = 0

    def reset(self, ctx) -> None:
        super().reset(ctx)
        self._epoch_start_step = ctx.state.global_step

    def done(self, ctx) -> bool:
        return super().done(ctx) or ctx.state.global_step - self._epoch_start_step >= self.steps_per_epoch

    def advance(self, ctx) -> None:
        self.advances += 1
        super().advance(ctx)

    def on_run_end(self, ctx) -> None:
        super().on_run_end(ctx)
        self.exhausted = True  # a short epoch counts as a whole one


def test_replace_epoch_loop():
    trainer = _trainer(max_epochs=3)
    custom = RecordingEpochLoop(steps_per_epoch=2, accumulate_grad_batches=2)
    trainer.fit_loop.epoch_loop = custom
    result = trainer.fit(Task(), _loader(20, 2))

    assert trainer.fit_loop.epoch_loop is custom
    assert custom.advances == 6
    assert result.global_step == 6  # 2 steps in each of 3 epochs instead of 5
    assert trainer.samples_seen == 3 * 2 * 2 * 2  # epochs x steps x micro-batches x batch size
    assert trainer.fit_loop.epoch_progress.total.completed == 3


class HalvingAccumulation(AccumulationLoop):
    """Records the size of every group and halves the gradient of each micro-batch."""

    def __init__(self) -> None:
        super().__init__()
        self.group_sizes: list[int] = []

    def run(self, ctx, group):
        self.group_sizes.append(len(group))
        loss = super().run(ctx, group)
        for p in ctx.module.parameters():
            p.grad = p.grad / 2
        return loss


def test_replace_accumulation_loop():
    """Halving every gradient under SGD equals halving the learning rate."""

    class HalfLr(Task):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.005)

    torch.manual_seed(0)
    reference, custom = HalfLr(), Task()
    custom.load_state_dict(reference.state_dict())
    _trainer(max_epochs=1, accumulate_grad_batches=2).fit(reference, _loader(10, 2))
    trainer = _trainer(max_epochs=1, accumulate_grad_batches=2)
    accumulation = HalvingAccumulation()
    trainer.fit_loop.epoch_loop.accumulation = accumulation
    trainer.fit(custom, _loader(10, 2))

    assert accumulation.group_sizes == [2, 2, 1]
    assert trainer.fit_loop.state_dict()["epoch_loop.accumulation.progress"]["total"]["completed"] == 5
    assert trainer.samples_seen == 10  # the trainer reads the replacement's counters
    torch.testing.assert_close(custom.net.weight, reference.net.weight)
    torch.testing.assert_close(custom.net.bias, reference.net.bias)


def test_replace_optimization_step_and_val_loop():
    class CountingStep(OptimizationStep):
        def __init__(self) -> None:
            super().__init__()
            self.runs = 0

        def run(self, ctx, skip: bool = False) -> bool:
            self.runs += 1
            return super().run(ctx, skip)

    class CountingVal(EvaluationLoop):
        def __init__(self) -> None:
            super().__init__("validate")
            self.runs = 0

        def run(self, ctx, dataloader):
            self.runs += 1
            return super().run(ctx, dataloader)

    trainer = _trainer(max_epochs=2)
    step, val = CountingStep(), CountingVal()
    trainer.fit_loop.epoch_loop.optimization = step
    trainer.fit_loop.epoch_loop.val_loop = val
    trainer.fit(Task(), _loader(6, 2), _loader(4, 2))
    assert step.runs == 6
    assert val.runs == 2
