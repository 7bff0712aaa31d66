"""Saving a run into a checkpoint directory and loading it back: a flat ``{name: Stateful}`` mapping,
the module and its optimizers, through the strategy.

Nothing here knows the Trainer or its loops. The states are saved per rank: rank 0's in
``trainer_state.json`` (readable), and those of other ranks only where they differ from rank 0's
(their RNGs, typically), in ``states.safetensors`` with every tensor the states hold.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any, TypeVar, cast

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from tasktrain import __version__
from tasktrain.checkpoint import codec, legacy
from tasktrain.checkpoint.background import BackgroundWriter
from tasktrain.checkpoint.format import (
    CheckpointError,
    check_fits,
    check_readable,
    open_checkpoint,
    read_optimizer_state,
    read_state,
    read_state_tensors,
    read_weights,
    write_checkpoint,
)
from tasktrain.checkpoint.sharded import (
    SHARDED,
    is_sharded,
    load_sharded,
    own_shards,
    save_sharded,
    sharded_optimizer_count,
    sharded_shapes,
)
from tasktrain.checkpoint.storage import checkpoints, describe, resolve, verify
from tasktrain.state import Stateful
from tasktrain.strategies.base import ModelState, Strategy

Captured = dict[str, Any]  # {name: state_dict()}


def resolve_ckpt_path(ckpt_path: str, default_root_dir: str, strategy: Strategy | None = None) -> str | None:
    """``"last"`` → the newest checkpoint under ``default_root_dir`` that verifies; else check ``ckpt_path``.

    ``"auto"`` is ``"last"`` when there is any checkpoint under ``default_root_dir``, else None
    (start fresh). ``"last"`` skips, with a warning naming each, newer checkpoints that fail verification or
    whose ``trainer_state.json`` or safetensors headers do not parse. An explicit path must be a
    complete checkpoint (sizes are checked here, checksums when it is loaded). With a
    ``strategy`` of several ranks, rank 0 decides and every rank gets its answer (or error).

    Raises:
        FileNotFoundError: ``ckpt_path`` does not exist, or ``"last"`` finds no checkpoint.
        CheckpointError: ``ckpt_path`` is not a complete checkpoint, or no checkpoint verifies
            (also for ``"auto"``: checkpoints that all fail verification are not a fresh start).

    Example:
        >>> resolve_ckpt_path("last", "runs")  # doctest: +SKIP
        'runs/checkpoints/step=00000200'
    """
    if strategy is not None and strategy.world_size > 1:
        return _on_rank_zero(strategy, lambda: resolve_ckpt_path(ckpt_path, default_root_dir))
    if ckpt_path == "auto":
        return _last_verified(default_root_dir, "auto") if checkpoints(default_root_dir) else None
    if ckpt_path == "last":
        return _last_verified(default_root_dir)
    return resolve(ckpt_path, f"ckpt_path={ckpt_path!r}")


def _last_verified(default_root_dir: str, name: str = "last") -> str:
    skipped: list[tuple[str, str]] = []
    for candidate in checkpoints(default_root_dir):
        try:
            verify(candidate)
            check_readable(candidate)
        except (CheckpointError, OSError) as err:
            skipped.append((candidate, str(err)))
            continue
        for path, reason in skipped:
            warnings.warn(
                f"ckpt_path={name!r}: skipping {path}, which does not verify ({reason}); "
                f"using the older {candidate}",
                stacklevel=3,
            )
        return candidate
    if skipped:
        raise CheckpointError(
            f"ckpt_path={name!r}: none of the {len(skipped)} checkpoint(s) under default_root_dir="
            f"{default_root_dir!r} verifies: " + "; ".join(f"{path}: {reason}" for path, reason in skipped)
        )
    raise FileNotFoundError(
        f"ckpt_path='last': no complete checkpoint under default_root_dir={default_root_dir!r}"
    )


T = TypeVar("T")
_PORTABLE_ERRORS = (CheckpointError, FileNotFoundError, PermissionError, OSError, ValueError, TypeError)


def _on_rank_zero(strategy: Strategy, fn: Callable[[], T]) -> T:
    """``fn()`` run by rank 0 alone; every rank returns its result or raises its error, so none
    waits in a collective for a rank that failed, and files are read once, not once per rank."""
    if strategy.world_size == 1:
        return fn()
    outcome: tuple[bool, Any] | None = None
    if strategy.is_global_zero:
        try:
            outcome = (True, fn())
        except Exception as err:  # sent as type and message: not every exception pickles
            if type(err) in _PORTABLE_ERRORS:
                outcome = (False, (type(err), str(err)))
            else:
                outcome = (False, (RuntimeError, f"{type(err).__name__}: {err}"))
    ok, value = strategy.broadcast(outcome)
    if ok:
        return cast(T, value)
    kind, message = value
    raise kind(message)


def save(
    path: str,
    states: Mapping[str, Stateful],
    module: nn.Module,
    optimizers: Sequence[Optimizer],
    strategy: Strategy,
    metadata: Mapping[str, Any],
    on_save: Callable[[Captured], None] | None = None,
    max_shard_bytes: int | None = None,
    background: BackgroundWriter | None = None,
) -> None:
    """Write everything needed to resume to the directory ``path``; every rank must call this.

    ``metadata`` (step, epoch, hparams) is written for readers and never loaded into an object.
    ``on_save`` sees the captured states first and may add entries of its own. With a
    ``background`` writer, full (non-sharded) checkpoints are copied off the training path and
    written by rank 0's background thread (one save in flight); sharded ones are written now.
    """
    captured = {name: state.state_dict() for name, state in states.items()}
    if on_save is not None:
        on_save(captured)
    model = strategy.get_state(module, optimizers)
    assert model is not None, "a strategy returns a state in its own layout"
    tensors: dict[str, Tensor] = {}
    encoded = {name: codec.encode(value, tensors, name) for name, value in captured.items()}
    per_rank = strategy.all_gather_object((encoded, tensors))  # every rank's states: RNGs differ
    trainer_state = {
        **metadata,
        "versions": {"tasktrain": __version__, "torch": torch.__version__},
        "strategy": {"name": strategy.name, "world_size": strategy.world_size},
    }
    if background is not None and not model.sharded:
        if strategy.is_global_zero:  # rank 0 writes every file of a full checkpoint: no collective after this
            model, per_rank = background.stage((model, per_rank))  # once the save in flight is done
            _submit(
                background,
                path,
                model,
                per_rank,
                trainer_state,
                max_shard_bytes,
            )
        return
    writer = open_checkpoint(path, trainer_state) if strategy.is_global_zero else None
    with writer or nullcontext():
        if model.sharded:  # every rank writes its shards into rank 0's (temporary) directory
            directory = strategy.broadcast(writer.directory if writer else None)
            save_sharded(f"{directory}/{SHARDED}", _dcp_state(model))
            # Each rank hashes the shards it wrote (still in its page cache); rank 0 only records.
            own = describe(
                f"{directory}/{SHARDED}", own_shards(f"{directory}/{SHARDED}", strategy.global_rank)
            )
            described = {
                name: info
                for rank_files in strategy.all_gather_object(own)
                for name, info in rank_files.items()
            }
        if writer is not None:
            if model.sharded:
                writer.record(SHARDED, described)
            state_tensors, state_metadata = _rank_states(per_rank)
            write_checkpoint(
                writer,
                None if model.sharded else model.model,
                [] if model.sharded else model.optimizers,
                {**trainer_state, "states": per_rank[0][0]},
                state_tensors,
                state_metadata,
                **({} if max_shard_bytes is None else {"max_shard_bytes": max_shard_bytes}),
            )
    strategy.barrier()


def _submit(
    background: BackgroundWriter,
    path: str,
    model: ModelState,
    per_rank: Sequence[tuple[dict[str, Any], dict[str, Tensor]]],
    trainer_state: dict[str, Any],
    max_shard_bytes: int | None,
) -> None:
    """Hand a full checkpoint, already copied off the training path, to the background thread."""

    def write() -> None:
        state_tensors, state_metadata = _rank_states(per_rank)
        with open_checkpoint(path, trainer_state) as writer:  # manifest last, then renamed into place
            write_checkpoint(
                writer,
                model.model,
                model.optimizers,
                {**trainer_state, "states": per_rank[0][0]},
                state_tensors,
                state_metadata,
                **({} if max_shard_bytes is None else {"max_shard_bytes": max_shard_bytes}),
            )

    background.submit(path, write)


def load(
    path: str,
    states: Mapping[str, Stateful],
    module: nn.Module,
    optimizers: Sequence[Optimizer],
    strategy: Strategy,
) -> Captured:
    """Load the checkpoint at ``path`` into module, optimizers and ``states``; return every saved state.

    States saved under names missing from ``states`` are returned all the same (for
    ``on_load_checkpoint``); entries of ``states`` the checkpoint does not have are left as they are.
    Every file is verified against the manifest first (by rank 0), so a corrupt checkpoint
    raises before anything is loaded.
    """
    _on_rank_zero(strategy, lambda: verify(path))
    trainer_state = read_state(path)
    _warn_if_resharded(trainer_state, strategy, path)
    raw_optimizers = read_optimizer_state(path)
    saved = _saved_states(path, trainer_state, raw_optimizers, strategy.global_rank)
    optimizer_states = legacy.optimizer_states(raw_optimizers)
    if optimizers and not is_sharded(path) and not optimizer_states:
        raise CheckpointError(
            f"{path} holds no optimizer state (saved by strategy "
            f"{trainer_state.get('strategy', {}).get('name')!r} without an optimizer), so training cannot "
            "resume from it; load its weights with TaskModule.load_from_checkpoint(path) or "
            "validate/test(ckpt_path=...)"
        )
    _load_model(path, module, optimizers, strategy, optimizer_states)
    for name, state in states.items():
        if name in saved:
            state.load_state_dict(saved[name])
    return saved


def load_weights(path: str, module: nn.Module, strategy: Strategy) -> None:
    """Load only the module's weights (for validate/test/predict), verified first."""
    _on_rank_zero(strategy, lambda: verify(path))
    read_state(path)  # checks the format version
    _load_model(path, module, (), strategy, [])


