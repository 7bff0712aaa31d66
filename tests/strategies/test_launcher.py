"""The user's path: ``Trainer(strategy="ddp", devices=2).fit`` spawns the ranks and reports back.

Also: what fails before anything is spawned, when nothing is spawned (a launched process), and
user-supplied strategy objects.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import _dist_checks as checks
import _dist_workers as workers
import pytest
import torch
from torch.utils.data import DataLoader

import tasktrain as tt
import tasktrain.trainer as trainer_module
from tasktrain.strategies import DDP
from tasktrain.strategies.launcher import RankFailedError


def _quiet(tmp_path) -> dict:
    return {
        "logger": False,
        "enable_progress_bar": False,
        "enable_checkpointing": False,
        "default_root_dir": tmp_path,
    }


def _loader() -> DataLoader:
    return DataLoader(workers.item_data(), batch_size=workers.PER_RANK_BATCH)


# -- 7. launching ----------------------------------------------------------------------------------
def test_fit_with_two_devices_returns_a_fit_result_and_trains_the_callers_module(tmp_path):
    weights, losses = checks.reference()
    torch.manual_seed(0)
    module = workers.ItemNet()
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = tt.Trainer(
        strategy="ddp",
        devices=2,
        accelerator="cpu",
        max_epochs=workers.CONFORMANCE_EPOCHS,
        accumulate_grad_batches=workers.ACCUMULATE,
        **_quiet(tmp_path),
    )
    result = trainer.fit(module, _loader())

    assert isinstance(result, tt.FitResult)
    assert result.global_step == trainer.state.global_step == len(losses)
    assert result.train_loss == pytest.approx(sum(losses) / len(losses), abs=1e-5)
    assert result.metrics["train_loss"] == result.train_loss
    assert result.metrics["train_runtime"] > 0
    assert result.metrics["train_tokens_per_second"] > 0  # the module counts items
    assert trainer.fit_loop.epoch_progress.total.completed == workers.CONFORMANCE_EPOCHS
    assert "train/loss" in trainer.callback_metrics
    assert not all(torch.equal(module.state_dict()[k], initial[k]) for k in initial)
    checks.assert_weights_close(module.state_dict(), weights, atol=1e-6)


def test_an_exception_in_one_rank_reaches_the_caller_with_that_ranks_traceback(tmp_path):
    """Rank 1 raises in training_step while rank 0 sleeps: the launcher stops rank 0 and reports rank 1."""
    trainer = tt.Trainer(strategy="ddp", devices=2, accelerator="cpu", max_steps=1, **_quiet(tmp_path))
    with pytest.raises(Exception, match="boom on rank 1") as info:
        trainer.fit(workers.RaisingNet(), _loader())
    message = str(info.value)
    assert "Traceback" in message
    assert "training_step" in message and "_dist_workers.py" in message
    assert "ValueError: boom on rank 1" in message


@pytest.fixture
def no_spawn(monkeypatch):
    """Fail the test if anything tries to start processes."""

    def spawn(*args, **kwargs):
        raise AssertionError("processes were spawned")

    monkeypatch.setattr(trainer_module, "spawn", spawn)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"strategy": "single", "devices": 2}, r"devices=2.*strategy='single'"),
        ({"strategy": "ddp", "devices": 3, "accelerator": "cuda"}, r"devices=3.*CUDA"),
        ({"strategy": "auto", "devices": 3, "accelerator": "cuda"}, r"devices=3.*CUDA"),
        ({"strategy": DDP(), "devices": 2}, r"devices=2.*Strategy object"),
        ({"strategy": "ddp", "devices": 0}, r"devices=0.*accepted values"),
    ],
    ids=[
        "single-with-2-devices",
        "ddp-3-cuda",
        "auto-3-cuda",
        "strategy-object-with-devices",
        "zero-devices",
    ],
)
def test_invalid_device_combinations_fail_at_construction_before_spawning(no_spawn, kwargs, match):
    if kwargs.get("accelerator") == "cuda" and torch.cuda.device_count() >= 3:
        pytest.skip("this machine has 3 CUDA devices")
    with pytest.raises(ValueError, match=match):
        tt.Trainer(**kwargs)


def test_a_process_already_launched_by_torchrun_does_not_spawn(monkeypatch):
    assert tt.Trainer(strategy="ddp", devices=2, accelerator="cpu").strategy.processes_to_launch == 2
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    strategy = tt.Trainer(strategy="ddp", devices=2, accelerator="cpu").strategy
    assert not strategy.processes_to_launch
    assert (strategy.world_size, strategy.global_rank) == (2, 0)


def test_one_device_does_not_spawn(no_spawn, tmp_path):
    trainer = tt.Trainer(strategy="ddp", devices=1, accelerator="cpu", max_steps=1, **_quiet(tmp_path))
    assert not trainer.strategy.processes_to_launch


# -- 8. a user's strategy ------------------------------------------------------------------------------
def test_a_user_single_device_subclass_runs_every_backward(tmp_path):
    def fit(strategy):
        torch.manual_seed(0)
        module = workers.ItemNet()
        trainer = tt.Trainer(
            strategy=strategy,
            max_epochs=workers.CONFORMANCE_EPOCHS,
            accumulate_grad_batches=workers.ACCUMULATE,
            **_quiet(tmp_path),
        )
        trainer.fit(module, DataLoader(workers.item_data(), batch_size=4))
        return module, trainer

    counting = workers.CountingSingleDevice("cpu")
    module, trainer = fit(counting)
    assert trainer.strategy is counting
    assert counting.backward_calls == workers.CONFORMANCE_EPOCHS * 9  # 36 samples in micro-batches of 4
    reference, _ = fit("single")
    checks.assert_weights_equal(module.state_dict(), reference.state_dict())


def test_auto_under_torchrun_is_ddp(monkeypatch):
    """torchrun sets RANK/WORLD_SIZE: the environment decides, nothing is spawned."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    strategy = tt.Trainer(logger=False).strategy
    assert isinstance(strategy, DDP) and strategy.launched and not strategy.processes_to_launch


