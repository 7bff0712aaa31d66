"""Saving a whole training run into a checkpoint directory, and putting it back exactly."""

from __future__ import annotations

import json
import math
import warnings
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch

from tasktrain import __version__
from tasktrain.checkpoint.format import (
    CheckpointError,
    check_fits,
    load_weights_into,
    open_checkpoint,
    read_optimizer_state,
    read_rng,
    read_state,
    read_weights,
    write_checkpoint,
)
from tasktrain.checkpoint.sharded import SHARDED, is_sharded, load_sharded, save_sharded, sharded_shapes
from tasktrain.checkpoint.storage import find_last, problems
from tasktrain.data import sampler_generator
from tasktrain.loops.epoch import ResumePoint
from tasktrain.rng import RngState

if TYPE_CHECKING:
    from tasktrain.trainer import Trainer


def resolve_ckpt_path(ckpt_path: str, default_root_dir: str) -> str:
    """``"last"`` → the newest complete checkpoint under ``default_root_dir``; else check ``ckpt_path``."""
    if ckpt_path == "last":
        found = find_last(default_root_dir)
        if found is None:
            raise FileNotFoundError(
                f"ckpt_path='last': no complete checkpoint under default_root_dir={default_root_dir!r}"
            )
        return found
    issues = problems(ckpt_path)
    if issues:
        raise CheckpointError(f"ckpt_path={ckpt_path!r} is not a complete checkpoint: {'; '.join(issues)}")
    return ckpt_path


def save_trainer_checkpoint(trainer: Trainer, path: str, max_shard_bytes: int | None = None) -> None:
    """Everything needed to continue ``trainer``'s run exactly, written to the directory ``path``."""
    module = trainer.module
    assert module is not None
    strategy = trainer.strategy
    state: dict[str, Any] = {
        "global_step": trainer.state.global_step,
        "epoch": trainer.state.epoch,
        "loops": {"fit_loop": trainer.fit_loop.state_dict()},
        "callbacks": {cb.state_key: cb.state_dict() for cb in trainer.callbacks},
        "callback_metrics": {k: v for k, v in trainer.callback_metrics.items() if math.isfinite(v)},
        "hparams": dict(module.hparams),
        "versions": {"tasktrain": __version__, "torch": torch.__version__},
        "strategy": {"name": strategy.name, "world_size": strategy.world_size},
    }
    loader = trainer.train_dataloader
    loader_state = getattr(loader, "state_dict", None)
    if callable(loader_state):
        state["dataloader"] = _json_or_error(loader_state(), "the training dataloader's state_dict()")
    trainer._call("on_save_checkpoint", state)
    optimizer_state: dict[str, Any] = {"precision": strategy.precision.state_dict()}
    setup = trainer._optim
    optimizer = setup.optimizer if setup is not None else None
    if setup is not None and setup.scheduler is not None:
        optimizer_state["scheduler"] = setup.scheduler.scheduler.state_dict()
    rng = {"step": RngState.capture(sampler_generator(loader))}
    epoch_start = trainer.fit_loop.epoch_loop.epoch_start_rng
    if epoch_start is not None:
        rng["epoch_start"] = epoch_start
    weights: dict[str, Any] | None = None
    sharded: dict[str, Any] | None = None
    if strategy.saves_sharded:
        sharded = strategy.sharded_state_dict(module, optimizer)
    else:
        weights = strategy.module_state_dict(module)
        if optimizer is not None and (saved := strategy.optimizer_state_dict(module, optimizer)) is not None:
            optimizer_state["optimizer"] = saved
    rng_per_rank = strategy.all_gather_object(rng)
    writer = open_checkpoint(path, state) if strategy.is_global_zero else None
    with writer or nullcontext():
        if sharded is not None:  # every rank writes its shards into rank 0's (temporary) directory
            directory = strategy.broadcast(writer.directory if writer else None)
            save_sharded(f"{directory}/{SHARDED}", sharded)
        if writer is not None:
            if sharded is not None:
                writer.record(SHARDED)
            kwargs = {} if max_shard_bytes is None else {"max_shard_bytes": max_shard_bytes}
            write_checkpoint(writer, weights, optimizer_state, state, rng=rng_per_rank, **kwargs)
    strategy.barrier()


def restore_weights(trainer: Trainer, path: str) -> dict[str, Any]:
    """Load only the module's weights (for validate/test/predict); return the trainer state."""
    state = read_state(path)
    _restore_module(trainer, path, with_optimizer=False)
    return state


