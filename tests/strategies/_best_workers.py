"""What the ranks of ``test_best_model.py`` run: the best checkpoint under FSDP, batch sizes under DDP.

Both ranks run every scenario in one process group; rank 0's plain-data results go back to the
test, which compares them with what one process computes.
"""

from __future__ import annotations

import os
import traceback
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

import tasktrain as tt
from _scripted import ScriptedVal, WeightsAtValidation, full_weights, loader
from tasktrain.callbacks import ModelCheckpoint
from tasktrain.strategies import DDP, FSDP

LOSSES = (0.9, 0.5, 0.7, 0.6)  # the best is the second validation
STEPS_PER_EPOCH = 4  # 32 samples over 2 ranks, batch 4 per rank


def fsdp_best(root: str) -> dict[str, Any]:
    """Fit with ``restore_best=True``, then ``validate(ckpt_path="best")`` a fresh module."""
    torch.manual_seed(0)
    module = ScriptedVal(LOSSES)
    checkpoint = ModelCheckpoint(monitor="val/loss", save_top_k=1, restore_best=True)
    weights = WeightsAtValidation()
    trainer = tt.Trainer(
        strategy=FSDP(),
        max_epochs=len(LOSSES),
        callbacks=[weights, checkpoint],
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
    )
    result = trainer.fit(module, loader(), val_dataloaders=loader(8, seed=1))
    restored = full_weights(trainer, module)  # a collective: every rank
    fresh = ScriptedVal(LOSSES)
    trainer.validate(fresh, loader(8, seed=1), ckpt_path="best")
    return {
        "by_step": weights.by_step,
        "restored": restored,
        "validated": full_weights(trainer, fresh),
        "best_path": result.best_model_path,
        "best_score": result.best_model_score,
        "best_step": checkpoint.best["step"] if checkpoint.best else None,
        "sharded": os.path.isdir(os.path.join(str(result.best_model_path), "sharded")),
        "total_train_batch_size": trainer.total_train_batch_size,
    }


def ddp_batch_size(root: str) -> dict[str, Any]:
    trainer = tt.Trainer(
        strategy=DDP(),
        max_steps=1,
        accumulate_grad_batches=3,
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
    )
    trainer.fit(ScriptedVal(), loader(48, batch_size=4))
    return {"total_train_batch_size": trainer.total_train_batch_size}


class DefaultVal(ScriptedVal):
    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        return tt.TaskModule.validation_step(self, batch, batch_idx)  # val/loss, synced over ranks


def ddp_named_sets(root: str) -> dict[str, Any]:
    """Two named validation sets, each sharded over the ranks (sizes that split evenly: no padding)."""
    torch.manual_seed(0)
    module = DefaultVal()
    trainer = tt.Trainer(strategy=DDP(), default_root_dir=root, logger=False, enable_progress_bar=False)
    metrics = trainer.validate(module, {"a": loader(8, 2, seed=3), "b": loader(6, 3, seed=4)})[0]
    return {"metrics": metrics, "weights": full_weights(trainer, module)}


SCENARIOS = {"fsdp_best": fsdp_best, "ddp_batch_size": ddp_batch_size, "ddp_named_sets": ddp_named_sets}


def run(root: str) -> dict[str, Any]:
    """Every scenario in this rank; a failure on any rank becomes ``{"error": tracebacks}``."""
    torch.set_num_threads(1)
    group_owner = DDP()
    group_owner.timeout = timedelta(seconds=60)
    group_owner.setup_environment()
    results: dict[str, Any] = {}
    for name, scenario in SCENARIOS.items():
        try:
            value, error = scenario(os.path.join(root, name)), None
        except Exception:
            value, error = None, traceback.format_exc()
        errors: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(errors, error)
        results[name] = {"error": "\n".join(e for e in errors if e)} if any(errors) else value
        dist.barrier()
    group_owner.teardown()
    return results
