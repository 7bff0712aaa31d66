"""Dataloader position: resume an epoch in the middle without loading the batches already seen."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from tasktrain.streams import ShardedStream

if TYPE_CHECKING:
    from tasktrain.strategies.base import Strategy


class SkipFirstBatches(Sampler[list[int]]):
    """A batch sampler that drops the first ``skip`` batches of ``batch_sampler`` by index arithmetic.

    For a ``BatchSampler`` the skipped indices are drawn from the inner sampler (as the original
    epoch drew them, so a shuffled order comes out the same from the same RNG state) but never
    batched or loaded: skipping costs microseconds per thousand samples and no data is read.
    ``at_position`` is called once the sampler has been drawn exactly as far as when those
    batches had been read (or, for a shorter epoch, at its end): from there on the RNGs must
    continue from a checkpoint's state.

    Example:
        >>> sampler = BatchSampler(range(10), batch_size=3, drop_last=False)
        >>> list(SkipFirstBatches(sampler, skip=2))
        [[6, 7, 8], [9]]
    """

    def __init__(
        self, batch_sampler: Iterable[list[int]], skip: int, at_position: Callable[[], None] | None = None
    ) -> None:
        self.batch_sampler = batch_sampler
        self.skip = skip
        self.at_position = at_position

    def __len__(self) -> int:
        return max(0, len(self.batch_sampler) - self.skip)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[list[int]]:
        inner = self.batch_sampler
        if type(inner) is not BatchSampler:
            yield from itertools.islice(
                calling_after(iter(inner), self.skip, self.at_position), self.skip, None
            )
            return
        # Read the sampler lazily, exactly as BatchSampler would: a sampler with its own generator
        # may draw from it again at the end of the epoch, and that must happen at the same moment.
        drawn = self.skip * inner.batch_size
        indices = itertools.islice(calling_after(iter(inner.sampler), drawn, self.at_position), drawn, None)
        while batch := list(itertools.islice(indices, inner.batch_size)):
            if len(batch) < inner.batch_size and inner.drop_last:
                return
            yield batch


def calling_after(items: Iterator[Any], count: int, callback: Callable[[], None] | None) -> Iterator[Any]:
    """``items``, calling ``callback`` once ``count`` of them have been drawn, before the next one is
    (or at the end, if there are fewer).

    Example:
        >>> list(calling_after(iter("abc"), 1, lambda: print("now")))
        now
        ['a', 'b', 'c']
    """
    yield from itertools.islice(items, count)
    if callback is not None:
        callback()
    yield from items


def position_keeper(loader: Any) -> Any | None:
    """What keeps ``loader``'s position in its ``state_dict()``, or None (then resuming skips batches).

    A loader with ``state_dict()``/``load_state_dict()`` (torchdata's ``StatefulDataLoader``) keeps
    its own. A plain ``DataLoader`` without worker processes over an ``IterableDataset`` that has
    them: the dataset, which in that case has yielded exactly the batches trained on.
    """
    if _restores_itself(loader):
        return loader
    dataset = getattr(loader, "dataset", None)
    if (
        isinstance(loader, DataLoader)
        and loader.num_workers == 0
        and isinstance(dataset, IterableDataset)
        and _restores_itself(dataset)
    ):
        return dataset
    return None


def _restores_itself(obj: Any) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


def skip_batches(
    dataloader: Iterable[Any], skip: int, at_position: Callable[[], None] | None = None
) -> Iterable[Any]:
    """``dataloader`` without its first ``skip`` batches, loading none of them when it can.

    A plain ``DataLoader`` over a map-style dataset gets a :class:`SkipFirstBatches` batch
    sampler. Anything else (an ``IterableDataset``, a custom loader class) can only be skipped by
    reading: that is warned about, since it costs time and is exact only if the data comes in
    the same order again. Either way ``at_position`` is called once the skipped part was drawn.
    """
    if skip == 0 and at_position is None:
        return dataloader
    if (
        type(dataloader) is DataLoader
        and not isinstance(dataloader.dataset, IterableDataset)
        and dataloader.batch_sampler is not None
    ):
        return _with_batch_sampler(dataloader, SkipFirstBatches(dataloader.batch_sampler, skip, at_position))
    if skip == 0:
        return calling_after(iter(dataloader), 0, at_position)
    warnings.warn(
        f"resuming mid-epoch: {type(dataloader).__name__} cannot skip batches by index, so the first {skip} "
        "batches of this epoch are read and dropped; the resume is exact only if the data comes in the same "
        "order (use torchdata's StatefulDataLoader, give an IterableDataset state_dict()/load_state_dict() "
        "and read it with num_workers=0 or a StatefulDataLoader, or use a map-style dataset)",
        stacklevel=2,
    )
    return itertools.islice(calling_after(iter(dataloader), skip, at_position), skip, None)


def with_distributed_sampler(
    dataloader: Iterable[Any], num_replicas: int, rank: int, seed: int = 0
) -> Iterable[Any]:
    """``dataloader`` reading only this rank's shard, through a ``DistributedSampler``.

    The loader's ``batch_size`` stays per rank; shuffling is kept if the loader shuffled.
    Loaders that already use a ``DistributedSampler``, iterable datasets and custom loader
    classes are returned unchanged (they shard themselves); a :class:`~tasktrain.streams.ShardedStream`
    is told this rank and the number of ranks.
    """
    dataset = getattr(dataloader, "dataset", None)
    if isinstance(dataset, ShardedStream):
        dataset.assign(rank, num_replicas)
        return dataloader
    if (
        type(dataloader) is not DataLoader
        or isinstance(dataloader.dataset, IterableDataset)
        or isinstance(dataloader.sampler, DistributedSampler)
        or dataloader.batch_sampler is None
        or type(dataloader.batch_sampler) is not BatchSampler
    ):
        return dataloader
    if type(dataloader.sampler) not in (SequentialSampler, RandomSampler):
        raise ValueError(
            f"the dataloader's sampler is a {type(dataloader.sampler).__name__}, which tasktrain cannot shard "
            f"over {num_replicas} data-parallel ranks without changing what it samples; give the loader a sampler "
            "that shards itself (e.g. a DistributedSampler, or your sampler restricted to this rank's share)"
        )
    shuffle = isinstance(dataloader.sampler, RandomSampler)
    sampler: DistributedSampler[Any] = DistributedSampler(
        dataloader.dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed
    )
    batch_sampler = BatchSampler(
        sampler, dataloader.batch_sampler.batch_size, dataloader.batch_sampler.drop_last
    )
    return _with_batch_sampler(dataloader, batch_sampler)


@dataclass(frozen=True)
class PredictionShard:
    """One data-parallel rank's contiguous slice of a prediction dataset, and how to undo its padding.

    Every rank gets ``ceil(n / num_replicas)`` indices, so every rank runs the same number of
    batches (sharded strategies need that: each forward is a collective). The last rank's slice
    is padded by repeating the last index; :meth:`trim` drops the outputs of those repeats.

    Example:
        >>> shard = PredictionShard(num_samples=5, num_replicas=2, rank=1, batch_size=2, drop_last=False)
        >>> shard.indices(), shard.padding
        ([3, 4, 4], 1)
    """

    num_samples: int
    num_replicas: int
    rank: int
    batch_size: int
    drop_last: bool

    @property
    def per_rank(self) -> int:
        return -(-self.num_samples // self.num_replicas)

    @property
    def padding(self) -> int:
        """How many of this rank's indices are repeats (only the last ranks have any)."""
        start = self.rank * self.per_rank
        return self.per_rank - max(0, min(self.per_rank, self.num_samples - start))

    def indices(self) -> list[int]:
        start = self.rank * self.per_rank
        return [min(i, self.num_samples - 1) for i in range(start, start + self.per_rank)]

    def trim(self, outputs: list[Any]) -> list[Any]:
        """The batch outputs without the padded samples' rows (tensors are sliced along dim 0)."""
        real = self.per_rank - self.padding
        kept: list[Any] = []
        for i, out in enumerate(outputs):
            size = min(self.batch_size, self.per_rank - i * self.batch_size)
            keep = max(0, min(size, real - i * self.batch_size))
            if keep == size:
                kept.append(out)
            elif keep > 0:
                kept.append(_first_rows(out, keep, size))
        return kept


def _first_rows(output: Any, keep: int, size: int) -> Any:
    """``output`` with only the first ``keep`` of its ``size`` rows, for every tensor in it."""
    problem = (
        f"predict: the last batch on this rank ends with {size - keep} repeated sample(s) that give every rank "
        "an equal share, and its output cannot be trimmed"
    )
    advice = (
        "return per-sample tensors from predict_step, or make the dataset size divisible by the number "
        "of data-parallel ranks"
    )
    cut_any = False

    def cut(tensor: Tensor) -> Tensor:
        nonlocal cut_any
        if tensor.dim() == 0 or tensor.shape[0] != size:
            raise ValueError(
                f"{problem}: a tensor of shape {tuple(tensor.shape)} has no row per sample ({size}); {advice}"
            )
        cut_any = True
        return tensor[:keep]

    trimmed = apply_to_collection(output, Tensor, cut)
    if not cut_any:
        raise ValueError(f"{problem}: it ({type(output).__name__}) holds no tensors; {advice}")
    return trimmed


def shard_for_prediction(
    dataloader: Iterable[Any], num_replicas: int, rank: int
) -> tuple[Iterable[Any], PredictionShard | None]:
    """``dataloader`` reading only this rank's contiguous slice, and the shard (None: left as is).

    Loaders that shard themselves (a ``DistributedSampler``, an iterable dataset, a custom loader
    class or batch sampler) are left unchanged. A shuffling loader is refused: predictions are
    returned in dataset order.
    """
    if (
        num_replicas == 1
        or type(dataloader) is not DataLoader
        or isinstance(dataloader.dataset, IterableDataset)
        or type(dataloader.batch_sampler) is not BatchSampler
        or isinstance(dataloader.sampler, DistributedSampler)
    ):
        return dataloader, None
    if type(dataloader.sampler) is not SequentialSampler:
        raise ValueError(
            f"predict under {num_replicas} data-parallel ranks: the dataloader's sampler is a "
            f"{type(dataloader.sampler).__name__}; tasktrain splits the dataset in order and returns the "
            "predictions in that order, so pass a loader with shuffle=False (or one that shards itself)"
        )
    batch_sampler = dataloader.batch_sampler
    size = len(dataloader.sampler)  # a SequentialSampler: the dataset's length
    shard = PredictionShard(size, num_replicas, rank, batch_sampler.batch_size, batch_sampler.drop_last)
    batches = BatchSampler(shard.indices(), shard.batch_size, shard.drop_last)
    return _with_batch_sampler(dataloader, batches), shard


def gather_predictions(outputs: list[Any], shard: PredictionShard | None, strategy: Strategy) -> list[Any]:
    """Every data-parallel rank's ``predict_step`` outputs, in dataset order, on every rank.

    ``shard`` (from :func:`shard_for_prediction`) trims this rank's padding first. Ranks of one
    tensor-parallel group predicted the same batches: one copy per data-parallel rank is kept.
    """
    if shard is not None:
        outputs = shard.trim(outputs)
    if strategy.world_size == 1:
        return outputs
    per_rank = dict(reversed(strategy.all_gather_object((strategy.data_parallel_rank, outputs))))
    return [out for rank in sorted(per_rank) for out in per_rank[rank]]


def sampler_generator(dataloader: Iterable[Any] | None) -> torch.Generator | None:
    """The ``torch.Generator`` that shuffles ``dataloader``, if it has its own (else the global RNG does)."""
    for holder in (dataloader, getattr(dataloader, "batch_sampler", None)):
        generator = getattr(getattr(holder, "sampler", None), "generator", None)
        if isinstance(generator, torch.Generator):
            return generator
    return None


def _with_batch_sampler(loader: DataLoader[Any], batch_sampler: Sampler[list[int]]) -> DataLoader[Any]:
    """A copy of ``loader`` that draws its batches of indices from ``batch_sampler``."""
    options: dict[str, Any] = {
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "multiprocessing_context": loader.multiprocessing_context,
        "generator": loader.generator,
        "persistent_workers": loader.persistent_workers,
        "pin_memory_device": loader.pin_memory_device,
    }
    if loader.num_workers > 0:
        options["prefetch_factor"] = loader.prefetch_factor
    if hasattr(loader, "in_order"):
        options["in_order"] = loader.in_order
    return DataLoader(loader.dataset, batch_sampler=batch_sampler, **options)
