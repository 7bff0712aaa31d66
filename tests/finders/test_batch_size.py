"""``find_batch_size``: doubling until a real memory measure exceeds the budget, or the cap."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
from tasktrain.finders import find_batch_size


class MLP(tt.TaskModule):
    def __init__(self, batch_size: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(16, 256), nn.Tanh(), nn.Linear(256, 1))
        self.batch_sizes_seen: list[int] = []

    def compute_loss(self, batch):
        x, y = batch
        self.batch_sizes_seen.append(len(x))
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(_data(), batch_size=self.hparams.batch_size, shuffle=True)


def _data(n: int = 256) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 16, generator=g), torch.randn(n, 1, generator=g))


def _saved_bytes(batch_size: int) -> int:
    """Plain PyTorch reference: distinct storages autograd saves for backward in one MLP step."""
    module = MLP()
    x, y = (t.clone() for t in _data()[:batch_size])  # a fresh batch, as the DataLoader collates one
    saved: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = nn.functional.mse_loss(module.net(x), y)
    loss.backward()
    return sum(saved.values())


KW: dict[str, Any] = {"accelerator": "cpu"}


def test_stops_at_the_memory_budget_measured_like_plain_pytorch(tmp_path):
    budget = (_saved_bytes(16) + _saved_bytes(32)) // 2
    module = MLP()
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    result = find_batch_size(
        module,
        lambda b: DataLoader(_data(), batch_size=b),
        max_memory_bytes=budget,
        trainer_kwargs={**KW, "default_root_dir": tmp_path},
    )
    assert result.batch_size == 16
    assert [(t.batch_size, t.fits) for t in result.trials] == [
        (2, True),
        (4, True),
        (8, True),
        (16, True),
        (32, False),
    ]
    assert [t.peak_bytes for t in result.trials] == [_saved_bytes(b) for b in (2, 4, 8, 16, 32)]
    assert f"> max_memory_bytes={budget}" in result.trials[-1].reason
    # Activations grow with the batch: the measure is linear in it (the weights are a constant).
    p8, p16, p32 = (t.peak_bytes or 0 for t in result.trials[2:])
    assert p32 - p16 == 2 * (p16 - p8) > 0
    assert module.batch_sizes_seen == [2, 4, 8, 16, 32], "one step per trial, at the tried size"
    for name, value in initial.items():
        assert torch.equal(module.state_dict()[name], value), "weights are restored after the trials"


def test_module_dataloader_hook_and_the_cap(tmp_path):
    module = MLP(batch_size=4)
    result = find_batch_size(
        module, init_batch_size=3, max_batch_size=40, trainer_kwargs={**KW, "default_root_dir": tmp_path}
    )
    assert [t.batch_size for t in result.trials] == [3, 6, 12, 24, 40]
    assert result.batch_size == 40 == module.hparams.batch_size, "the hparam is left at the size found"
    assert module.batch_sizes_seen == [3, 6, 12, 24, 40]


def test_a_dataset_too_small_to_fill_the_batch_stops_the_search(tmp_path):
    module = MLP()
    loader = lambda b: DataLoader(_data(20), batch_size=b)  # noqa: E731
    result = find_batch_size(
        module, loader, max_batch_size=64, trainer_kwargs={**KW, "default_root_dir": tmp_path}
    )
    assert result.batch_size == 16
    assert result.trials[-1].reason == "the dataloader gives batches of only 20 samples"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({}, "max_batch_size=None, max_memory_bytes=None"),
        ({"max_batch_size": 0}, "max_batch_size=0"),
        ({"init_batch_size": 2.0, "max_batch_size": 8}, "init_batch_size=2.0"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, Any], fragment: str):
    with pytest.raises(ValueError, match="find_batch_size") as info:
        find_batch_size(MLP(), trainer_kwargs=KW, **kwargs)
    assert fragment in str(info.value)


def test_a_module_without_a_batch_size_needs_a_dataloader_factory():
    class Bare(MLP):
        def __init__(self) -> None:
            super().__init__()
            self.hparams.clear()

    with pytest.raises(ValueError, match="make_dataloader=None"):
        find_batch_size(Bare(), max_batch_size=8, trainer_kwargs=KW)
