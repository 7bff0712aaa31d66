"""Precision plugins on CPU: 16-mixed loss scaling with skipped steps, bf16-mixed and bf16-true.

Each run is compared with a plain-PyTorch loop using the same autocast / GradScaler / dtype.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt

LR, GAMMA = 0.05, 0.5


def _close(a: nn.Module, b: nn.Module, atol: float) -> bool:
    return all(
        torch.allclose(x.detach().float(), y.detach().float(), atol=atol, rtol=0)
        for x, y in zip(a.parameters(), b.parameters(), strict=True)
    )


def _data(n: int, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return x, scale * x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])


class Regressor(tt.TaskModule):
    """Linear regression with SGD and (``schedule``) a per-step exponential LR schedule.

    ``inf_grad_at_step``: after backward of that optimizer step, one gradient entry is set to inf
    (as a fp16 overflow would). Records the parameters at the start of every step, the LR and the
    gradients each step sees in ``on_before_optimizer_step``, and the dtype of the forward output.
    """

    def __init__(self, inf_grad_at_step: int | None = None, schedule: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(4, 1)
        self.inf_grad_at_step = inf_grad_at_step
        self.schedule = schedule
        self.at_step_start: list[list[Tensor]] = []
        self.lrs: list[float] = []
        self.grads: list[list[Tensor]] = []
        self.output_dtypes: set[torch.dtype] = set()

    def compute_loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        out = self.net(x)
        self.output_dtypes.add(out.dtype)
        return F.mse_loss(out, y)

    def configure_optimizers(self) -> Any:
        self.optimizer = torch.optim.SGD(self.parameters(), lr=LR)
        if not self.schedule:
            return self.optimizer
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=GAMMA)
        return {
            "optimizer": self.optimizer,
            "lr_scheduler": {"scheduler": self.scheduler, "interval": "step"},
        }

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.at_step_start.append([p.detach().clone() for p in self.parameters()])

    def on_after_backward(self) -> None:
        if self.global_step == self.inf_grad_at_step:
            self.net.weight.grad[0, 0] = float("inf")

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.lrs.append(optimizer.param_groups[0]["lr"])
        self.grads.append([p.grad.detach().clone() for p in self.parameters()])


def _full_loss(model: Regressor, x: Tensor, y: Tensor) -> float:
    """The fp32 loss on all the data, from a float copy of the model."""
    with torch.no_grad():
        return F.mse_loss(copy.deepcopy(model.net).float()(x), y).item()


def test_16_mixed_skips_a_step_with_inf_gradients_and_does_not_advance_the_scheduler(
    quiet: dict[str, Any],
) -> None:
    # Zero initial weights and small targets: the gradients times the initial scale (2**16) stay
    # below the fp16 maximum, so only the injected inf makes the scaler skip a step.
    x, y = _data(64, scale=0.05)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)  # 4 steps
    model = Regressor(inf_grad_at_step=1)
    with torch.no_grad():
        model.net.weight.zero_()
        model.net.bias.zero_()
    reference = copy.deepcopy(model)

    trainer = tt.Trainer(max_epochs=1, precision="16-mixed", **quiet)
    result = trainer.fit(model, loader)

    assert result.global_step == 4  # the skipped step still counts
    assert model.output_dtypes == {torch.float16}  # autocast was on
    before_1, before_2 = model.at_step_start[1], model.at_step_start[2]
    assert not all(
        torch.equal(a, b) for a, b in zip(model.at_step_start[0], before_1, strict=True)
    )  # step 0 stepped
    assert all(torch.equal(a, b) for a, b in zip(before_1, before_2, strict=True))  # step 1 changed nothing
    # The scheduler advanced for steps 0, 2 and 3 only.
    assert model.lrs == pytest.approx([LR, LR * GAMMA, LR * GAMMA, LR * GAMMA**2], rel=1e-12)
    assert model.scheduler.last_epoch == 3
    assert model.optimizer.param_groups[0]["lr"] == pytest.approx(LR * GAMMA**3, rel=1e-12)

    # Reference: autocast + GradScaler by hand, the scheduler stepped only when the scaler stepped.
    opt = torch.optim.SGD(reference.parameters(), lr=LR)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=GAMMA)
    scaler = torch.amp.GradScaler("cpu")
    skipped, grads = [], []
    for step, (xb, yb) in enumerate(loader):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.mse_loss(reference.net(xb), yb)
        scaler.scale(loss).backward()
        if step == 1:
            reference.net.weight.grad[0, 0] = float("inf")
        scaler.unscale_(opt)
        grads.append([p.grad.detach().clone() for p in reference.parameters()])
        scale = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        if scaler.get_scale() < scale:
            skipped.append(step)
        else:
            scheduler.step()
    assert skipped == [1]
    assert _close(model, reference, atol=1e-6)
    # on_before_optimizer_step saw true-scale (unscaled) gradients.
    for seen, expected in zip(model.grads, grads, strict=True):
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(seen, expected, strict=True))


def test_16_mixed_clips_the_unscaled_gradients(quiet: dict[str, Any]) -> None:
    x, y = _data(64, scale=0.05)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    model = Regressor(schedule=False)
    with torch.no_grad():
        model.net.weight.zero_()
        model.net.bias.zero_()
    reference = copy.deepcopy(model)
    clip = 0.05  # below every true gradient norm here, far above any scaled one

    tt.Trainer(max_epochs=1, precision="16-mixed", gradient_clip_val=clip, **quiet).fit(model, loader)

    opt = torch.optim.SGD(reference.parameters(), lr=LR)
    scaler = torch.amp.GradScaler("cpu")
    norms = []
    for xb, yb in loader:
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.mse_loss(reference.net(xb), yb)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        norms.append(torch.nn.utils.clip_grad_norm_(reference.parameters(), clip).item())
        scaler.step(opt)
        scaler.update()
    assert min(norms) > clip  # the premise: clipping was active on every step
    assert scaler.get_scale() == 2.0**16  # and no step was skipped
    assert _close(model, reference, atol=1e-6)


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_bf16_precisions_train_and_reduce_the_loss(quiet: dict[str, Any], precision: str) -> None:
    x, y = _data(64)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)  # 8 steps per epoch
    model = Regressor(schedule=False)
    reference = copy.deepcopy(model)
    before = _full_loss(model, x, y)

    result = tt.Trainer(max_epochs=3, precision=precision, **quiet).fit(model, loader)

    assert result.global_step == 24
    assert model.output_dtypes == {torch.bfloat16}
    param_dtype = torch.bfloat16 if precision == "bf16-true" else torch.float32
    assert all(p.dtype == param_dtype for p in model.parameters())
    after = _full_loss(model, x, y)
    assert after < 0.25 * before

    # Reference: the same loop with autocast (bf16-mixed) or bf16 weights and inputs (bf16-true).
    if precision == "bf16-true":
        reference.to(torch.bfloat16)
    opt = torch.optim.SGD(reference.parameters(), lr=LR)
    for _ in range(3):
        for xb, yb in loader:
            opt.zero_grad()
            if precision == "bf16-true":
                loss = F.mse_loss(reference.net(xb.bfloat16()), yb.bfloat16())
            else:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = F.mse_loss(reference.net(xb), yb)
            loss.backward()
            opt.step()
    assert _close(model, reference, atol=1e-6)