def _load_model(
    path: str,
    module: nn.Module,
    optimizers: Sequence[Optimizer],
    strategy: Strategy,
    optimizer_states: list[dict[str, Any]],
) -> None:
    """Weights (and optimizer states) from full safetensors or from DCP shards."""
    template = strategy.get_state(module, optimizers, sharded=True) if is_sharded(path) else None
    if template is not None:  # DCP reads each rank's part straight into its shards
        check_fits(module, sharded_shapes(f"{path}/{SHARDED}"), path)
        if optimizers:
            _check_optimizer_count(path, sharded_optimizer_count(f"{path}/{SHARDED}"), len(optimizers))
        dcp_state = _dcp_state(template)
        load_sharded(f"{path}/{SHARDED}", dcp_state)
        strategy.set_state(module, optimizers, _from_dcp_state(dcp_state, len(optimizers)))
        return
    weights = read_weights(path)
    check_fits(module, {name: t.shape for name, t in weights.items()}, path)
    if optimizers and len(optimizer_states) != len(optimizers):
        raise CheckpointError(
            f"{path} keeps its optimizer state in DCP shards, which strategy {strategy.name!r} cannot load; "
            "resume it with strategy 'fsdp', 'tp', 'ddp' or 'single'"
            if is_sharded(path)
            else _optimizer_count_message(path, len(optimizer_states), len(optimizers))
        )
    strategy.set_state(module, optimizers, ModelState(weights, optimizer_states[: len(optimizers)]))


