"""DeepSpeed ZeRO stages 1-3 on two CPU processes (gloo), against the single-process reference.

DeepSpeed runs for real here: its CPU accelerator, a torch optimizer and
``zero_allow_untested_optimizer``. The config tests need no processes.
"""

from __future__ import annotations

from typing import Any

import _dist_checks as checks
import _dist_workers as workers
import pytest

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
