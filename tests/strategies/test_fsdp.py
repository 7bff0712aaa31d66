"""FSDP2 (``fully_shard``) with two CPU processes (gloo), checked against single-process references.

The two ranks are started once for the whole module (``ranks`` fixture) and run every scenario
of ``_dist_workers.SCENARIOS["fsdp"]`` with ``FSDP()`` strategy objects; see ``test_ddp.py`` for
how the global data maps onto the ranks.
"""

from __future__ import annotations

from typing import Any

import _dist_checks as checks
import _dist_workers as workers
import pytest
from torch import nn
from torch.utils.data import DataLoader

import tasktrain as tt
from tasktrain.checkpoint import CheckpointError
from tasktrain.strategies import FSDP
from tasktrain.strategies.launcher import spawn


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> dict[str, Any]:
    """Every FSDP scenario, run once in two spawned ranks sharing a temporary directory."""
    root = tmp_path_factory.mktemp("fsdp")
    return spawn(workers.run_scenarios, ("fsdp", str(root)), nprocs=workers.WORLD_SIZE)


# -- 1. conformance ----------------------------------------------------------------------------------
@pytest.mark.parametrize("scenario", ["conformance", "conformance_nested"], ids=["one-unit", "per-linear"])
def test_fsdp_matches_single_process_training_with_accumulation_and_count_items(ranks, scenario):
    """One FSDP unit for the whole model, and one per Linear layer (``shard_modules``)."""
    checks.check_conformance(checks.outcome(ranks, scenario))


# -- 5. exact resume -------------------------------------------------------------------------------
def test_resume_from_last_is_bit_identical_to_the_uninterrupted_run(ranks):
    checks.check_exact_resume(checks.outcome(ranks, "resume"))


# -- 6. saved by two ranks, loaded by one ------------------------------------------------------------
def test_load_from_checkpoint_of_an_fsdp_run_gives_the_full_trained_weights(ranks):
    checks.check_load_from_checkpoint(checks.outcome(ranks, "resume"))


def test_one_process_resumes_an_fsdp_checkpoint_with_a_world_size_warning(ranks, tmp_path):
    checks.check_one_process_restores(checks.outcome(ranks, "resume"), tmp_path)


def test_one_process_keeps_training_from_an_fsdp_checkpoint(ranks, tmp_path):
    checks.check_one_process_continues(checks.outcome(ranks, "resume"), tmp_path)


# -- sharded (default) and full checkpoint layouts ----------------------------------------------------
def test_fsdp_checkpoints_are_dcp_shards_written_by_every_rank(ranks):
    checks.check_sharded_layout(checks.outcome(ranks, "resume"))


def test_consolidating_an_fsdp_checkpoint_gives_the_trained_weights(ranks, tmp_path):
    checks.check_consolidate(checks.outcome(ranks, "resume"), tmp_path)


def test_full_layout_resumes_exactly_and_loads_in_one_process(ranks, tmp_path):
    result = checks.outcome(ranks, "resume_full")
    checks.check_full_layout(result)
    checks.check_exact_resume(result)
    checks.check_one_process_restores(result, tmp_path)


def test_a_sharded_checkpoint_of_another_model_is_refused_by_name(ranks):
    class Wider(workers.ItemNet):
        def __init__(self) -> None:
            super().__init__()
            self.net[0] = nn.Linear(4, 16)
            self.net[3] = nn.Linear(16, 1)

    trainer = tt.Trainer(logger=False, enable_progress_bar=False, accelerator="cpu")
    loader = DataLoader(workers.item_data(4), batch_size=2)
    with pytest.raises(
        CheckpointError, match=r"shape mismatches \['net\.0\.weight: checkpoint \(8, 4\) vs model \(16, 4\)"
    ):
        trainer.validate(Wider(), loader, ckpt_path=checks.outcome(ranks, "resume")["last_checkpoint"])


def test_an_unknown_checkpoint_layout_is_named_with_the_choices():
    with pytest.raises(
        ValueError, match=r"FSDP\(checkpoint='zip'\): accepted values are 'sharded' .* and 'full'"
    ):
        FSDP(checkpoint="zip")


def test_predict_returns_every_sample_once_in_dataset_order(ranks):
    checks.check_predictions(checks.outcome(ranks, "predict"))


# -- 9. torch.compile under FSDP2 ----------------------------------------------------------------------
def test_compiled_fsdp_per_linear_runs_compiled_graphs_and_matches_single_process_training(ranks):
    """The shards' all-gathers stay eager hooks around each compiled forward."""
    compiled = checks.outcome(ranks, "compiled_nested")
    assert compiled["graphs_captured"] > 0
    checks.check_conformance(compiled)
