"""``ShardedStream``: an iterable dataset dealt to data-parallel ranks and loader workers, resumable in O(1)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from torch.utils.data import IterableDataset, get_worker_info

T = TypeVar("T")

#: ``open_stream(start, step)`` yields the stream's items ``start``, ``start + step``, ... .
OpenStream = Callable[[int, int], Iterator[T]]


class ShardedStream(IterableDataset[T], Generic[T]):
    """A stream of items split over data-parallel ranks and DataLoader workers, that resumes without re-reading.

    Item ``i`` of the stream goes to shard ``i % shards``, where there is one shard per
    (rank, worker) pair: shard ``rank * workers + worker``. Each shard asks ``open_stream`` for its
    own items only, from where it stands, so the source decides how to get there: a generator
    that computes item ``i`` jumps, a file of fixed-size records seeks, a tokenised corpus
    indexes. A shard's position (how many items it yielded this pass) is its ``state_dict()``:
    with torchdata's ``StatefulDataLoader`` (any ``num_workers``) the Trainer's checkpoints carry
    it and a resumed run continues at that item. Resume cost does not grow with the position.

    The Trainer's parallel strategies tell the stream their data-parallel rank and size when they
    prepare the loader; without a strategy (or to override it) pass ``rank`` and ``world_size``.
    Each ``iter()`` after the resumed one starts a new pass from item 0. For equal steps on every
    rank, the stream should be long enough (or endless) and the run bounded by ``max_steps``.

    Args:
        open_stream: ``open_stream(start, step)`` iterates items ``start, start + step, ...``.
        rank: this process's data-parallel rank (None: set by the strategy, else 0).
        world_size: the number of data-parallel ranks (None: set by the strategy, else 1).

    Example:
        >>> stream = ShardedStream(lambda start, step: iter(range(start, 10, step)), rank=1, world_size=2)
        >>> list(stream)
        [1, 3, 5, 7, 9]
        >>> it = iter(stream); _ = next(it), next(it)
        >>> state = stream.state_dict(); state
        {'shard': 1, 'shards': 2, 'yielded': 2}
        >>> resumed = ShardedStream(lambda start, step: iter(range(start, 10, step)), rank=1, world_size=2)
        >>> resumed.load_state_dict(state); list(resumed)
        [5, 7, 9]
    """

    def __init__(
        self, open_stream: OpenStream[T], rank: int | None = None, world_size: int | None = None
    ) -> None:
        super().__init__()
        for name, value, least in (("rank", rank, 0), ("world_size", world_size, 1)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
                raise ValueError(
                    f"ShardedStream({name}={value!r}): accepted values are None or ints >= {least}"
                )
        if rank is not None and world_size is not None and rank >= world_size:
            raise ValueError(
                f"ShardedStream(rank={rank}, world_size={world_size}): rank must be < world_size"
            )
        self.open_stream = open_stream
        self.rank, self.world_size = rank, world_size
        self._yielded = 0
        self._resume_at: int | None = None

    def assign(self, rank: int, world_size: int) -> None:
        """Set the data-parallel rank and size unless given to the constructor (called by strategies)."""
        self.rank = rank if self.rank is None else self.rank
        self.world_size = world_size if self.world_size is None else self.world_size

    def shard(self) -> tuple[int, int]:
        """``(this shard, number of shards)`` in the calling process (a loader worker, or the main one)."""
        worker = get_worker_info()
        workers, worker_id = (1, 0) if worker is None else (worker.num_workers, worker.id)
        return (self.rank or 0) * workers + worker_id, (self.world_size or 1) * workers

    def __iter__(self) -> Iterator[T]:
        shard, shards = self.shard()
        start, self._resume_at = self._resume_at or 0, None
        self._yielded = start
        for item in self.open_stream(shard + start * shards, shards):
            self._yielded += 1
            yield item

    def state_dict(self) -> dict[str, Any]:
        shard, shards = self.shard()
        return {"shard": shard, "shards": shards, "yielded": self._yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        shard, shards = self.shard()
        if (state["shard"], state["shards"]) != (shard, shards):
            raise ValueError(
                f"ShardedStream.load_state_dict: the state is shard {state['shard']} of {state['shards']}, this "
                f"process reads shard {shard} of {shards}; resume with the same number of ranks and workers"
            )
        self._resume_at = self._yielded = int(state["yielded"])
