"""Resuming a stream: time to the first batch after a restore, at step 10 and at step 100,000.

A ``ShardedStream`` over an endless stream whose item ``i`` is computed from ``i`` (as a
tokenised corpus indexed by position, or a file of fixed-size records, would be) is read through
torchdata's ``StatefulDataLoader`` up to the step, its ``state_dict()`` is taken (what the
Trainer's checkpoints hold), and a fresh loader is restored from it and asked for one batch:
what ``fit(ckpt_path=...)`` does before its first resumed step. The same is timed for a plain
iterable stream that can only be skipped by reading and dropping (what resuming a stream costs
without a position). Medians over ``--rounds``.

Run:  .venv/bin/python benchmarks/streaming.py [--rounds 5] [--batch 32] [--workers 0]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Iterator

import torch
from torch.utils.data import IterableDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from tasktrain.streams import ShardedStream

POSITIONS = (10, 100_000)


def items(start: int, step: int) -> Iterator[torch.Tensor]:
    """Item ``i`` is 16 numbers computed from ``i``: reaching any position costs nothing."""
    for i in itertools.count(start, step):
        yield torch.arange(i, i + 16, dtype=torch.float32)


class Plain(IterableDataset[torch.Tensor]):
    def __iter__(self) -> Iterator[torch.Tensor]:
        return items(0, 1)


def _state_at(step: int, batch: int, workers: int) -> dict:
    loader = StatefulDataLoader(ShardedStream(items), batch_size=batch, num_workers=workers)
    iterator = iter(loader)
    for _ in range(step):
        next(iterator)
    return loader.state_dict()


def _resume_stream(state: dict, batch: int, workers: int) -> float:
    started = time.perf_counter()
    loader = StatefulDataLoader(ShardedStream(items), batch_size=batch, num_workers=workers)
    loader.load_state_dict(state)
    next(iter(loader))
    return time.perf_counter() - started


def _resume_by_skipping(step: int, batch: int) -> float:
    started = time.perf_counter()
    batches = iter(torch.utils.data.DataLoader(Plain(), batch_size=batch))
    for _ in range(step + 1):
        next(batches)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    print(f"stream of 16-float items, batches of {args.batch}, {args.workers} workers, {args.rounds} rounds")
    for step in POSITIONS:
        state = _state_at(step, args.batch, args.workers)
        resumed = statistics.median(
            _resume_stream(state, args.batch, args.workers) for _ in range(args.rounds)
        )
        skipped = statistics.median(
            _resume_by_skipping(step, args.batch) for _ in range(max(1, args.rounds // 2))
        )
        print(
            f"resume at step {step:>7}: ShardedStream first batch after {resumed * 1e3:7.2f} ms; "
            f"read-and-drop {skipped * 1e3:9.1f} ms"
        )


if __name__ == "__main__":
    main()