def restore_trainer_checkpoint(trainer: Trainer, path: str) -> None:
    """Put weights, optimizer, scheduler, scaler, loops, callbacks, RNG and data position back."""
    state = read_state(path)
    _check_compatible(trainer, state, path)
    optimizer_state = read_optimizer_state(path)
    if not is_sharded(path) and "optimizer" not in optimizer_state:
        raise CheckpointError(
            f"{path} holds no optimizer state (saved by strategy {state.get('strategy', {}).get('name')!r} "
            "without an optimizer), so training cannot resume from it; load its weights with "
            "TaskModule.load_from_checkpoint(path) or validate/test(ckpt_path=...)"
        )
    _restore_module(trainer, path, with_optimizer=True, optimizer_state=optimizer_state.get("optimizer"))
    setup = trainer._optim
    assert setup is not None
    if setup.scheduler is not None and "scheduler" in optimizer_state:
        setup.scheduler.scheduler.load_state_dict(optimizer_state["scheduler"])
    trainer.strategy.precision.load_state_dict(optimizer_state.get("precision", {}))
    trainer.state.load_state_dict(state)
    trainer.fit_loop.load_state_dict(state["loops"]["fit_loop"])
    trainer.logs.callback_metrics.update(state.get("callback_metrics", {}))
    saved_callbacks = state.get("callbacks", {})
    for cb in trainer.callbacks:
        if cb.state_key in saved_callbacks:
            cb.load_state_dict(saved_callbacks[cb.state_key])
    trainer._call("on_load_checkpoint", state)
    trainer.fit_loop.epoch_loop.resume_from(_resume_point(trainer, state, path))


def _restore_module(
    trainer: Trainer, path: str, with_optimizer: bool, optimizer_state: dict[str, Any] | None = None
) -> None:
    """Load the weights (and the optimizer state) from full safetensors or from DCP shards."""
    module, strategy = trainer.module, trainer.strategy
    assert module is not None
    optimizer = trainer._optim.optimizer if with_optimizer and trainer._optim is not None else None
    template = strategy.sharded_state_dict(module, optimizer) if is_sharded(path) else None
    if template is not None:  # DCP reads each rank's part straight into its shards
        check_fits(module, sharded_shapes(f"{path}/{SHARDED}"), path)
        load_sharded(f"{path}/{SHARDED}", template)
        strategy.load_sharded_state_dict(module, optimizer, template)
        return
    load_weights_into(module, read_weights(path), path, load=strategy.load_module_state_dict)
    if optimizer is not None:
        if optimizer_state is None:
            raise CheckpointError(
                f"{path} keeps its optimizer state in DCP shards, which strategy {strategy.name!r} cannot load; "
                "resume it with strategy 'fsdp', 'tp', 'ddp' or 'single'"
            )
        strategy.load_optimizer_state_dict(module, optimizer, optimizer_state)


def _resume_point(trainer: Trainer, state: dict[str, Any], path: str) -> ResumePoint:
    rng_per_rank = read_rng(path)
    rank = trainer.strategy.global_rank
    rng = rng_per_rank[rank] if rank < len(rng_per_rank) else {}
    loader = trainer.train_dataloader
    restores_itself = "dataloader" in state and callable(getattr(loader, "load_state_dict", None))
    if restores_itself:
        loader.load_state_dict(state["dataloader"])  # type: ignore[union-attr]
    skip = (
        trainer.fit_loop.epoch_loop.batch_progress.current.completed
        if trainer.fit_loop.resumes_mid_epoch
        else 0
    )
    return ResumePoint(
        skip=skip,
        epoch_start=rng.get("epoch_start"),
        step=rng.get("step"),
        loader_restores_position=restores_itself,
    )


def _check_compatible(trainer: Trainer, state: dict[str, Any], path: str) -> None:
    saved_size = state.get("strategy", {}).get("world_size", 1)
    if saved_size != trainer.strategy.world_size:
        warnings.warn(
            f"{path} was saved with world_size={saved_size}, this run has world_size={trainer.strategy.world_size}: "
            "weights and optimizer are restored, but the data order and RNG streams differ, so the resume is not exact",
            stacklevel=3,
        )


def _json_or_error(value: Any, what: str) -> Any:
    try:
        json.dumps(value)
    except TypeError as err:
        raise TypeError(f"{what} must be JSON-serialisable to be checkpointed: {err}") from err
    return value
