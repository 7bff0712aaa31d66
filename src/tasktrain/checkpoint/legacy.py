"""Checkpoints of format_version 1, read as the states mapping of today's format.

Version 1 wrote a fixed set of keys: the loops under ``loops.fit_loop`` (with the throughput
counters inside them), callback states under ``callbacks``, scheduler and precision state in
``optimizer.pt``, and per-rank RNG snapshots in ``rng.safetensors``. :func:`states` maps them
onto the names the Trainer uses now, so such a checkpoint loads and resumes as it did.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tasktrain.checkpoint.format import read_rng

_RENAMED_LOOP_KEYS = {
    "epoch_loop.val_loop.batch_progress": "epoch_loop.cadence.val_loop.batch_progress",
    "epoch_loop.last_val_step": "epoch_loop.cadence.last_val_step",
}
_MOVED_TO_TOTALS = {
    "epoch_loop.accumulation.samples_seen": "samples",
    "epoch_loop.accumulation.items_seen": "items",
    "epoch_loop.losses": "losses",
}


def optimizer_states(raw: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The optimizer states of an ``optimizer.pt``, by position, in either format."""
    if "optimizers" in raw:
        return list(raw["optimizers"])
    return [raw["optimizer"]] if "optimizer" in raw else []


def states(
    path: str, state: Mapping[str, Any], raw_optimizers: Mapping[str, Any], rank: int
) -> dict[str, Any]:
    """The states a format_version 1 checkpoint holds for ``rank``, under today's names."""
    loop_state = dict(state["loops"]["fit_loop"])
    rng_per_rank = read_rng(path)
    rng = rng_per_rank[rank] if rank < len(rng_per_rank) else {}
    fit_loop = {
        _RENAMED_LOOP_KEYS.get(key, key): value
        for key, value in loop_state.items()
        if key not in _MOVED_TO_TOTALS
    }
    fit_loop["epoch_loop.exhausted"] = not _stopped_mid_epoch(loop_state)
    epoch_start = rng.get("epoch_start")
    fit_loop["epoch_loop.epoch_start_rng"] = epoch_start.state_dict() if epoch_start is not None else None
    fit_loop["epoch_loop.dataloader"] = state.get("dataloader")
    converted: dict[str, Any] = {
        "trainer": {"global_step": state["global_step"], "epoch": state["epoch"]},
        "fit_loop": fit_loop,
        "totals": {name: loop_state[key] for key, name in _MOVED_TO_TOTALS.items()},
        "logs": {"callback_metrics": dict(state.get("callback_metrics", {}))},
        "precision": dict(raw_optimizers.get("precision", {})),
    }
    if "scheduler" in raw_optimizers:
        converted["lr_scheduler.0"] = raw_optimizers["scheduler"]
    converted.update({f"callbacks.{key}": value for key, value in state.get("callbacks", {}).items()})
    if "step" in rng:
        converted["rng"] = rng["step"].state_dict()
    return converted


def _stopped_mid_epoch(loop_state: Mapping[str, Any]) -> bool:
    """Version 1's rule: inside an epoch unless its data was read and only its end is pending."""
    epochs = loop_state["epoch_progress"]["total"]
    end_pending = epochs["processed"] > epochs["completed"]
    return not end_pending and loop_state["epoch_loop.batch_progress"]["current"]["completed"] > 0
