"""Tensor parallelism (DTensor) on 2 CPU processes, and FSDP x TP on 4, against the single-process reference."""

from __future__ import annotations

from typing import Any

import _dist_checks as checks
import _dist_workers as workers
import pytest
from torch.utils.data import DataLoader

import tasktrain as tt
import tasktrain.trainer as trainer_module
from tasktrain.strategies.launcher import spawn


def _check_weights_and_losses(result: dict[str, Any]) -> None:
    weights, losses = checks.reference()
    assert result["global_step"] == len(losses)
    checks.assert_weights_close(result["weights"], weights, atol=1e-6)
    assert result["step_losses"] == pytest.approx(losses, abs=1e-5)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> dict[str, Any]:
    """Every tensor-parallel scenario, run once in two spawned ranks."""
    root = tmp_path_factory.mktemp("tp")
    return spawn(workers.run_scenarios, ("tp", str(root)), nprocs=workers.WORLD_SIZE)


def test_tensor_parallel_matches_single_process_training(ranks):
    _check_weights_and_losses(checks.outcome(ranks, "conformance"))


def test_tensor_parallel_resumes_exactly_from_dcp_shards(ranks):
    result = checks.outcome(ranks, "resume")
    checks.check_sharded_layout(result)
    checks.check_exact_resume(result)


def test_a_tensor_parallel_checkpoint_loads_and_resumes_in_one_process(ranks, tmp_path):
    result = checks.outcome(ranks, "resume")
    checks.check_load_from_checkpoint(result)
    checks.check_consolidate(result, tmp_path)
    checks.check_one_process_restores(result, tmp_path)


def test_fsdp_times_tp_on_four_processes_matches_single_process_training(tmp_path):
    ranks = spawn(workers.run_scenarios, ("fsdp_tp", str(tmp_path)), nprocs=4)
    _check_weights_and_losses(checks.outcome(ranks, "conformance"))


def test_a_module_without_a_plan_fails_before_any_process_starts(monkeypatch):
    def no_spawn(*args, **kwargs):
        raise AssertionError("spawned processes for a module that cannot run")

    monkeypatch.setattr(trainer_module, "spawn", no_spawn)
    trainer = tt.Trainer(strategy="tp", devices=2, logger=False, enable_checkpointing=False)
    with pytest.raises(ValueError, match=r"parallelize\(mesh\)"):
        trainer.fit(workers.ItemNet(), DataLoader(workers.item_data(), batch_size=2))


def test_predict_returns_every_sample_once_in_dataset_order(ranks):
    checks.check_predictions(checks.outcome(ranks, "predict"))
