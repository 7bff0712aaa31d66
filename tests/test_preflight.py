"""The preflight: every rank agrees on world size, versions, Trainer arguments, module class and the
checkpoint to resume from, or every rank fails in seconds naming the ranks that differ."""

from __future__ import annotations

import shutil
import time

import pytest

import _preflight_workers as workers
from tasktrain.checkpoint import find_last, read_state
from tasktrain.preflight import CheckpointView, RankFacts, disagreements
from tasktrain.strategies.launcher import spawn


def facts(rank: int, **changes) -> RankFacts:
    base = dict(
        rank=rank,
        host=f"node{rank}",
        world_size=2,
        versions=(("tasktrain", "1.0"), ("torch", "2.13")),
        arguments=(("max_steps", "8"), ("precision", "'32-true'")),
        module="train.Net",
        checkpoint=None,
    )
    return RankFacts(**{**base, **changes})


def test_ranks_that_agree_have_no_disagreement():
    assert disagreements([facts(0), facts(1)]) == []


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"world_size": 3}, "world size: rank 0 (node0) has 2, rank 1 (node1) has 3"),
        ({"versions": (("tasktrain", "1.1"), ("torch", "2.13"))}, "versions: rank 0 (node0)"),
        ({"module": "old.Net"}, "module class: rank 0 (node0) has 'train.Net', rank 1 (node1) has 'old.Net'"),
        (
            {"arguments": (("max_steps", "9"), ("precision", "'32-true'"))},
            "Trainer(max_steps=...): rank 0 (node0) has 8, rank 1 (node1) has 9",
        ),
    ],
    ids=["world-size", "versions", "module", "arguments"],
)
def test_each_disagreement_names_the_rank_and_host(changes, expected):
    (problem,) = disagreements([facts(0), facts(1, **changes)])
    assert expected in problem


def test_a_rank_that_cannot_see_the_checkpoint_or_sees_another_is_named():
    chosen = CheckpointView(step=32, newest="r/checkpoints/step=00000032", newest_step=32)
    blind = CheckpointView(step=None, newest="r/checkpoints/step=00000016", newest_step=16)
    newer = CheckpointView(step=32, newest="r/checkpoints/step=00000048", newest_step=48)
    problems = disagreements(
        [
            facts(0, checkpoint=chosen),
            facts(1, checkpoint=blind),
            facts(2, checkpoint=chosen),
            facts(3, checkpoint=newer),
        ]
    )
    text = "; ".join(problems)
    assert (
        "rank 1 (node1) cannot see the checkpoint rank 0 (node0) resumes from (its newest: r/checkpoints/step=00000016, step 16)"
        in text
    )
    assert "rank 3 (node3) has another newest checkpoint" in text and "rank 2" not in text
    assert "shared" in text


# -- in a job ------------------------------------------------------------------------------------
@pytest.fixture
def two_roots(tmp_path):
    """rank0/ holds checkpoints at steps 2 and 4; rank1/ only the one at step 2 (node-local disks)."""
    run = workers.trainer(
        str(tmp_path / "rank0"),
        accelerator="cpu",
        max_steps=4,
        callbacks=[workers.tt.callbacks.ModelCheckpoint(every_n_train_steps=2, keep_last=2)],
    )
    run.fit(workers.Net(), workers.loader())
    step2 = tmp_path / "rank0" / "checkpoints" / "step=00000002"
    shutil.copytree(step2, tmp_path / "rank1" / "checkpoints" / step2.name)
    assert read_state(find_last(str(tmp_path / "rank1")))["global_step"] == 2
    return tmp_path


def test_ranks_with_different_last_checkpoints_fail_in_seconds_naming_the_rank(two_roots):
    start = time.monotonic()
    with pytest.raises(Exception, match="PreflightError") as info:
        spawn(workers.fit_from_own_root, (str(two_roots), "last"), nprocs=2)
    assert time.monotonic() - start < 60
    message = str(info.value)
    assert "rank 1" in message and "has another newest checkpoint than rank 0" in message
    assert "step=00000002 (step 2) instead of" in message and "(step 4)" in message


def test_ranks_running_different_module_classes_fail_before_the_first_step(tmp_path):
    with pytest.raises(
        Exception,
        match=r"module class: rank 0 .* has '_preflight_workers.Net', rank 1 .* has '_preflight_workers.OtherNet'",
    ):
        spawn(workers.fit_from_own_root, (str(tmp_path), None, True), nprocs=2)


# -- "auto" --------------------------------------------------------------------------------------
def test_auto_starts_fresh_without_a_checkpoint_and_resumes_with_one(tmp_path, capfd):
    def run(root, max_steps, ckpt_path):
        workers.torch.manual_seed(0)
        module = workers.Net()
        callbacks = [workers.tt.callbacks.ModelCheckpoint(every_n_train_steps=2)]
        trainer = workers.trainer(str(root), accelerator="cpu", max_steps=max_steps, callbacks=callbacks)
        return trainer.fit(module, workers.loader(), ckpt_path=ckpt_path), module

    assert run(tmp_path / "run", 2, "auto")[0].global_step == 2
    assert "Trainer.fit(ckpt_path='auto'): no checkpoint under" in capfd.readouterr().err
    result, resumed = run(tmp_path / "run", 5, "auto")
    assert f"resuming from {tmp_path / 'run' / 'checkpoints' / 'step=00000002'}" in capfd.readouterr().err
    _, uninterrupted = run(tmp_path / "straight", 5, None)
    assert result.global_step == 5
    for name, value in uninterrupted.state_dict().items():
        assert workers.torch.equal(resumed.state_dict()[name], value), name


def test_auto_with_only_corrupt_checkpoints_is_an_error_not_a_fresh_start(tmp_path):
    run = workers.trainer(
        str(tmp_path),
        accelerator="cpu",
        max_steps=2,
        callbacks=[workers.tt.callbacks.ModelCheckpoint(every_n_train_steps=2)],
    )
    run.fit(workers.Net(), workers.loader())
    weights = next((tmp_path / "checkpoints" / "step=00000002").glob("*.safetensors"))
    weights.write_bytes(b"x" * weights.stat().st_size)
    with pytest.raises(Exception, match="ckpt_path='auto': none of the 1 checkpoint"):
        workers.trainer(str(tmp_path), accelerator="cpu", max_steps=4).fit(
            workers.Net(), workers.loader(), ckpt_path="auto"
        )
