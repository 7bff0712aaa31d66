"""OptimizationStep: LR scheduler cadence (step, epoch, frequency, monitored) and gradient clipping.

Expectations are closed forms or plain-PyTorch loops written here from the same initial weights.
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt

LR, GAMMA = 0.1, 0.5


def _close(a: nn.Module, b: nn.Module, atol: float = 1e-6) -> bool:
    return all(
        torch.allclose(x.detach(), y.detach(), atol=atol, rtol=0)
        for x, y in zip(a.parameters(), b.parameters(), strict=True)
    )


def _loader(num_batches: int, batch_size: int = 2, scale: float = 1.0) -> DataLoader[Any]:
    g = torch.Generator().manual_seed(0)
    n = num_batches * batch_size
    x, y = torch.randn(n, 4, generator=g), scale * torch.randn(n, 1, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


class Regressor(tt.TaskModule):
    """Linear regression with SGD; ``lr_scheduler`` (a callable on the optimizer) picks the schedule.

    Records the learning rate every optimizer step uses (read in ``on_before_optimizer_step``).
    """

    def __init__(self, lr_scheduler: Any = None, in_features: int = 4, bias: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(in_features, 1, bias=bias)
        self.make_scheduler = lr_scheduler
        self.lrs: list[float] = []
        self.grads: list[list[Tensor]] = []

    def compute_loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> Any:
        self.optimizer = torch.optim.SGD(self.parameters(), lr=LR)
        if self.make_scheduler is None:
            return self.optimizer
        return self.make_scheduler(self.optimizer)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.lrs.append(optimizer.param_groups[0]["lr"])
        self.grads.append([p.grad.detach().clone() for p in self.parameters()])


def _step_lr(interval: str | None, frequency: int = 1) -> Any:
    def make(optimizer: torch.optim.Optimizer) -> Any:
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=GAMMA)
        if interval is None:  # the (optimizer, scheduler) form: interval "epoch" by default
            return optimizer, scheduler
        config = {"scheduler": scheduler, "interval": interval, "frequency": frequency}
        return {"optimizer": optimizer, "lr_scheduler": config}

    return make


@pytest.mark.parametrize(
    ("interval", "frequency", "num_batches", "accumulate", "epochs"),
    [
        ("step", 1, 9, 2, 2),  # 5 steps per epoch (remainder group of 1): 10 scheduler steps
        ("step", 3, 9, 2, 2),  # every 3rd optimizer step
        ("epoch", 1, 6, 2, 3),  # 3 steps per epoch, scheduler once per epoch
        ("epoch", 2, 4, 2, 5),  # every 2nd epoch
        (None, 1, 6, 3, 3),  # (optimizer, scheduler) tuple: per epoch
    ],
)
def test_scheduler_steps_once_per_optimizer_step_or_epoch_with_frequency(
    quiet: dict[str, Any],
    interval: str | None,
    frequency: int,
    num_batches: int,
    accumulate: int,
    epochs: int,
) -> None:
    model = Regressor(_step_lr(interval, frequency))
    reference = copy.deepcopy(model)
    loader = _loader(num_batches)

    result = tt.Trainer(max_epochs=epochs, accumulate_grad_batches=accumulate, **quiet).fit(model, loader)

    per_epoch = math.ceil(num_batches / accumulate)
    total = per_epoch * epochs
    per_step = interval == "step"
    # Closed form: the LR used by optimizer step k, and after the run.
    expected = [LR * GAMMA ** ((k if per_step else k // per_epoch) // frequency) for k in range(total)]
    final = LR * GAMMA ** ((total if per_step else epochs) // frequency)
    assert result.global_step == total
    assert model.lrs == pytest.approx(expected, rel=1e-12)
    assert model.optimizer.param_groups[0]["lr"] == pytest.approx(final, rel=1e-12)

    # The weights agree with a hand-written loop that steps the scheduler at the same points.
    opt = torch.optim.SGD(reference.parameters(), lr=LR)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=GAMMA)
    batches, step = list(loader), 0
    for epoch in range(1, epochs + 1):
        for start in range(0, num_batches, accumulate):
            group = batches[start : start + accumulate]
            opt.zero_grad()
            for x, y in group:
                (F.mse_loss(reference.net(x), y) / len(group)).backward()
            opt.step()
            step += 1
            if per_step and step % frequency == 0:
                scheduler.step()
        if not per_step and epoch % frequency == 0:
            scheduler.step()
    assert _close(model, reference)


@pytest.mark.parametrize(("max_steps", "epochs_completed"), [(4, 2), (5, 2)])
def test_epoch_scheduler_steps_for_completed_epochs_when_max_steps_stops_the_run(
    quiet: dict[str, Any], max_steps: int, epochs_completed: int
) -> None:
    model = Regressor(_step_lr("epoch"))

    result = tt.Trainer(max_steps=max_steps, accumulate_grad_batches=3, **quiet).fit(model, _loader(6))

    # 2 steps per epoch; max_steps=4 ends exactly at an epoch boundary, 5 stops one step into the third.
    assert result.global_step == max_steps
    assert model.lrs == pytest.approx([LR * GAMMA ** (k // 2) for k in range(max_steps)], rel=1e-12)
    assert model.optimizer.param_groups[0]["lr"] == pytest.approx(LR * GAMMA**epochs_completed, rel=1e-12)


@pytest.mark.parametrize(
    ("batch_size", "epochs", "val_check_interval", "check_val_every_n_epoch"),
    [
        (4, 4, None, 1),  # 2 steps per epoch, validation at the end of every epoch
        (2, 2, 2, None),  # 4 steps per epoch, validation every 2 steps, none at epoch end
    ],
)
def test_reduce_lr_on_plateau_steps_on_val_loss_after_each_validation(
    quiet: dict[str, Any],
    batch_size: int,
    epochs: int,
    val_check_interval: int | None,
    check_val_every_n_epoch: int | None,
) -> None:
    # y = w·x. Training pulls w from 0 towards +1 (no overshoot at this LR) while validation wants
    # -1: val/loss rises after every validation, so with patience=0 each validation after the first halves the LR.
    x = torch.linspace(0.5, 1.5, 8).unsqueeze(1)
    train = DataLoader(TensorDataset(x, x), batch_size=batch_size)
    val = DataLoader(TensorDataset(x, -x), batch_size=4)

    def plateau(optimizer: torch.optim.Optimizer) -> Any:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=0)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss"}}

    model = Regressor(plateau, in_features=1, bias=False)
    with torch.no_grad():
        model.net.weight.zero_()
    reference = copy.deepcopy(model)

    result = tt.Trainer(
        max_epochs=epochs,
        val_check_interval=val_check_interval,
        check_val_every_n_epoch=check_val_every_n_epoch,
        **quiet,
    ).fit(model, train, val)

    # 8 steps, validation after steps 2, 4, 6, 8; reductions after the 2nd, 3rd and 4th.
    assert result.global_step == 8
    assert model.lrs == pytest.approx([LR] * 4 + [LR / 2] * 2 + [LR / 4] * 2, rel=1e-12)
    assert model.optimizer.param_groups[0]["lr"] == pytest.approx(LR / 8, rel=1e-12)

    opt = torch.optim.SGD(reference.parameters(), lr=LR)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    val_losses = []
    for step in range(1, 9):
        batches = list(train)
        xb, yb = batches[(step - 1) % len(batches)]
        opt.zero_grad()
        F.mse_loss(reference.net(xb), yb).backward()
        opt.step()
        if step % 2 == 0:
            with torch.no_grad():
                val_losses.append(F.mse_loss(reference.net(x), -x).item())
            scheduler.step(val_losses[-1])
    assert all(a < b for a, b in itertools.pairwise(val_losses)), val_losses  # premise: it only gets worse
    assert result.metrics["val/loss"] == pytest.approx(val_losses[-1], rel=1e-5)
    assert _close(model, reference)


# -- gradient clipping ----------------------------------------------------------------------------


@pytest.mark.parametrize(("algorithm", "clip"), [("norm", 0.5), ("value", 0.05)])
def test_gradient_clipping_matches_torch_clip_on_the_accumulated_gradient(
    quiet: dict[str, Any], algorithm: str, clip: float
) -> None:
    loader = _loader(8, batch_size=4, scale=10.0)  # large targets: gradients well above the threshold
    model = Regressor()
    reference, unclipped = copy.deepcopy(model), copy.deepcopy(model)

    result = tt.Trainer(
        max_epochs=1,
        accumulate_grad_batches=2,
        gradient_clip_val=clip,
        gradient_clip_algorithm=algorithm,
        **quiet,
    ).fit(model, loader)

    batches = list(loader)
    for net, clipped in ((reference, True), (unclipped, False)):
        opt = torch.optim.SGD(net.parameters(), lr=LR)
        for start in range(0, len(batches), 2):
            opt.zero_grad()
            for x, y in batches[start : start + 2]:
                (F.mse_loss(net.net(x), y) / 2).backward()
            if clipped and algorithm == "norm":
                torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
            elif clipped:
                torch.nn.utils.clip_grad_value_(net.parameters(), clip)
            opt.step()

    assert result.global_step == 4
    # on_before_optimizer_step sees the clipped gradients, once per optimizer step.
    assert len(model.grads) == 4
    for grads in model.grads:
        if algorithm == "norm":
            assert torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])) <= clip * (1 + 1e-5)
        else:
            assert max(g.abs().max().item() for g in grads) <= clip * (1 + 1e-6)
    assert _close(model, reference)
    assert not _close(model, unclipped, atol=1e-3)  # clipping changed the result
