"""EpochLoop and the loops inside it: replaceable, and a replaced loop that is Stateful resumes exactly.

The resume tests replace a loop with a user subclass that keeps state of its own, stop inside an
epoch, resume from the checkpoint in a new Trainer (other initial weights, other global RNG) and
compare with the uninterrupted run bit for bit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

import tasktrain as tt
from tasktrain.loops import AccumulationLoop, EpochLoop, EvaluationLoop, FitLoop, OptimizationStep
from tasktrain.state import Progress


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
    trainer.fit_loop.epoch_loop.cadence.val_loop = val
    trainer.fit(Task(), _loader(6, 2), _loader(4, 2))
    assert step.runs == 6
    assert val.runs == 2


# -- a replaced loop that is Stateful resumes exactly -------------------------------------------
class _Dropout(tt.TaskModule):
    """Dropout and AdamW: a resume that puts back anything wrong shows in the weights."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))

    def compute_loss(self, batch):
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


class CountingEpochLoop(EpochLoop):
    """Counts its optimizer steps in a Progress of its own: that count must resume too."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.my_steps = Progress()

    def advance(self, ctx) -> None:
        super().advance(ctx)
        self.my_steps.complete()


class ScalingAccumulation(AccumulationLoop):
    """Scales each step's gradients by a factor that changes with its own resumable counter."""

    def __init__(self) -> None:
        super().__init__()
        self.groups = Progress()

    def run(self, ctx, group):
        loss = super().run(ctx, group)
        self.groups.complete()
        scale = 1.0 / (1 + self.groups.total.completed % 3)
        for p in ctx.module.parameters():
            p.grad = p.grad * scale
        return loss


def _replaced_fit(root: Path, max_steps: int, replace: str, ckpt_path: str | None = None, seed: int = 0):
    torch.manual_seed(seed)
    module = _Dropout()
    trainer = tt.Trainer(
        max_steps=max_steps,
        accumulate_grad_batches=2,
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        accelerator="cpu",
    )
    old = trainer.fit_loop.epoch_loop
    if replace == "epoch":
        trainer.fit_loop.epoch_loop = CountingEpochLoop(
            accumulate_grad_batches=2,
            accumulation=old.accumulation,
            optimization=old.optimization,
            cadence=old.cadence,
        )
    else:
        old.accumulation = ScalingAccumulation()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(20, 4, generator=g)
    data = TensorDataset(x, x.sum(1, keepdim=True))
    loader = DataLoader(
        data, batch_size=2, sampler=RandomSampler(data, generator=torch.Generator().manual_seed(5))
    )
    trainer.fit(module, loader, ckpt_path=ckpt_path)
    return module, trainer


@pytest.mark.parametrize("replace", ["epoch", "accumulation"])
@pytest.mark.parametrize("stop", [3, 5, 7], ids=["mid-epoch", "epoch-end", "mid-second-epoch"])
def test_a_replaced_stateful_loop_resumes_exactly(tmp_path, replace, stop):
    """20 samples in batches of 2, accumulating 2: 5 steps per epoch; stopped and resumed to step 12."""
    full, full_trainer = _replaced_fit(tmp_path / "full", 12, replace)
    _replaced_fit(tmp_path / "split", stop, replace)
    resumed, trainer = _replaced_fit(tmp_path / "split", 12, replace, ckpt_path="last", seed=99)

    assert trainer.state.global_step == 12
    for name, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    loop = trainer.fit_loop.epoch_loop
    if replace == "epoch":
        assert isinstance(loop, CountingEpochLoop)
        assert loop.my_steps.total.completed == 12  # 'stop' of them counted before the checkpoint
    else:
        assert isinstance(loop.accumulation, ScalingAccumulation)
        assert loop.accumulation.groups.total.completed == 12
    assert trainer.fit_loop.state_dict().keys() == full_trainer.fit_loop.state_dict().keys()
