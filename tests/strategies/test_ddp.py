"""DDP with two CPU processes (gloo), checked against single-process references.

The two ranks are started once for the whole module (``ranks`` fixture): they run every scenario
of ``_dist_workers.SCENARIOS["ddp"]`` with ``DDP()`` strategy objects and return rank 0's
observations. The tests compare those with what one process computes on the same global data.
DistributedSampler without shuffling gives rank r the samples r, r+2, ...: with 2 samples per
rank and micro-batch, micro-batch j of both ranks together is samples 4j..4j+3, so an optimizer
step accumulating 2 micro-batches covers 8 consecutive samples.
"""

from __future__ import annotations

from typing import Any

import _dist_checks as checks
import _dist_workers as workers
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

import tasktrain as tt
from tasktrain.strategies.launcher import spawn


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> dict[str, Any]:
    """Every DDP scenario, run once in two spawned ranks sharing a temporary directory."""
    root = tmp_path_factory.mktemp("ddp")
    return spawn(workers.run_scenarios, ("ddp", str(root)), nprocs=workers.WORLD_SIZE)


# -- 1. conformance ----------------------------------------------------------------------------------
def test_single_process_tasktrain_matches_the_plain_pytorch_reference(tmp_path):
    """The baseline the distributed runs are held to: tasktrain on one process, batch = 2 ranks' worth."""
    weights, losses = checks.reference()
    torch.manual_seed(0)
    module = workers.ItemNet()
    trainer = tt.Trainer(
        max_epochs=workers.CONFORMANCE_EPOCHS,
        accumulate_grad_batches=workers.ACCUMULATE,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
    )
    loader = DataLoader(workers.item_data(), batch_size=workers.PER_RANK_BATCH * workers.WORLD_SIZE)
    result = trainer.fit(module, loader)
    checks.assert_weights_close(module.state_dict(), weights, atol=1e-6)
    assert result.train_loss == pytest.approx(sum(losses) / len(losses), abs=1e-5)


def test_ddp_matches_single_process_training_with_accumulation_and_count_items(ranks):
    checks.check_conformance(checks.outcome(ranks, "conformance"))


# -- 2. no_sync ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("accumulate", "expected"),
    [
        (1, [True] * 9),
        # 9 micro-batches: groups of 2, 2, 2, 2 and a remainder group of 1 (synchronised: it is last)
        (2, [False, True, False, True, False, True, False, True, True]),
        (3, [False, False, True] * 3),
    ],
)
def test_gradients_are_synchronised_only_on_the_last_micro_batch(ranks, accumulate, expected):
    in_sync = checks.outcome(ranks, "no_sync")[f"accumulate_{accumulate}"]
    assert in_sync == expected


# -- 3. DistributedSampler injection ----------------------------------------------------------------
def test_each_rank_reads_its_own_shard_in_order_without_shuffle(ranks):
    seen = checks.outcome(ranks, "sampler")["ordered"]
    n = len(workers.index_data())
    for rank in range(workers.WORLD_SIZE):
        assert seen[rank] == {0: list(range(rank, n, workers.WORLD_SIZE))}


def test_a_shuffling_loader_is_sharded_and_reshuffled_every_epoch(ranks):
    seen = checks.outcome(ranks, "sampler")["shuffled"]
    data = workers.index_data()
    for epoch in (0, 1):
        shards = [seen[rank][epoch] for rank in range(workers.WORLD_SIZE)]
        assert sorted(shards[0] + shards[1]) == list(range(len(data))), "shards must be disjoint and complete"
        for rank, shard in enumerate(shards):
            sampler = DistributedSampler(
                data, num_replicas=workers.WORLD_SIZE, rank=rank, shuffle=True, seed=0
            )
            sampler.set_epoch(epoch)
            assert shard == list(sampler), f"rank {rank}, epoch {epoch}: not the DistributedSampler order"
    for rank in range(workers.WORLD_SIZE):
        assert seen[rank][0] != seen[rank][1], "set_epoch must reshuffle each epoch"
        assert seen[rank][0] != sorted(seen[rank][0])


def test_a_loader_with_its_own_distributed_sampler_is_left_alone(ranks):
    result = checks.outcome(ranks, "sampler")
    assert result["presharded_left_alone"]
    n = len(workers.index_data())
    # The user's sampler swaps the ranks: rank 0 reads what DistributedSampler gives rank 1.
    assert result["presharded"][0] == {0: list(range(1, n, 2))}
    assert result["presharded"][1] == {0: list(range(0, n, 2))}


