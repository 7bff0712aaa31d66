"""``async_save``: checkpoints written in the background are the same files as synchronous ones,
resume exactly, are never half-visible, and are complete when ``fit`` (or Preemption) ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import _preflight_workers as workers
import tasktrain as tt
from tasktrain.callbacks import Callback, ModelCheckpoint
from tasktrain.checkpoint import find_last, is_complete, read_state
from tasktrain.checkpoint.background import BackgroundWriter, detached_copy
from tasktrain.checkpoint.storage import verify

SRC = str(Path(__file__).resolve().parents[2] / "src")


class Net(tt.TaskModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1))

    def compute_loss(self, batch):
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(40, 4, generator=g), torch.randn(40, 1, generator=g))
    return DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(1))


def _fit(root: Path, async_save: bool, max_steps: int = 8, ckpt_path: str | None = None, **ckpt) -> Net:
    torch.manual_seed(0)
    module = Net()
    checkpoint = ModelCheckpoint(
        **{"every_n_train_steps": 2, "keep_last": None, **ckpt}, async_save=async_save
    )
    trainer = tt.Trainer(
        max_steps=max_steps,
        callbacks=[checkpoint],
        logger=False,
        enable_progress_bar=False,
        accelerator="cpu",
        default_root_dir=root,
    )
    trainer.fit(module, _loader(), ckpt_path=ckpt_path)
    return module


def _files(checkpoint: Path, root: Path) -> dict[str, bytes]:
    """Every file but the manifest (it records write times), with the run's root path left out
    (ModelCheckpoint's state lists its checkpoints by path)."""
    files = {p.name: p.read_bytes() for p in sorted(checkpoint.iterdir()) if p.name != "manifest.json"}
    return {name: data.replace(str(root).encode(), b"ROOT") for name, data in files.items()}


def test_background_checkpoints_are_the_same_files_as_synchronous_ones(tmp_path):
    _fit(tmp_path / "sync", async_save=False)
    _fit(tmp_path / "async", async_save=True)
    names = sorted(p.name for p in (tmp_path / "sync" / "checkpoints").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "async" / "checkpoints").iterdir())
    assert names == [f"step={s:08d}" for s in (2, 4, 6, 8)]
    for name in names:
        sync, background = (tmp_path / kind / "checkpoints" / name for kind in ("sync", "async"))
        verify(str(background))
        assert _files(background, tmp_path / "async") == _files(sync, tmp_path / "sync"), name


def test_resuming_from_a_background_checkpoint_is_exact(tmp_path):
    straight = _fit(tmp_path / "straight", async_save=False, max_steps=10)
    _fit(tmp_path / "run", async_save=True, max_steps=6)
    resumed = _fit(tmp_path / "run", async_save=True, max_steps=10, ckpt_path="last")
    for name, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name


def test_retention_waits_for_the_save_in_flight(tmp_path, monkeypatch):
    """keep_last=1: while step N is written in the background, step N-2 is still there."""
    import tasktrain.checkpoint.manager as manager

    real, seen = manager.write_checkpoint, {}

    def recording(writer, *args, **kwargs):
        complete = [p.name for p in (tmp_path / "checkpoints").glob("step=*") if ".tmp-" not in p.name]
        seen[Path(writer.path).name] = sorted(complete)
        time.sleep(0.2)  # a slow disk: the loop goes on meanwhile
        real(writer, *args, **kwargs)

    monkeypatch.setattr(manager, "write_checkpoint", recording)
    _fit(tmp_path, async_save=True, keep_last=1)
    assert seen["step=00000004"] == ["step=00000002"]
    assert seen["step=00000008"] == ["step=00000006"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step=00000008"]


def test_the_copy_is_taken_before_the_next_step_changes_the_tensors():
    live = {"w": torch.zeros(3)}
    copied = detached_copy(live)
    live["w"].add_(1)
    assert torch.equal(copied["w"], torch.zeros(3))


def test_a_failed_background_write_is_raised_by_the_next_wait():
    writer = BackgroundWriter()

    def fail() -> None:
        raise OSError("disk full")

    writer.submit("somewhere", fail)
    with pytest.raises(RuntimeError, match="background save of somewhere failed: disk full"):
        writer.wait()
    writer.wait()  # reported once


def test_one_save_in_flight_the_next_waits_for_it():
    writer, order = BackgroundWriter(), []
    writer.submit("a", lambda: (time.sleep(0.5), order.append("a")))
    writer.submit("b", lambda: order.append("b"))
    writer.wait()
    assert order == ["a", "b"]


class SigtermAt(Callback):
    def on_train_step_end(self, trainer, module):
        if trainer.state.global_step == 3:
            os.kill(os.getpid(), signal.SIGTERM)


def test_preemption_waits_for_the_background_save_before_exiting(tmp_path):
    checkpoint = ModelCheckpoint(every_n_train_steps=100, async_save=True)
    trainer = tt.Trainer(
        max_steps=10,
        callbacks=[SigtermAt(), checkpoint],
        logger=False,
        enable_progress_bar=False,
        accelerator="cpu",
        default_root_dir=tmp_path,
    )
    with pytest.raises(SystemExit):
        trainer.fit(Net(), _loader())
    last = find_last(str(tmp_path))
    assert last is not None and is_complete(last) and read_state(last)["global_step"] == 3


SLOW_DISK = """
import sys, time
sys.path[:0] = [{tests!r}, {shared!r}]
import tasktrain.checkpoint.manager as manager
from test_background import _fit
from pathlib import Path

real = manager.write_checkpoint

def slow(writer, weights, *args, **kwargs):  # a slow disk: the step-4 save is still being written
    if "step=00000004" in writer.path:
        Path(sys.argv[2]).write_text("writing")
        time.sleep(600)
    real(writer, weights, *args, **kwargs)

manager.write_checkpoint = slow
_fit(Path(sys.argv[1]), async_save=True, max_steps=4)
"""


def test_kill_9_during_a_background_write_leaves_last_at_the_previous_checkpoint(tmp_path):
    script, marker = tmp_path / "job.py", tmp_path / "marker"
    script.write_text(
        SLOW_DISK.format(tests=str(Path(__file__).parent), shared=str(Path(__file__).parents[1]))
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    job = subprocess.Popen([sys.executable, str(script), str(tmp_path / "run"), str(marker)], env=env)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.1)
        assert marker.exists(), "the background write never started"
    finally:
        job.kill()
        job.wait()
    last = find_last(str(tmp_path / "run"))
    assert last == str(tmp_path / "run" / "checkpoints" / "step=00000002")
    verify(last)
    assert _fit(tmp_path / "run", async_save=True, max_steps=4, ckpt_path="last") is not None


def test_under_ddp_rank_zero_writes_in_the_background_and_the_files_match_a_synchronous_save(tmp_path):
    for kind in ("sync", "async"):
        torch.manual_seed(0)
        trainer = tt.Trainer(
            strategy="ddp",
            devices=2,
            accelerator="cpu",
            max_steps=4,
            seed=0,
            logger=False,
            enable_progress_bar=False,
            default_root_dir=tmp_path / kind,
            callbacks=[ModelCheckpoint(every_n_train_steps=2, keep_last=None, async_save=kind == "async")],
        )
        trainer.fit(workers.Net(), workers.loader())  # importable by the spawned ranks
    for name in ("step=00000002", "step=00000004"):
        sync, background = (tmp_path / kind / "checkpoints" / name for kind in ("sync", "async"))
        verify(str(background))
        assert _files(background, tmp_path / "async") == _files(sync, tmp_path / "sync"), name
