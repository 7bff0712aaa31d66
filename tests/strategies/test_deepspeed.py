"""DeepSpeed ZeRO stages 1-3 on two CPU processes (gloo), against the single-process reference.

DeepSpeed runs for real here: its CPU accelerator, a torch optimizer and
``zero_allow_untested_optimizer``. The config tests need no processes.
"""

from __future__ import annotations

from typing import Any

import _dist_checks as checks
import _dist_workers as workers
import pytest
import torch

pytest.importorskip("deepspeed")

import tasktrain as tt
from tasktrain.precision import build_precision
from tasktrain.strategies import DeepSpeed
from tasktrain.strategies.launcher import spawn


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("deepspeed")
    return spawn(workers.run_scenarios, ("deepspeed", str(root)), nprocs=workers.WORLD_SIZE)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stage_matches_single_process_training_with_accumulation_and_count_items(ranks, stage):
    """The loops own accumulation (remainder group included); DeepSpeed must not rescale the loss again."""
    checks.check_conformance(checks.outcome(ranks, f"stage{stage}"))


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stage_resumes_bit_identically_with_its_optimizer_state(ranks, stage):
    """AdamW state, fp32 master weights and step count survive a checkpoint, stopped mid-epoch."""
    checks.check_exact_resume(checks.outcome(ranks, f"resume_stage{stage}"))


@pytest.mark.parametrize("stage", [1, 3])
def test_a_zero_checkpoint_resumes_in_one_process_and_exports(ranks, stage, tmp_path):
    """The checkpoint holds full tensors keyed by name, like every strategy's: no DeepSpeed needed to read it."""
    result = checks.outcome(ranks, f"resume_stage{stage}")
    checks.check_full_layout(result)
    checks.check_load_from_checkpoint(result)
    checks.check_consolidate(result, tmp_path)
    checks.check_one_process_restores(result, tmp_path)


@pytest.mark.parametrize("scenario", ["ddp_to_stage2", "stage3_to_ddp"])
def test_checkpoints_move_between_ddp_and_zero(ranks, scenario):
    """Same format both ways: the run resumed under the other strategy ends where the uninterrupted one does."""
    result = checks.outcome(ranks, scenario)
    assert result["resumed"]["global_step"] == result["full"]["global_step"]
    checks.assert_weights_close(result["resumed"]["weights"], result["full"]["weights"], atol=1e-6)
    resumed, full = (checks.optimizer_state_by_name(result[run]["optimizer"]) for run in ("resumed", "full"))
    assert sorted(resumed) == sorted(full)
    for name, state in full.items():
        for key, value in state.items():
            torch.testing.assert_close(resumed[name][key], value, atol=1e-6, rtol=0)


def test_config_carries_the_trainer_arguments():
    strategy = tt.Trainer(
        strategy="deepspeed_stage_3",
        accumulate_grad_batches=4,
        gradient_clip_val=0.5,
        precision="bf16-mixed",
        logger=False,
    ).strategy
    config = strategy.config()
    assert config["zero_optimization"]["stage"] == 3
    assert config["gradient_accumulation_steps"] == 4
    assert config["gradient_clipping"] == 0.5
    assert config["bf16"]["enabled"] and not config["fp16"]["enabled"]


def test_no_clipping_unless_asked():
    assert tt.Trainer(strategy="deepspeed", logger=False).strategy.config()["gradient_clipping"] == 0.0


def test_a_user_config_merges_over_the_generated_one(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(
        '{"zero_optimization": {"stage": 1, "reduce_bucket_size": 1000}, "wall_clock_breakdown": true}'
    )
    strategy = DeepSpeed(config=str(path), stage=3)
    strategy.configure(2, None, "norm")
    config = strategy.config()
    assert config["zero_optimization"] == {"stage": 1, "reduce_bucket_size": 1000}
    assert config["wall_clock_breakdown"] is True
    assert config["gradient_accumulation_steps"] == 2  # untouched keys keep the Trainer's value


def test_bad_combinations_fail_before_any_process_starts():
    with pytest.raises(ValueError, match="stage=4"):
        DeepSpeed(stage=4)
    with pytest.raises(ValueError, match="gradient_clip_algorithm='value'"):
        tt.Trainer(strategy="deepspeed", gradient_clip_val=1.0, gradient_clip_algorithm="value", logger=False)
    strategy = DeepSpeed(accelerator="cpu", precision=build_precision("16-mixed"))
    with pytest.raises(ValueError, match="16-mixed"):
        strategy.setup_environment()
