"""Assertions shared by the DDP and FSDP tests: the parent process checks what rank 0 returned."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from _dist_workers import (
    ACCUMULATE,
    CONFORMANCE_EPOCHS,
    PER_RANK_BATCH,
    PREDICT_SAMPLES,
    RESUME_SAMPLES,
    RESUME_STEPS,
    RESUME_STOP,
    WORLD_SIZE,
    ItemNet,
    index_data,
    initial_weights,
    item_data,
    reference_fit,
)
from safetensors.torch import load_file
from torch import Tensor
from torch.utils.data import DataLoader

import tasktrain as tt
from tasktrain.checkpoint import consolidate, read_optimizer_state

GLOBAL_BATCH = PER_RANK_BATCH * WORLD_SIZE * ACCUMULATE
with torch.random.fork_rng():  # building a module draws random numbers: keep the global RNG as it was
    PARAM_NAMES = [name for name, _ in ItemNet().named_parameters()]


def outcome(results: dict[str, Any], scenario: str) -> dict[str, Any]:
    """One scenario's result from the ranks, or the test fails with the ranks' tracebacks."""
    value = results[scenario]
    if "error" in value:
        pytest.fail(f"scenario {scenario!r} failed in the spawned ranks:\n{value['error']}", pytrace=False)
    return value


def reference() -> tuple[dict[str, Tensor], list[float]]:
    """Plain-PyTorch single-process SGD on the global batches, weighted by loss items."""
    return reference_fit(initial_weights(0), item_data(), GLOBAL_BATCH, CONFORMANCE_EPOCHS)


def assert_weights_close(actual: dict[str, Tensor], expected: dict[str, Tensor], atol: float) -> None:
    assert sorted(actual) == sorted(expected)
    diffs = {k: (actual[k].float() - expected[k].float()).abs().max().item() for k in expected}
    assert max(diffs.values()) <= atol, f"weights differ by more than {atol}: {diffs}"


def assert_weights_equal(actual: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    differ = [k for k in expected if not torch.equal(actual[k], expected[k])]
    assert not differ, f"weights not bit-identical: {differ}"


def optimizer_state_by_name(state: dict[str, Any]) -> dict[str, dict[str, Tensor]]:
    """Optimizer state keyed by parameter name (plain state dicts use indices, FSDP's use names)."""
    return {PARAM_NAMES[k] if isinstance(k, int) else k: v for k, v in state["state"].items()}


def assert_optimizer_states_equal(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    actual_state, expected_state = optimizer_state_by_name(actual), optimizer_state_by_name(expected)
    assert sorted(actual_state) == sorted(expected_state) == sorted(PARAM_NAMES)
    for name, state in expected_state.items():
        assert sorted(actual_state[name]) == sorted(state), name
        for key, value in state.items():
            assert torch.equal(actual_state[name][key], value), f"optimizer state {name}.{key} differs"


# -- 1. conformance ----------------------------------------------------------------------------------
def check_conformance(result: dict[str, Any]) -> None:
    """Two ranks reach the single-process weights and losses (count_items over ranks and micro-batches)."""
    weights, losses = reference()
    naive, _ = reference_fit(
        initial_weights(0), item_data(), GLOBAL_BATCH, CONFORMANCE_EPOCHS, micro_batch=PER_RANK_BATCH
    )
    diff = max((naive[k] - weights[k]).abs().max().item() for k in weights)
    assert diff > 1e-4, "the data must make item weighting matter, or this test proves nothing"

    assert result["global_step"] == len(losses) == 10
    assert_weights_close(result["weights"], weights, atol=1e-6)
    assert result["step_losses"] == pytest.approx(losses, abs=1e-5)
    assert result["train_loss"] == pytest.approx(sum(losses) / len(losses), abs=1e-5)
    items = item_data().tensors[2]
    assert result["items_seen"] == [
        CONFORMANCE_EPOCHS * int(items[rank::WORLD_SIZE].sum()) for rank in range(WORLD_SIZE)
    ]


# -- 5. exact resume ---------------------------------------------------------------------------------
def check_exact_resume(result: dict[str, Any]) -> None:
    full, stopped, resumed = result["full"], result["stopped"], result["resumed"]
    steps_per_epoch = 3
    assert stopped["global_step"] == RESUME_STOP and RESUME_STOP % steps_per_epoch != 0
    assert stopped["epoch"] == 1, "the first run must stop in the middle of an epoch"
    assert full["global_step"] == resumed["global_step"] == RESUME_STEPS
    assert full["epoch"] == resumed["epoch"] == 2
    assert not all(torch.equal(stopped["weights"][k], full["weights"][k]) for k in full["weights"])
    assert_weights_equal(resumed["weights"], full["weights"])
    assert_optimizer_states_equal(resumed["optimizer"], full["optimizer"])


# -- checkpoint layout -------------------------------------------------------------------------------
def check_sharded_layout(result: dict[str, Any]) -> None:
    """Each rank wrote its own DCP shards; nothing was gathered into safetensors or optimizer.pt."""
    path = Path(result["last_checkpoint"])
    files = json.loads((path / "manifest.json").read_text())["files"]
    shards = {name for name in files if name.startswith("sharded/")}
    assert shards == {"sharded/.metadata", *(f"sharded/__{rank}_0.distcp" for rank in range(WORLD_SIZE))}
    assert "model.safetensors" not in files
    assert read_optimizer_state(str(path)) == {}  # the optimizer state is in the shards


def check_full_layout(result: dict[str, Any]) -> None:
    files = json.loads((Path(result["last_checkpoint"]) / "manifest.json").read_text())["files"]
    assert "model.safetensors" in files and not any(name.startswith("sharded/") for name in files)


def check_consolidate(result: dict[str, Any], root: Path) -> None:
    """``consolidate`` (and so ``tasktrain export``) writes the trained weights as one safetensors file."""
    out = root / "model.safetensors"
    consolidate(result["last_checkpoint"], str(out))
    assert_weights_equal(load_file(out), result["resumed"]["weights"])


# -- 6. saved by two ranks, loaded by one ------------------------------------------------------------
def check_load_from_checkpoint(result: dict[str, Any]) -> None:
    path = result["last_checkpoint"]
    assert path is not None and Path(path).name == f"step={RESUME_STEPS:08d}"
    loaded = ItemNet.load_from_checkpoint(path)
    assert dict(loaded.hparams) == {"optimizer": "adamw", "lr": 1e-2, "dropout": 0.2}
    assert_weights_equal(loaded.state_dict(), result["resumed"]["weights"])


def fit_one_process_from(path: str, root: Path, max_steps: int) -> tuple[ItemNet, tt.Trainer]:
    """Resume a two-rank checkpoint in this process; it must warn that the world size changed."""
    torch.manual_seed(99)
    module = ItemNet(optimizer="adamw", lr=1e-2, dropout=0.2)
    trainer = tt.Trainer(
        max_steps=max_steps,
        accumulate_grad_batches=ACCUMULATE,
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        accelerator="cpu",
    )
    loader = DataLoader(item_data(RESUME_SAMPLES), batch_size=PER_RANK_BATCH * WORLD_SIZE, shuffle=True)
    with pytest.warns(UserWarning, match=r"world_size=2, this run has world_size=1"):
        trainer.fit(module, loader, ckpt_path=path)
    return module, trainer


def check_one_process_restores(result: dict[str, Any], root: Path) -> None:
    """With max_steps at the checkpoint's step nothing trains: weights and optimizer are as saved."""
    module, trainer = fit_one_process_from(result["last_checkpoint"], root, max_steps=RESUME_STEPS)
    assert trainer.state.global_step == RESUME_STEPS
    assert_weights_equal(module.state_dict(), result["resumed"]["weights"])
    assert trainer.optimizer is not None
    assert_optimizer_states_equal(trainer.optimizer.state_dict(), result["resumed"]["optimizer"])


def check_one_process_continues(result: dict[str, Any], root: Path) -> None:
    module, trainer = fit_one_process_from(result["last_checkpoint"], root, max_steps=RESUME_STEPS + 2)
    assert trainer.state.global_step == RESUME_STEPS + 2
    saved = result["resumed"]["weights"]
    assert all(torch.isfinite(v).all() for v in module.state_dict().values())
    assert not all(torch.equal(module.state_dict()[k], saved[k]) for k in saved)
    assert trainer.optimizer is not None
    steps = {float(s["step"]) for s in trainer.optimizer.state_dict()["state"].values()}
    assert steps == {RESUME_STEPS + 2.0}  # AdamW's step count went on from the checkpoint's
    assert not math.isnan(trainer.callback_metrics.get("train/loss", 0.0))


# -- prediction ----------------------------------------------------------------------------------------
def check_predictions(result: dict[str, Any]) -> None:
    """Every sample predicted exactly once, in dataset order, as one process computes it."""
    index, x = index_data(PREDICT_SAMPLES)[:]
    net = ItemNet()
    net.load_state_dict(initial_weights(0))
    outputs = result["outputs"]
    assert torch.equal(torch.cat([out["index"] for out in outputs]), index)
    torch.testing.assert_close(
        torch.cat([out["y"] for out in outputs]), net.net(x).detach(), atol=1e-6, rtol=0
    )
