"""The check every rank runs before the first step: do all ranks agree on what they are about to run?

Ranks that disagree would otherwise hang in a collective (different models, a checkpoint one
rank cannot see) or train diverged replicas in lockstep (different resume steps). One
``all_gather_object`` of a few facts per rank finds that in seconds, and every rank raises the
same :class:`PreflightError`, naming the ranks and hosts that differ.
"""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass, fields
from typing import Any

import torch

from tasktrain import __version__
from tasktrain.checkpoint.format import CheckpointError, read_state
from tasktrain.checkpoint.manager import resolve_ckpt_path
from tasktrain.checkpoint.storage import find_last, resolve
from tasktrain.strategies.base import Strategy

#: Trainer arguments that may differ between ranks: paths (node-local disks) and objects compared by class.
_PER_RANK_ARGUMENTS = ("default_root_dir",)


class PreflightError(RuntimeError):
    """The ranks of a job disagree on what they run; raised on every rank before the first step."""


@dataclass(frozen=True)
class CheckpointView:
    """What one rank sees of the checkpoint rank 0 chose (``step`` None: it cannot see it)."""

    step: int | None
    newest: str | None  # this rank's own newest complete checkpoint, for "last"/"auto"
    newest_step: int | None


@dataclass(frozen=True)
class RankFacts:
    """What one rank is about to run."""

    rank: int
    host: str
    world_size: int
    versions: tuple[tuple[str, str], ...]
    arguments: tuple[tuple[str, str], ...]
    module: str
    checkpoint: CheckpointView | None


def preflight(
    strategy: Strategy,
    arguments: Any,
    module: Any,
    ckpt_path: str | None,
    default_root_dir: str,
    who: str = "Trainer.fit",
) -> str | None:
    """Check that every rank agrees, and resolve ``ckpt_path`` once (rank 0) for all of them.

    ``"last"`` and ``"auto"`` are resolved by rank 0 (``"auto"`` gives None when there is no
    checkpoint under ``default_root_dir``); every rank must then see that checkpoint at the same
    step, and for ``"last"``/``"auto"`` have the same newest checkpoint. On one process only the
    path is resolved. Every rank must call it.

    Raises:
        PreflightError: on every rank, naming the ranks (and hosts) that differ.

    Example:
        >>> path = preflight(trainer.strategy, trainer.args, module, "auto", "runs")  # doctest: +SKIP
    """
    chosen = resolve_ckpt_path(ckpt_path, default_root_dir, strategy) if ckpt_path is not None else None
    if ckpt_path == "auto" and strategy.is_global_zero:  # say which, as one command line serves both
        found = (
            f"resuming from {chosen}"
            if chosen
            else f"no checkpoint under {default_root_dir!r}, starting fresh"
        )
        _say(f"{who}(ckpt_path='auto'): {found}")
    if strategy.world_size == 1:
        return chosen
    facts = RankFacts(
        rank=strategy.global_rank,
        host=socket.gethostname(),
        world_size=strategy.world_size,
        versions=(("tasktrain", __version__), ("torch", torch.__version__)),
        arguments=_fingerprint(arguments),
        module=f"{type(module).__module__}.{type(module).__qualname__}",
        checkpoint=_view(chosen, ckpt_path in ("last", "auto"), default_root_dir) if ckpt_path else None,
    )
    problems = disagreements(strategy.all_gather_object(facts))
    if problems:
        raise PreflightError(
            f"{who}: the {strategy.world_size} ranks of this job disagree, so it stops before the first step: "
            + "; ".join(problems)
        )
    return chosen


def _say(message: str) -> None:
    print(f"tasktrain: {message}", file=sys.stderr, flush=True)


def _fingerprint(arguments: Any) -> tuple[tuple[str, str], ...]:
    """The Trainer's arguments as comparable text: objects by class, paths left out."""
    out = []
    for item in fields(arguments):
        if item.name in _PER_RANK_ARGUMENTS:
            continue
        value = getattr(arguments, item.name)
        out.append((item.name, _describe(value)))
    return tuple(out)


def _describe(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_describe(v) for v in value) + "]"
    if isinstance(value, (str, int, float, bool, type(None), dict)):
        return repr(value)
    return type(value).__qualname__


def _view(chosen: str | None, newest_too: bool, default_root_dir: str) -> CheckpointView:
    step = None
    if chosen is not None:
        try:
            step = int(read_state(resolve(chosen))["global_step"])
        except (CheckpointError, OSError, KeyError, ValueError):
            step = None
    newest = find_last(default_root_dir) if newest_too else None
    newest_step = None
    if newest is not None:
        try:
            newest_step = int(read_state(newest)["global_step"])
        except (CheckpointError, OSError, KeyError, ValueError):
            newest_step = None
    return CheckpointView(step=step, newest=newest, newest_step=newest_step)


def disagreements(gathered: list[RankFacts]) -> list[str]:
    """What differs between the ranks' facts (rank 0's are the reference), one line per topic.

    Example:
        >>> disagreements([facts0, facts1])  # doctest: +SKIP
        ['module class: rank 0 (node01) runs a.Net, rank 1 (node02) runs b.Net']
    """
    first = gathered[0]
    problems: list[str] = []

    def differ(topic: str, value: Any, show: Any = repr) -> None:
        reference = value(first)
        odd = [f for f in gathered[1:] if value(f) != reference]
        if odd:
            rest = ", ".join(f"rank {f.rank} ({f.host}) has {show(value(f))}" for f in odd)
            problems.append(f"{topic}: rank 0 ({first.host}) has {show(reference)}, {rest}")

    differ("world size", lambda f: f.world_size)
    differ("versions", lambda f: dict(f.versions))
    differ("module class", lambda f: f.module)
    names = [name for name, _ in first.arguments]
    for name in names:
        differ(f"Trainer({name}=...)", lambda f, name=name: dict(f.arguments).get(name), show=str)
    if first.checkpoint is not None:
        problems.extend(_checkpoint_disagreements(gathered))
    return problems


def _checkpoint_disagreements(gathered: list[RankFacts]) -> list[str]:
    first = gathered[0]
    assert first.checkpoint is not None
    out = []
    for facts in gathered[1:]:
        view = facts.checkpoint
        assert view is not None
        where = f"rank {facts.rank} ({facts.host})"
        if first.checkpoint.step is not None and view.step is None:
            out.append(
                f"{where} cannot see the checkpoint rank 0 ({first.host}) resumes from" + _newest(view)
            )
        elif view.step != first.checkpoint.step:
            out.append(
                f"{where} sees it at step {view.step}, rank 0 ({first.host}) at step {first.checkpoint.step}"
            )
        elif (view.newest_step, _name(view.newest)) != (
            first.checkpoint.newest_step,
            _name(first.checkpoint.newest),
        ):
            out.append(
                f"{where} has another newest checkpoint than rank 0 ({first.host}): "
                f"{view.newest} (step {view.newest_step}) instead of {first.checkpoint.newest} "
                f"(step {first.checkpoint.newest_step})"
            )
    if out:
        out.append(
            "every rank must see the same checkpoints: put default_root_dir on a file system or URL shared "
            "by all nodes"
        )
    return out


def _newest(view: CheckpointView) -> str:
    return f" (its newest: {view.newest}, step {view.newest_step})" if view.newest else " (it has none)"


def _name(path: str | None) -> str | None:
    return None if path is None else path.rstrip("/").rpartition("/")[2]
