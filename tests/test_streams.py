"""ShardedStream: every item to exactly one (rank, worker) shard; with a StatefulDataLoader a run
stopped mid-stream resumes exactly (one process with 0 and 2 workers, DDP with 2 ranks) and the
resumed run reads no item it had already trained on."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

import tasktrain as tt
from tasktrain.checkpoint import find_last, read_weights
from tasktrain.streams import ShardedStream

stateful = pytest.importorskip("torchdata.stateful_dataloader")


class Numbers:
    """An endless stream whose item ``i`` is computed from ``i`` alone: it jumps to any position."""

    def __init__(self, length: int | None = None) -> None:
        self.length = length
        self.opened: list[int] = []
        self.read = 0

    def __call__(self, start: int, step: int) -> Iterator[dict[str, torch.Tensor]]:
        self.opened.append(start)
        i = start
        while self.length is None or i < self.length:
            self.read += 1
            g = torch.Generator().manual_seed(i)
            x = torch.randn(3, generator=g)
            yield {"index": torch.tensor(i), "x": x, "y": x.sum(0, keepdim=True) * 0.5}
            i += step


class Regressor(tt.TaskModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(3, 1)
        self.seen: list[int] = []

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self.seen.extend(batch["index"].tolist())
        return torch.nn.functional.mse_loss(self.net(batch["x"]), batch["y"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.fixture
def keep_loaders() -> Iterator[list[Any]]:
    """Collect trainers before their loaders, so loader workers shut down at once (see test_resume_anywhere)."""
    kept: list[Any] = []
    yield kept
    gc.collect()
    kept.clear()


def test_every_item_goes_to_exactly_one_rank_and_worker():
    seen: dict[int, list[int]] = {}
    for rank in range(2):
        stream = ShardedStream(Numbers(length=40), rank=rank, world_size=2)
        for batch in DataLoader(stream, batch_size=5, num_workers=2):
            seen.setdefault(rank, []).extend(batch["index"].tolist())
    assert sorted(seen[0] + seen[1]) == list(range(40))
    assert {i % 4 for i in seen[0]} == {0, 1} and {i % 4 for i in seen[1]} == {2, 3}


def _fit(
    root: Path,
    steps: int,
    workers: int,
    keep: list[Any],
    ckpt_path: str | None = None,
    loader_class: Any = None,
    **kwargs: Any,
):
    torch.manual_seed(0)
    module = Regressor()
    source = Numbers()
    loader = (loader_class or stateful.StatefulDataLoader)(
        ShardedStream(source), batch_size=4, num_workers=workers
    )
    keep.append(loader)
    trainer = tt.Trainer(
        max_steps=steps,
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        accelerator="cpu",
        **kwargs,
    )
    trainer.fit(module, loader, ckpt_path=ckpt_path)
    return module, source


def _reference(loader: DataLoader, steps: int) -> torch.nn.Linear:
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    for _, batch in zip(range(steps), loader, strict=False):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(net(batch["x"]), batch["y"]).backward()
        optimizer.step()
    return net


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stream_resumes_exactly_without_reading_what_it_trained_on(tmp_path, keep_loaders, workers):
    uninterrupted, _ = _fit(tmp_path / "whole", 12, workers, keep_loaders)
    # The plain-PyTorch reference: the same 48 items in stream order (each worker's batches in turn).
    net = _reference(DataLoader(ShardedStream(Numbers()), batch_size=4, num_workers=workers), steps=12)
    assert torch.equal(net.weight, uninterrupted.net.weight) and torch.equal(net.bias, uninterrupted.net.bias)

    _fit(tmp_path / "run", 5, workers, keep_loaders)
    resumed, source = _fit(tmp_path / "run", 12, workers, keep_loaders, ckpt_path="last")
    assert uninterrupted.seen[5 * 4 :] == resumed.seen
    assert all(
        torch.equal(a, b) for a, b in zip(uninterrupted.parameters(), resumed.parameters(), strict=True)
    )
    if workers == 0:  # seen in this process: the stream was opened at item 20 and nothing before it was read
        assert source.opened == [20] and source.read <= len(resumed.seen) + 4


def test_a_plain_dataloader_without_workers_resumes_a_stateful_stream_from_the_dataset_state(
    tmp_path, keep_loaders
):
    uninterrupted, _ = _fit(tmp_path / "whole", 9, 0, keep_loaders, loader_class=DataLoader)
    _fit(tmp_path / "run", 4, 0, keep_loaders, loader_class=DataLoader)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no read-and-drop warning: the dataset kept its position
        resumed, source = _fit(
            tmp_path / "run", 9, 0, keep_loaders, ckpt_path="last", loader_class=DataLoader
        )
    assert source.opened == [16] and uninterrupted.seen[16:] == resumed.seen
    assert all(
        torch.equal(a, b) for a, b in zip(uninterrupted.parameters(), resumed.parameters(), strict=True)
    )


def test_under_ddp_each_rank_resumes_its_shard_exactly(tmp_path, keep_loaders):
    ddp = {"strategy": "ddp", "devices": 2}
    _fit(tmp_path / "whole", 8, 0, keep_loaders, **ddp)
    _fit(tmp_path / "run", 3, 0, keep_loaders, **ddp)
    _fit(tmp_path / "run", 8, 0, keep_loaders, ckpt_path="last", **ddp)
    whole, resumed = find_last(str(tmp_path / "whole")), find_last(str(tmp_path / "run"))
    assert whole is not None and resumed is not None and resumed.endswith("step=00000008")
    expected, got = read_weights(whole), read_weights(resumed)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    # Each rank read its own half: the run equals one process on the global batch of 8 items.
    net = _reference(DataLoader(ShardedStream(Numbers()), batch_size=8), steps=8)
    torch.testing.assert_close(got["net.weight"], net.weight.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(got["net.bias"], net.bias.detach(), rtol=0, atol=1e-6)


def test_a_state_of_another_shard_layout_is_refused_naming_both():
    state = ShardedStream(Numbers(), rank=0, world_size=2).state_dict()
    with pytest.raises(ValueError, match=r"the state is shard 0 of 2, this process reads shard 0 of 4"):
        ShardedStream(Numbers(), rank=0, world_size=4).load_state_dict(state)
    with pytest.raises(ValueError, match=r"ShardedStream\(rank=2, world_size=2\): rank must be < world_size"):
        ShardedStream(Numbers(), rank=2, world_size=2)
