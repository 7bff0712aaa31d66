"""Mid-epoch data position: skipping batches by index arithmetic, without loading them."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import BatchSampler, DataLoader, Dataset, IterableDataset, RandomSampler, TensorDataset

from tasktrain.data import (
    PredictionShard,
    SkipFirstBatches,
    sampler_generator,
    shard_for_prediction,
    skip_batches,
)


class Counting(Dataset):
    """A map-style dataset of ``n`` samples that counts every ``__getitem__``."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.fetched: list[int] = []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        self.fetched.append(index)
        return index


class CountingStream(IterableDataset):
    def __init__(self, n: int) -> None:
        self.n = n
        self.read = 0

    def __iter__(self):
        for i in range(self.n):
            self.read += 1
            yield i


def _as_lists(batches) -> list[list[int]]:
    return [b.tolist() if isinstance(b, torch.Tensor) else list(b) for b in batches]


# -- SkipFirstBatches ------------------------------------------------------------------------------
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("skip", [0, 1, 3, 6, 7, 20])
def test_skip_first_batches_of_a_shuffled_sampler_is_the_tail_of_the_epoch(skip, drop_last):
    generator = torch.Generator().manual_seed(3)
    batches = BatchSampler(RandomSampler(range(26), generator=generator), batch_size=4, drop_last=drop_last)
    state = generator.get_state()
    full = list(batches)
    generator.set_state(state)
    tail = list(SkipFirstBatches(batches, skip))
    assert tail == full[skip:]
    assert len(SkipFirstBatches(batches, skip)) == len(full[skip:])


def test_skip_first_batches_with_the_global_rng():
    batches = BatchSampler(RandomSampler(range(30)), batch_size=4, drop_last=False)
    torch.manual_seed(11)
    full = list(batches)
    torch.manual_seed(11)
    assert list(SkipFirstBatches(batches, 5)) == full[5:]


def test_skip_first_batches_of_another_batch_sampler_reads_and_drops():
    class Pairs:
        def __iter__(self):
            return iter([[0, 1], [2, 3], [4, 5], [6]])

        def __len__(self) -> int:
            return 4

    assert list(SkipFirstBatches(Pairs(), 2)) == [[4, 5], [6]]
    assert len(SkipFirstBatches(Pairs(), 2)) == 2
    assert len(SkipFirstBatches(Pairs(), 9)) == 0


# -- skip_batches ----------------------------------------------------------------------------------
def test_skip_zero_returns_the_loader_itself():
    loader = DataLoader(range(10), batch_size=3)
    assert skip_batches(loader, 0) is loader


@pytest.mark.parametrize("skip", [1, 4, 7])
def test_skip_batches_of_a_shuffled_loader_gives_the_tail_of_the_same_epoch(skip):
    ds = TensorDataset(torch.arange(30))
    loader = DataLoader(ds, batch_size=4, shuffle=True)
    torch.manual_seed(5)
    full = [b[0].tolist() for b in loader]
    after_full = torch.rand(3)  # the global RNG after the epoch
    torch.manual_seed(5)
    tail = [b[0].tolist() for b in skip_batches(loader, skip)]
    assert tail == full[skip:]
    assert torch.equal(torch.rand(3), after_full)  # skipping consumed the RNG exactly as the full epoch


def test_skip_batches_keeps_the_loader_options():
    def collate(items):
        return ("collated", [int(i) for i in items])

    generator = torch.Generator().manual_seed(0)
    loader = DataLoader(list(range(12)), batch_size=5, shuffle=True, collate_fn=collate, generator=generator)
    state = generator.get_state()
    full = list(loader)
    generator.set_state(state)
    skipped = skip_batches(loader, 1)
    assert isinstance(skipped, DataLoader) and skipped.dataset is loader.dataset
    assert list(skipped) == full[1:]
    assert len(skipped) == 2


def test_skip_batches_on_an_iterable_dataset_warns_and_reads():
    stream = CountingStream(10)
    loader = DataLoader(stream, batch_size=3)
    with pytest.warns(UserWarning, match="cannot skip batches by index"):
        skipped = skip_batches(loader, 2)
    assert _as_lists(skipped) == [[6, 7, 8], [9]]
    assert stream.read == 10  # the skipped batches were read, then dropped


