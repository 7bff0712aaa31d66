"""``find_lr`` on linear regression, where gradient descent provably diverges above 2 / λ_max."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
from tasktrain.finders import find_lr

N, D = 64, 4


class LinearRegression(tt.TaskModule):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(D, 1, bias=False)

    def compute_loss(self, batch):
        x, y = batch
        return nn.functional.mse_loss(self.linear(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=123.0)  # overwritten by the sweep


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g) * torch.tensor([3.0, 1.0, 0.5, 0.2])  # an ill-conditioned Hessian
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(N, 1, generator=g)
    return TensorDataset(x, y)


def _divergence_lr() -> float:
    """Full-batch GD on the mean squared error diverges iff lr > 2 / λ_max(H), H = 2/N XᵀX."""
    x, _ = _data().tensors
    hessian = 2.0 / N * x.double().T @ x.double()
    return 2.0 / float(torch.linalg.eigvalsh(hessian).max())


def test_suggestion_is_below_divergence_and_the_loss_blows_up_beyond_it(quiet):
    torch.manual_seed(0)
    module = LinearRegression()
    initial = module.linear.weight.detach().clone()
    loader = DataLoader(_data(), batch_size=N)  # one batch = the whole data: exact gradient descent
    kwargs: dict[str, Any] = {"accelerator": "cpu", "default_root_dir": quiet["default_root_dir"]}
    result = find_lr(module, loader, min_lr=1e-4, max_lr=10.0, num_steps=100, trainer_kwargs=kwargs)
    lr_div = _divergence_lr()
    assert 1e-3 < lr_div < 1.0, "the sweep must straddle the divergence point"

    assert result.suggestion is not None and result.suggestion < lr_div
    assert result.suggestion > lr_div / 100, "the steepest descent lies within two decades below it"
    # Recorded loss i is measured after the steps taken at lrs[:i]. Below lr_div every step
    # shrinks the loss (each eigen-direction contracts); once a step exceeds it, the loss grows.
    raw = result.raw_losses
    for i in range(1, len(raw)):
        if result.lrs[i - 1] < lr_div:
            assert raw[i] <= raw[i - 1] * (1 + 1e-6), f"loss rose after a step at lr {result.lrs[i - 1]}"
    assert result.lrs[-1] > lr_div, "the sweep stopped only after passing the divergence point"
    assert result.losses[-1] > 4 * min(result.losses), "it stopped because the loss blew up"
    assert len(result.lrs) < 100
    assert torch.equal(module.linear.weight, initial), "the weights are restored"
    assert result.lrs[0] == pytest.approx(1e-4)
    assert result.lrs[1] / result.lrs[0] == pytest.approx((10.0 / 1e-4) ** (1 / 99))


def test_plot_marks_the_suggestion(quiet):
    pytest.importorskip("matplotlib")
    result = find_lr(
        LinearRegression(),
        DataLoader(_data(), batch_size=16),
        min_lr=1e-3,
        max_lr=1.0,
        num_steps=20,
        trainer_kwargs={"accelerator": "cpu", "default_root_dir": quiet["default_root_dir"]},
    )
    figure = result.plot()
    ax = figure.axes[0]
    assert ax.get_xscale() == "log"
    assert any(math.isclose(line.get_xdata()[0], result.suggestion) for line in ax.lines[1:])


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"min_lr": 1.0, "max_lr": 0.1}, "0 < min_lr < max_lr"),
        ({"num_steps": 1}, "num_steps=1"),
        ({"smoothing": 1.0}, "smoothing=1.0"),
        ({"stop_factor": 1}, "stop_factor=1"),
        ({"trainer_kwargs": {"max_steps": 5}}, "['max_steps'] are set by the finder"),
        ({"trainer_kwargs": {"devices": 2, "accelerator": "cpu"}}, "finders run in this process"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, Any], fragment: str):
    with pytest.raises(ValueError, match="find_lr") as info:
        find_lr(LinearRegression(), DataLoader(_data()), **kwargs)
    assert fragment in str(info.value)