def _check_optimizer_count(path: str, saved: int, expected: int) -> None:
    if saved != expected:
        raise CheckpointError(_optimizer_count_message(path, saved, expected))


def _optimizer_count_message(path: str, saved: int, expected: int) -> str:
    return (
        f"{path} holds the state of {saved} optimizer(s), but this run's configure_optimizers() returned "
        f"{expected}; optimizers are restored by position, so the counts must match"
    )


def _dcp_state(state: ModelState) -> dict[str, Any]:
    """The layout of the ``sharded/`` folder: ``model``, ``optimizer``, ``optimizer_1``, ..."""
    named = {"model": state.model}
    named.update({"optimizer" if i == 0 else f"optimizer_{i}": o for i, o in enumerate(state.optimizers)})
    return named


def _from_dcp_state(named: Mapping[str, Any], count: int) -> ModelState:
    keys = ["optimizer" if i == 0 else f"optimizer_{i}" for i in range(count)]
    return ModelState(named["model"], [named[key] for key in keys], sharded=True)


def _rank_states(
    per_rank: Sequence[tuple[dict[str, Any], dict[str, Tensor]]],
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors of every rank's states, and the JSON of those states of ranks > 0 that differ from rank 0's."""
    encoded0, tensors0 = per_rank[0]
    tensors = {f"0.{key}": tensor for key, tensor in tensors0.items()}
    differing: dict[str, dict[str, Any]] = {}
    for rank, (encoded, rank_tensors) in enumerate(per_rank[1:], start=1):
        for name, value in encoded.items():
            if _same(value, rank_tensors, encoded0.get(name), tensors0):
                continue
            differing.setdefault(str(rank), {})[name] = value
            tensors.update({f"{rank}.{key}": rank_tensors[key] for key in _tensor_keys(value)})
    return tensors, {"rank_states": json.dumps(differing)}


def _same(value: Any, tensors: Mapping[str, Tensor], other: Any, other_tensors: Mapping[str, Tensor]) -> bool:
    if json.dumps(value, sort_keys=True) != json.dumps(other, sort_keys=True):
        return False
    return all(torch.equal(tensors[key], other_tensors[key]) for key in _tensor_keys(value))


def _tensor_keys(value: Any) -> list[str]:
    if isinstance(value, list):
        return [key for v in value for key in _tensor_keys(v)]
    if isinstance(value, dict):
        if set(value) == {"__tensor__"}:
            return [value["__tensor__"]]
        return [key for v in value.values() for key in _tensor_keys(v)]
    return []


def _saved_states(
    path: str, trainer_state: Mapping[str, Any], raw_optimizers: Mapping[str, Any], rank: int
) -> Captured:
    """This rank's saved states, decoded (a format_version 1 checkpoint converted on the way)."""
    if trainer_state["format_version"] == 1:
        return legacy.states(path, trainer_state, raw_optimizers, rank)
    tensors, metadata = read_state_tensors(path)
    own = json.loads(metadata.get("rank_states", "{}")).get(str(rank), {})
    by_rank: dict[str, dict[str, Tensor]] = {}
    for key, tensor in tensors.items():
        owner, _, ref = key.partition(".")
        by_rank.setdefault(owner, {})[ref] = tensor
    saved: Captured = {}
    for name, value in trainer_state["states"].items():
        owner = str(rank) if name in own else "0"
        saved[name] = codec.decode(own.get(name, value), by_rank.get(owner, {}))
    return saved


def _warn_if_resharded(trainer_state: Mapping[str, Any], strategy: Strategy, path: str) -> None:
    saved_size = trainer_state.get("strategy", {}).get("world_size", 1)
    if saved_size != strategy.world_size:
        warnings.warn(
            f"{path} was saved with world_size={saved_size}, this run has world_size={strategy.world_size}: "
            "weights and optimizer are restored, but the data order and RNG streams differ, so the resume is not exact",
            stacklevel=3,
        )
