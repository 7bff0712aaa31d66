"""Under 2 gloo ranks: ``restore_best=True`` and ``ckpt_path="best"`` load the sharded (FSDP)
checkpoint whose hand-made validation loss was lowest; ``trainer.total_train_batch_size`` counts
every data-parallel rank; named validation sets are sharded and reduced per set (DDP)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import _best_workers as workers
import pytest
import torch

from _scripted import data
from tasktrain.strategies.launcher import spawn


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("best")
    return spawn(workers.run, (str(root),), nprocs=2)


def _outcome(ranks: dict[str, Any], name: str) -> dict[str, Any]:
    outcome = ranks[name]
    assert "error" not in outcome, outcome.get("error")
    return outcome


def _assert_equal(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(actual[name], value), name


def test_fsdp_restore_best_leaves_the_module_with_the_best_sharded_checkpoints_weights(ranks):
    out = _outcome(ranks, "fsdp_best")
    best_step = 2 * workers.STEPS_PER_EPOCH
    assert sorted(out["by_step"]) == [workers.STEPS_PER_EPOCH * (e + 1) for e in range(len(workers.LOSSES))]
    assert out["best_step"] == best_step and out["best_score"] == 0.5
    assert Path(out["best_path"]).name == f"step={best_step:08d}"
    assert out["sharded"]  # the FSDP checkpoint is DCP shards, loaded back by every rank
    _assert_equal(out["restored"], out["by_step"][best_step])
    final = out["by_step"][4 * workers.STEPS_PER_EPOCH]
    assert not all(torch.equal(final[k], v) for k, v in out["restored"].items())


def test_fsdp_validate_with_ckpt_path_best_loads_the_best_weights(ranks):
    out = _outcome(ranks, "fsdp_best")
    _assert_equal(out["validated"], out["by_step"][2 * workers.STEPS_PER_EPOCH])


def test_total_train_batch_size_counts_every_data_parallel_rank(ranks):
    assert _outcome(ranks, "ddp_batch_size")["total_train_batch_size"] == 4 * 3 * 2
    assert _outcome(ranks, "fsdp_best")["total_train_batch_size"] == 4 * 1 * 2


def test_each_named_set_under_ddp_equals_a_plain_evaluation_of_the_whole_set(ranks):
    out = _outcome(ranks, "ddp_named_sets")
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    net.load_state_dict({k.removeprefix("net."): v for k, v in out["weights"].items()})
    for name, (n, seed) in {"a": (8, 3), "b": (6, 4)}.items():
        x, y = data(n, seed).tensors
        with torch.no_grad():
            expected = torch.nn.functional.mse_loss(net(x), y).item()
        assert out["metrics"][f"val/{name}/loss"] == pytest.approx(expected, rel=1e-6)
    assert set(out["metrics"]) == {"val/a/loss", "val/b/loss"}
