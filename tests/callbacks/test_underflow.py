"""DebugUnderflowOverflow names the first module output or gradient that turns inf/nan, with the
records before it; it changes nothing in a healthy run. EmptyCache keeps its schedule."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
from tasktrain import hardware
from tasktrain.callbacks import DebugUnderflowOverflow, EmptyCache


class Amplify(torch.nn.Module):
    """Multiplies by ``factor`` in forward, or (``in_backward``) its gradient, from step ``at`` on."""

    def __init__(self) -> None:
        super().__init__()
        self.factor, self.in_backward, self.on = 1.0, False, False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.on:
            return x
        if self.in_backward:
            return _ScaleGrad.apply(x, self.factor)
        return x * self.factor


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


class Net(tt.TaskModule):
    def __init__(self, bad_step: int | None = None, in_backward: bool = False) -> None:
        super().__init__()
        self.bad_step = bad_step
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8), Amplify(), torch.nn.Linear(8, 1)
        )
        self.net[3].in_backward = in_backward
        self.net[3].factor = 1e39 if not in_backward else float("inf")  # 1e39 overflows float32

    def compute_loss(self, batch: Any) -> torch.Tensor:
        self.net[3].on = self.global_step == self.bad_step
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(32, 4, generator=g), torch.randn(32, 1, generator=g)), 4)


def _fit(module: Net, callbacks: list[tt.callbacks.Callback]) -> tt.Trainer:
    trainer = tt.Trainer(
        max_epochs=1,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        accelerator="cpu",
        on_nonfinite_loss="skip",  # the detector, not the loss check, must be the one to stop
    )
    trainer.fit(module, _loader())
    return trainer


def test_an_overflow_in_forward_names_the_first_module_and_step():
    torch.manual_seed(0)
    with pytest.raises(FloatingPointError) as error:
        _fit(Net(bad_step=3), [DebugUnderflowOverflow(max_frames=2)])
    message = str(error.value)
    first_line = message.splitlines()[0]
    assert "inf/nan first in net.3 (Amplify) forward output at step 3, batch_idx 3" in first_line, message
    records = message.splitlines()[1:]
    assert len(records) == 3, message  # the two records before the bad one, and the bad one
    assert records[0].startswith("  net.1 (Tanh) forward output: abs min ")
    assert records[1].startswith("  net.2 (Linear) forward output: abs min ")
    assert records[2].startswith("  net.3 (Amplify) forward output: abs min ") and records[2].endswith("inf")


def test_an_infinite_gradient_names_the_first_parameter_it_reaches():
    torch.manual_seed(0)
    with pytest.raises(
        FloatingPointError, match=r"inf/nan first in net\.2\.(weight|bias) gradient at step 2"
    ):
        _fit(Net(bad_step=2, in_backward=True), [DebugUnderflowOverflow()])


def test_a_healthy_run_is_unchanged_and_the_hooks_are_removed():
    torch.manual_seed(0)
    plain = Net()
    _fit(plain, [])
    torch.manual_seed(0)
    watched = Net()
    _fit(watched, [DebugUnderflowOverflow()])
    assert all(
        torch.equal(a, b)
        for a, b in zip(plain.state_dict().values(), watched.state_dict().values(), strict=True)
    )
    assert all(not m._forward_hooks for m in watched.modules())
    assert all(not p._post_accumulate_grad_hooks for p in watched.parameters())


def test_bad_arguments_are_refused_naming_them():
    with pytest.raises(ValueError, match=r"DebugUnderflowOverflow\(max_frames=-1\)"):
        DebugUnderflowOverflow(max_frames=-1)
    with pytest.raises(ValueError, match=r"EmptyCache\(every_n_steps=0\): accepted values are ints >= 1"):
        EmptyCache(every_n_steps=0)


def test_empty_cache_runs_every_n_steps(monkeypatch):
    # No CUDA here: the device call is recorded instead, to check the schedule.
    emptied: list[int] = []
    trainer_ref: list[tt.Trainer] = []
    monkeypatch.setattr(
        hardware, "empty_cache", lambda device: emptied.append(trainer_ref[0].state.global_step)
    )
    trainer = tt.Trainer(
        max_steps=7,
        callbacks=[EmptyCache(every_n_steps=3)],
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
    )
    trainer_ref.append(trainer)
    trainer.fit(Net(), _loader())
    assert emptied == [3, 6]