def test_the_injected_sampler_keeps_the_loaders_batch_size_drop_last_and_shuffle(ranks):
    injected = checks.outcome(ranks, "sampler")["injected"]
    assert injected == {
        "sampler": "DistributedSampler",
        "num_replicas": 2,
        "rank": 0,
        "shuffle": True,
        "batch_size": 3,
        "drop_last": True,
    }


# -- 4. logging across ranks ---------------------------------------------------------------------------
def _expected_logs() -> dict[str, float]:
    """Global and rank-0 values of what LogNet logs, computed here on the whole data set."""
    _, x, weight, label = workers.log_data().tensors
    value = x.sum(1).double()
    correct = (x[:, :3].argmax(1) == label).double()

    def weighted(select: slice) -> float:
        return float((value[select] * weight[select]).sum() / weight[select].sum())

    rank0 = slice(0, None, workers.WORLD_SIZE)
    expected = {
        "global": weighted(slice(None)),
        "rank0": weighted(rank0),
        "acc_global": float(correct.mean()),
        "acc_rank0": float(correct[rank0].mean()),
    }
    # Precondition: the shards must differ, or a missing reduction would go unnoticed.
    assert abs(expected["global"] - expected["rank0"]) > 1e-2
    assert abs(expected["acc_global"] - expected["acc_rank0"]) > 1e-2
    return expected


def test_sync_dist_epoch_values_are_global_weighted_means(ranks):
    logged = checks.outcome(ranks, "logging")["fit"]
    expected = _expected_logs()
    for stage in ("train", "val"):
        assert logged[f"{stage}/sync"] == pytest.approx(expected["global"], abs=1e-5), stage
        assert logged[f"{stage}/local"] == pytest.approx(expected["rank0"], abs=1e-5), stage


def test_torchmetrics_metrics_logged_in_validation_step_are_global(ranks):
    result = checks.outcome(ranks, "logging")
    expected = _expected_logs()
    assert sorted(result["fit_val_seen"][0] + result["fit_val_seen"][1]) == list(
        range(len(workers.log_data()))
    )
    assert result["fit"]["val/mean_metric"] == pytest.approx(expected["global"], abs=1e-5)
    assert result["fit"]["val/acc"] == pytest.approx(expected["acc_global"], abs=1e-6)


def test_validate_reduces_sync_dist_values_and_metrics_globally(ranks):
    logged = checks.outcome(ranks, "logging")["validate"]
    expected = _expected_logs()
    assert logged["val/sync"] == pytest.approx(expected["global"], abs=1e-5)
    assert logged["val/mean_metric"] == pytest.approx(expected["global"], abs=1e-5)
    assert logged["val/acc"] == pytest.approx(expected["acc_global"], abs=1e-6)


def test_validate_gives_each_rank_a_disjoint_shard(ranks):
    """Trainer.validate shards its dataloader like fit does (DESIGN §3: each data-parallel rank
    reads a disjoint shard; a DistributedSampler is injected when the loader has none)."""
    result = checks.outcome(ranks, "logging")
    seen = result["validate_seen"]
    assert sorted(seen[0] + seen[1]) == list(range(len(workers.log_data()))), (
        f"every rank read the whole validation set: rank 0 {seen[0]}, rank 1 {seen[1]}"
    )
    assert result["validate"]["val/local"] == pytest.approx(_expected_logs()["rank0"], abs=1e-5)


def _expected_training_rows() -> list[tuple[int, dict[str, float]]]:
    """What TrainMetricNet's loggers must receive on rank 0, from torchmetrics run here on all data.

    Step s of an epoch reads samples 4(s-1)..4s-1: rank r the two of them with r's parity.
    """
    from torchmetrics.classification import MulticlassAccuracy

    _, x, weight, label = workers.log_data().tensors
    preds = x[:, :3].argmax(1)
    per_step = workers.PER_RANK_BATCH * workers.WORLD_SIZE
    steps = len(label) // per_step
    every = workers.METRIC_LOG_EVERY

    def accuracy(first: int, last: int) -> float:  # samples [first, last)
        metric = MulticlassAccuracy(num_classes=3, average="micro")
        metric.update(preds[first:last], label[first:last])
        return float(metric.compute())

    def value(step: int, rank: int) -> float:
        index = torch.arange(per_step * (step - 1) + rank, per_step * step, workers.WORLD_SIZE)
        return float(workers.weighted_value(x[index], weight[index]))

    rows = []
    for epoch in range(workers.METRIC_EPOCHS):
        for step in range(every, steps + 1, every):
            synced = sum(value(step, r) for r in range(workers.WORLD_SIZE)) / workers.WORLD_SIZE
            logged = {
                "train/acc": accuracy(0, step * per_step),  # the epoch so far
                "train/interval_acc": accuracy((step - every) * per_step, step * per_step),
                "train/synced": synced,
                "train/synced_twice": 2 * synced,
                "train/local": value(step, 0),
            }
            rows.append((epoch * steps + step, logged))
        rows.append(((epoch + 1) * steps, {"train/acc": accuracy(0, steps * per_step)}))  # the epoch value
    # Preconditions: shards differ, and a metric left unreset at epoch end would give other values.
    assert abs(rows[0][1]["train/synced"] - rows[0][1]["train/local"]) > 1e-2
    assert abs(accuracy(0, per_step * every) - accuracy(0, steps * per_step)) > 1e-2
    return rows


