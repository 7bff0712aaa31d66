"""Progress counters and the trainer's state: plain dataclasses that serialise to JSON."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Stateful(Protocol):
    """Anything that resumes: its state as plain data (and tensors), and back.

    Loops, callbacks, optimizers, schedulers, the precision plugin, a stateful dataloader and the
    RNGs all are. The Trainer hands a flat ``{name: Stateful}`` mapping to the checkpoint code,
    which needs nothing else (see ``docs/concepts/checkpoints.md``).

    Example:
        >>> isinstance(TrainState(), Stateful)
        True
    """

    def state_dict(self) -> Mapping[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any], /) -> None: ...


@dataclass
class Counts:
    """How many items reached each stage: ``ready`` → ``started`` → ``processed`` → ``completed``."""

    ready: int = 0
    started: int = 0
    processed: int = 0
    completed: int = 0

    def reset(self) -> None:
        self.ready = self.started = self.processed = self.completed = 0

    def roll_back_to_completed(self) -> None:
        """Forget work that began but did not complete (used when a run restarts)."""
        self.ready = self.started = self.processed = self.completed


@dataclass
class Progress:
    """Counters for one loop: ``total`` over the whole run, ``current`` since the last ``reset_current``.

    Example:
        >>> p = Progress()
        >>> p.start(); p.finish()
        >>> p.total.completed, p.current.completed
        (1, 1)
    """

    total: Counts = field(default_factory=Counts)
    current: Counts = field(default_factory=Counts)

    def start(self) -> None:
        """Mark one item ready and started."""
        t, c = self.total, self.current
        t.ready += 1
        t.started += 1
        c.ready += 1
        c.started += 1

    def finish(self) -> None:
        """Mark the started item processed and completed."""
        t, c = self.total, self.current
        t.processed += 1
        t.completed += 1
        c.processed += 1
        c.completed += 1

    def mark_processed(self) -> None:
        self.total.processed += 1
        self.current.processed += 1

    def mark_completed(self) -> None:
        self.total.completed += 1
        self.current.completed += 1

    def complete(self, n: int = 1) -> None:
        """Mark ``n`` items as having gone through every stage at once."""
        for counts in (self.total, self.current):
            counts.ready += n
            counts.started += n
            counts.processed += n
            counts.completed += n

    def reset_current(self) -> None:
        self.current.reset()

    def reset_on_restart(self) -> None:
        """Roll ``ready``/``started``/``processed`` back to ``completed`` after an interruption."""
        self.total.roll_back_to_completed()
        self.current.roll_back_to_completed()

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.total = Counts(**state["total"])
        self.current = Counts(**state["current"])


@dataclass
class TrainState:
    """What the trainer knows about the run: read it as ``trainer.state``.

    ``global_step`` counts completed optimizer steps (skipped steps included, as the step index
    advances either way), starting at 0. ``epoch`` is the index of the current epoch.
    """

    global_step: int = 0
    epoch: int = 0
    should_stop: bool = False
    stage: str | None = None  # "fit", "validate", "test", "predict" while running

    def state_dict(self) -> dict[str, Any]:
        return {"global_step": self.global_step, "epoch": self.epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.global_step = int(state["global_step"])
        self.epoch = int(state["epoch"])