def test_ddp_with_one_device_runs_in_a_group_of_one():
    trainer = tt.Trainer(
        strategy="ddp", max_steps=2, logger=False, enable_progress_bar=False, enable_checkpointing=False
    )
    try:
        result = trainer.fit(workers.ItemNet(), DataLoader(workers.item_data(8), batch_size=2))
    finally:
        trainer.strategy.teardown()
    assert result.global_step == 2


PREEMPTED_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import torch
from torch.utils.data import DataLoader
import tasktrain as tt
from tasktrain.callbacks import Callback
import _dist_workers as workers


class SignalTheLauncher(Callback):
    def on_train_step_end(self, trainer, module):
        if trainer.state.global_step == 2 and trainer.is_global_zero:
            os.kill(os.getppid(), signal.SIGTERM)  # as a scheduler would signal the job's main process


if __name__ == "__main__":
    trainer = tt.Trainer(
        strategy="ddp", devices=2, max_steps=10**6, default_root_dir=sys.argv[1], logger=False,
        enable_progress_bar=False, callbacks=[SignalTheLauncher()],
    )
    trainer.fit(workers.ItemNet(), DataLoader(workers.item_data(), batch_size=2))
"""


def test_sigterm_to_the_launching_process_checkpoints_every_rank_and_exits_99(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from tasktrain.callbacks import EXIT_PREEMPTED
    from tasktrain.checkpoint import find_last, read_state

    script = tmp_path / "job.py"
    script.write_text(PREEMPTED_SCRIPT.format(tests=str(Path(__file__).parent)))
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "run")], capture_output=True, timeout=300
    )
    assert done.returncode == EXIT_PREEMPTED, done.stderr.decode()[-3000:]
    last = find_last(str(tmp_path / "run"))
    assert last is not None and read_state(last)["global_step"] >= 2  # the step that sent it, or the next


class _Scheduled(workers.ItemNet):
    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=1e-2)
        return opt, {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 2, 0.5), "interval": "step"}


def _observable(trainer: tt.Trainer, root) -> dict:
    """What a user reads off the Trainer after fit, with checkpoint paths relative to the run's root."""
    (ckpt,) = [cb for cb in trainer.callbacks if isinstance(cb, tt.callbacks.ModelCheckpoint)]
    return {
        "state": trainer.state.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.lr_scheduler_configs[0].scheduler.state_dict(),
        "best": str(Path(ckpt.best_model_path).relative_to(root)),
        "last": str(Path(ckpt.last_model_path).relative_to(root)),
        "saved": [{**e, "path": str(Path(e["path"]).relative_to(root))} for e in ckpt.saved],
        "callback_metrics": dict(trainer.callback_metrics),
        "fit_loop": trainer.fit_loop.state_dict(),
    }