def test_skip_batches_on_a_custom_loader_warns_and_reads():
    class MyLoader:
        def __iter__(self):
            return iter([[1], [2], [3]])

    with pytest.warns(UserWarning, match="MyLoader"):
        assert list(skip_batches(MyLoader(), 1)) == [[2], [3]]


@pytest.mark.parametrize("position", [1, 500, 50_000, 99_999])
def test_skipped_samples_of_a_million_sample_epoch_are_never_fetched(position):
    """Resuming anywhere in the epoch fetches only the batches that are read: the work is position-independent."""
    data = Counting(1_000_000)
    generator = torch.Generator().manual_seed(42)
    loader = DataLoader(data, batch_size=10, sampler=RandomSampler(data, generator=generator))
    order = torch.randperm(1_000_000, generator=torch.Generator().manual_seed(42)).tolist()

    first = next(iter(skip_batches(loader, position)))
    assert data.fetched == order[position * 10 : (position + 1) * 10]
    assert first.tolist() == data.fetched


def test_sampler_generator_finds_the_shufflers_generator():
    ds = list(range(8))
    own = torch.Generator()
    assert sampler_generator(DataLoader(ds, sampler=RandomSampler(ds, generator=own))) is own
    assert sampler_generator(DataLoader(ds, batch_size=2, shuffle=True, generator=own)) is own
    batches = BatchSampler(RandomSampler(ds, generator=own), batch_size=2, drop_last=False)
    assert sampler_generator(DataLoader(ds, batch_sampler=batches)) is own
    assert sampler_generator(DataLoader(ds, shuffle=True)) is None
    assert sampler_generator(None) is None


def test_a_sampler_that_cannot_be_sharded_is_refused_not_replaced():
    from torch.utils.data import WeightedRandomSampler

    from tasktrain.data import with_distributed_sampler

    dataset = TensorDataset(torch.arange(8))
    loader = DataLoader(dataset, batch_size=2, sampler=WeightedRandomSampler([1.0] * 8, num_samples=8))
    with pytest.raises(ValueError, match="WeightedRandomSampler"):
        with_distributed_sampler(loader, num_replicas=2, rank=0)


# -- prediction shards -------------------------------------------------------------------------------
@given(
    num_samples=st.integers(0, 30),
    num_replicas=st.integers(1, 5),
    batch_size=st.integers(1, 6),
)
def test_prediction_shards_cover_the_dataset_once_in_order_with_equal_batch_counts(
    num_samples, num_replicas, batch_size
):

    gathered: list[int] = []
    batch_counts = set()
    for rank in range(num_replicas):
        shard = PredictionShard(num_samples, num_replicas, rank, batch_size, drop_last=False)
        batches = list(BatchSampler(shard.indices(), batch_size, drop_last=False))
        batch_counts.add(len(batches))
        outputs = [torch.tensor(batch) for batch in batches]  # a predict_step that returns the indices
        gathered += [i for out in shard.trim(outputs) for i in out.tolist()]
    assert gathered == list(range(num_samples))
    assert len(batch_counts) == 1  # sharded strategies need every rank to run the same number of forwards


def test_a_padded_batch_whose_output_has_no_row_per_sample_cannot_be_trimmed():

    shard = PredictionShard(num_samples=5, num_replicas=2, rank=1, batch_size=3, drop_last=False)
    assert shard.indices() == [3, 4, 4] and shard.padding == 1
    assert shard.trim([{"y": torch.zeros(3, 2)}])[0]["y"].shape == (2, 2)
    with pytest.raises(ValueError, match=r"shape \(\) has no row per sample \(3\)"):
        shard.trim([torch.tensor(1.0)])
    with pytest.raises(ValueError, match=r"it \(str\) holds no tensors"):
        shard.trim(["text"])


def test_a_shuffling_prediction_loader_is_refused_under_several_ranks():

    loader = DataLoader(TensorDataset(torch.arange(8)), batch_size=2, shuffle=True)
    with pytest.raises(ValueError, match=r"sampler is a RandomSampler.*shuffle=False"):
        shard_for_prediction(loader, num_replicas=2, rank=0)
    assert shard_for_prediction(loader, num_replicas=1, rank=0) == (loader, None)