def test_metrics_and_sync_dist_values_logged_in_training_step_are_global_at_every_write(ranks):
    """torchmetrics metrics update every step and are computed over all ranks at each log interval
    (the epoch so far with on_epoch, the interval without), computed and reset at epoch end; sync_dist
    step values are the mean over ranks of each rank's latest value."""
    rows = checks.outcome(ranks, "train_metrics")["rows"]
    expected = _expected_training_rows()
    written = [(step, {k: v for k, v in metrics.items() if k != "train/loss"}) for step, metrics in rows[0]]
    assert [step for step, _ in written] == [step for step, _ in expected]
    for (step, got), (_, want) in zip(written, expected, strict=True):
        assert got == pytest.approx(want, abs=1e-6), f"step {step}"
    # Rank 1's loggers get the same global values; only its unsynced value is its own.
    for (_, on_rank0), (_, on_rank1) in zip(rows[0], rows[1], strict=True):
        assert {k: v for k, v in on_rank1.items() if k != "train/local"} == {
            k: v for k, v in on_rank0.items() if k != "train/local"
        }


def test_sync_dist_reduces_once_per_log_interval_not_every_step(ranks):
    """One collective for all sync_dist step values, plus one for train/loss, on writing steps only."""
    reduces = checks.outcome(ranks, "train_metrics")["reduces_per_step"]
    steps = workers.METRIC_EPOCHS * len(workers.log_data()) // (workers.PER_RANK_BATCH * workers.WORLD_SIZE)
    writing = [step % workers.METRIC_LOG_EVERY == 0 for step in range(1, steps + 1)]
    assert reduces == [2 if write else 0 for write in writing]


# -- 5. exact resume -------------------------------------------------------------------------------
def test_resume_from_last_is_bit_identical_to_the_uninterrupted_run(ranks):
    checks.check_exact_resume(checks.outcome(ranks, "resume"))


# -- 6. saved by two ranks, loaded by one ------------------------------------------------------------
def test_load_from_checkpoint_of_a_ddp_run_gives_the_trained_weights(ranks):
    checks.check_load_from_checkpoint(checks.outcome(ranks, "resume"))


def test_one_process_resumes_a_ddp_checkpoint_with_a_world_size_warning(ranks, tmp_path):
    checks.check_one_process_restores(checks.outcome(ranks, "resume"), tmp_path)


def test_one_process_keeps_training_from_a_ddp_checkpoint(ranks, tmp_path):
    checks.check_one_process_continues(checks.outcome(ranks, "resume"), tmp_path)


# -- 8. a user's strategy ------------------------------------------------------------------------------
def test_a_user_ddp_subclass_is_used_and_trains_like_ddp(ranks):
    counting = checks.outcome(ranks, "counting_strategy")
    plain = checks.outcome(ranks, "conformance")
    micro_batches_per_epoch = len(workers.item_data()) // (workers.PER_RANK_BATCH * workers.WORLD_SIZE)
    assert counting["backward_calls"] == workers.CONFORMANCE_EPOCHS * micro_batches_per_epoch
    assert counting["optimizer_steps"] == counting["global_step"] == plain["global_step"]
    checks.assert_weights_equal(counting["weights"], plain["weights"])
    assert counting["step_losses"] == plain["step_losses"]


def test_predict_returns_every_sample_once_in_dataset_order(ranks):
    checks.check_predictions(checks.outcome(ranks, "predict"))


# -- 9. torch.compile under DDP ------------------------------------------------------------------------
def test_compiled_ddp_runs_compiled_graphs_and_matches_single_process_training(ranks):
    compiled = checks.outcome(ranks, "compiled")
    assert compiled["graphs_captured"] > 0
    assert checks.outcome(ranks, "conformance")["graphs_captured"] == 0
    checks.check_conformance(compiled)