def test_after_fit_with_two_devices_the_trainer_holds_what_one_device_leaves(tmp_path):
    """devices=2 (DDP, half of every batch per rank) and devices=1 (whole batches) train alike, and
    the launching process then holds the same state: optimizer, scheduler, callbacks, metrics."""
    observed = {}
    for devices in (1, 2):
        torch.manual_seed(0)
        root = tmp_path / f"devices{devices}"
        trainer = tt.Trainer(
            strategy="ddp" if devices > 1 else "auto",
            devices=devices,
            accelerator="cpu",
            max_steps=6,
            accumulate_grad_batches=workers.ACCUMULATE,
            log_every_n_steps=1,
            callbacks=[
                tt.callbacks.ModelCheckpoint(monitor="train/loss", every_n_train_steps=2, keep_last=2)
            ],
            logger=False,
            enable_progress_bar=False,
            default_root_dir=root,
        )
        loader = DataLoader(workers.item_data(), batch_size=workers.PER_RANK_BATCH * (3 - devices))
        trainer.fit(_Scheduled(optimizer="adamw"), loader)
        observed[devices] = _observable(trainer, root)

    one, two = observed[1], observed[2]
    assert two["state"] == one["state"] == {"global_step": 6, "epoch": 1}
    assert two["best"] == one["best"] and two["last"] == one["last"] == "checkpoints/step=00000006"
    assert [e["path"] for e in two["saved"]] == [e["path"] for e in one["saved"]]
    assert [e["score"] for e in two["saved"]] == pytest.approx([e["score"] for e in one["saved"]], abs=1e-6)
    assert two["scheduler"] == one["scheduler"]
    assert two["optimizer"]["param_groups"] == one["optimizer"]["param_groups"]
    for index, state in one["optimizer"]["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(two["optimizer"]["state"][index][key], value, atol=1e-6, rtol=0)
    assert two["callback_metrics"].keys() == one["callback_metrics"].keys()
    assert two["callback_metrics"] == pytest.approx(one["callback_metrics"], abs=1e-6)
    # Loaded loop progress forgets work that began but did not complete (as on any resume): compare what completed.
    done = {
        k: v["total"]["completed"] for k, v in one["fit_loop"].items() if isinstance(v, dict) and "total" in v
    }
    assert done == {
        k: v["total"]["completed"] for k, v in two["fit_loop"].items() if isinstance(v, dict) and "total" in v
    }


# -- 9. hung and dead ranks ------------------------------------------------------------------------------
def _spawned_ranks() -> list[int]:
    """Processes started by this one's launcher (``multiprocessing`` spawn children), from /proc."""
    me, found = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == me and b"spawn_main" in command:
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize(
    ("net", "match"),
    [
        (workers.HangingNet, r"rank 1 stopped responding"),
        (workers.DyingNet, r"rank 1 died \(killed by signal SIGKILL\)"),
    ],
    ids=["hung", "dead"],
)
def test_a_hung_or_dead_rank_is_named_within_the_timeout_and_no_rank_is_left(tmp_path, net, match):
    trainer = tt.Trainer(strategy=DDP(2, accelerator="cpu", timeout=10), max_steps=4, **_quiet(tmp_path))
    start = time.monotonic()
    with pytest.raises(RankFailedError, match=match) as info:
        trainer.fit(net(), _loader())
    elapsed = time.monotonic() - start
    assert info.value.rank == 1
    assert elapsed < 40, f"reported after {elapsed:.0f} s"
    assert "rank 0" in str(info.value)  # the healthy rank's collective error comes along, as a consequence
    assert _spawned_ranks() == []


STARTUP_SCRIPT = """
import os, signal, sys, time
sys.path.insert(0, {tests!r})
from torch.utils.data import DataLoader
import tasktrain as tt
import _dist_workers as workers


class SignalsWhileBuilding(workers.ItemNet):
    def configure_model(self):
        if self.trainer.strategy.global_rank == 0:
            os.kill(os.getppid(), signal.SIGTERM)  # the scheduler signals the job while it starts
            time.sleep(2)  # the launcher forwards it to both ranks, still setting up


if __name__ == "__main__":
    trainer = tt.Trainer(
        strategy="ddp", devices=2, accelerator="cpu", max_steps=10**6, default_root_dir=sys.argv[1],
        logger=False, enable_progress_bar=False,
    )
    trainer.fit(SignalsWhileBuilding(), DataLoader(workers.item_data(), batch_size=2), ckpt_path="auto")
"""


def test_sigterm_while_the_ranks_set_up_exits_99_with_nothing_to_save(tmp_path):
    import subprocess
    import sys

    from tasktrain.callbacks import EXIT_PREEMPTED
    from tasktrain.checkpoint import find_last

    script = tmp_path / "job.py"
    script.write_text(STARTUP_SCRIPT.format(tests=str(Path(__file__).parent)))
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "run")], capture_output=True, timeout=300
    )
    assert done.returncode == EXIT_PREEMPTED, done.stderr.decode()[-3000:]
    assert (
        find_last(str(tmp_path / "run")) is None
    )  # a fresh run stopped before its first step: nothing to save
