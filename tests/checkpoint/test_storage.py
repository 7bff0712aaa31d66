"""Checkpoint storage: atomic commits and replacements, completeness, ``find_last``, leftovers,
fsspec URLs, and kill -9 mid-save."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import xxhash
from fsspec.core import url_to_fs
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
from tasktrain.checkpoint import CheckpointError, find_last, is_complete, read_state
from tasktrain.checkpoint.storage import (
    CheckpointWriter,
    checkpoints,
    remove,
    remove_leftovers,
    resolve,
    verify,
)


def _commit(path: str | Path, files: dict[str, bytes] | None = None) -> str:
    with CheckpointWriter(str(path)) as writer:
        for name, data in (files or {"a.bin": b"123", "b.json": b"{}"}).items():
            writer.write_bytes(name, data)
    return str(path)


def _step(path: str | Path) -> int:
    match = re.search(r"step=(\d+)", Path(str(path)).name)
    assert match is not None, path
    return int(match.group(1))


# -- the writer ------------------------------------------------------------------------------------
def test_local_writes_go_to_a_temporary_sibling_and_appear_whole(tmp_path):
    final = tmp_path / "step=00000001"
    with CheckpointWriter(str(final)) as writer:
        writer.write_bytes("a.bin", b"abc")
        assert not final.exists()
        (partial,) = tmp_path.iterdir()
        assert partial.name.startswith("step=00000001.tmp-")
        assert not is_complete(str(partial))
        assert find_last(str(tmp_path)) is None
    assert [p.name for p in tmp_path.iterdir()] == ["step=00000001"]
    assert is_complete(str(final))
    assert json.loads((final / "manifest.json").read_text()) == {
        "files": {"a.bin": 3},
        "checksums": {"a.bin": f"xxh3_64:{xxhash.xxh3_64_hexdigest(b'abc')}"},
        "step": None,
    }


def test_a_failed_local_save_leaves_nothing_and_keeps_the_old_checkpoint(tmp_path):
    final = _commit(tmp_path / "step=00000001", {"a.bin": b"old"})
    with pytest.raises(RuntimeError, match="boom"), CheckpointWriter(final) as writer:
        writer.write_bytes("a.bin", b"new!")
        raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["step=00000001"]
    assert is_complete(final)
    assert (Path(final) / "a.bin").read_bytes() == b"old"


def test_a_local_save_over_an_existing_checkpoint_replaces_it(tmp_path):
    final = _commit(tmp_path / "step=00000001", {"a.bin": b"old", "gone.bin": b"x"})
    _commit(final, {"a.bin": b"newer"})
    assert sorted(p.name for p in Path(final).iterdir()) == ["a.bin", "manifest.json"]
    assert is_complete(final)


def test_replacing_a_checkpoint_keeps_the_old_one_aside_until_the_new_one_is_in(tmp_path, monkeypatch):
    final = _commit(tmp_path / "step=00000001", {"a.bin": b"old"})
    renames: list[tuple[str, str]] = []
    real_rename = os.rename

    def killed_after_the_first_rename(src, dst):
        if renames:
            raise KeyboardInterrupt("killed between the two renames")
        renames.append((src, dst))
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", killed_after_the_first_rename)
    with pytest.raises(KeyboardInterrupt):
        _commit(final, {"a.bin": b"new!"})
    monkeypatch.setattr(os, "rename", real_rename)
    ((moved, aside),) = renames
    assert moved == final and re.fullmatch(rf"{re.escape(final)}\.old-[0-9a-f]{{8}}", aside)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2 and names[0].startswith("step=00000001.old-") and ".tmp-" in names[1]

    # Lookups find the old checkpoint beside its path, once.
    assert checkpoints(str(tmp_path)) == [aside] and find_last(str(tmp_path)) == aside
    with pytest.warns(UserWarning, match=r"interrupted.*\.old-"):
        assert resolve(final) == aside
    verify(aside)
    # Fit-start cleanup drops the temporary directory but keeps the only copy.
    (partial,) = tmp_path.glob("*.tmp-*")
    assert remove_leftovers(str(tmp_path)) == [str(partial)]
    assert [p.name for p in tmp_path.iterdir()] == [Path(aside).name]

    # The next save to the path puts a checkpoint there; the old copy then stops counting.
    _commit(final, {"a.bin": b"newer"})
    assert checkpoints(str(tmp_path)) == [final]
    assert resolve(final) == final
    assert remove_leftovers(str(tmp_path)) == [aside]
    assert [p.name for p in tmp_path.iterdir()] == ["step=00000001"]


def test_an_old_copy_whose_path_is_complete_again_is_not_counted_twice(tmp_path):
    final = Path(_commit(tmp_path / "step=00000001", {"a.bin": b"new"}))
    half_deleted = tmp_path / "step=00000001.old-0a1b2c3d"  # killed while deleting it
    shutil.copytree(final, half_deleted)
    assert checkpoints(str(tmp_path)) == [str(final)]
    (half_deleted / "manifest.json").unlink()
    assert checkpoints(str(tmp_path)) == [str(final)]


def test_remove_leftovers_touches_only_our_names(tmp_path):
    complete = _commit(tmp_path / "step=00000002")
    ours = ["step=00000003.tmp-0123abcd", "step=00000002.old-89abcdef"]
    theirs = ["data.tmp-0123abc", "data.tmp-0123ABCD", "data.tmp-0123abcd.x", "y.old-12345678", "keep"]
    for name in ours + theirs:
        (tmp_path / name).mkdir()
    (tmp_path / "notes.tmp-0123abcd").write_text("a file")  # only directories are saves
    removed = remove_leftovers(str(tmp_path))
    assert sorted(Path(p).name for p in removed) == sorted(ours)
    assert {p.name for p in tmp_path.iterdir()} == {Path(complete).name, *theirs, "notes.tmp-0123abcd"}
    assert remove_leftovers(str(tmp_path / "missing")) == []


def test_a_missing_path_does_not_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist"):
        resolve(str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match=r"does not exist"):
        verify(str(tmp_path / "nothing"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(CheckpointError, match=r"not a complete checkpoint: manifest\.json is missing"):
        resolve(str(tmp_path / "plain"))


@pytest.fixture
def memory_root():
    root = f"memory://tasktrain-tests/{uuid.uuid4().hex}"
    yield root
    fs, path = url_to_fs(root)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def test_a_failed_save_on_a_remote_filesystem_is_never_complete(memory_root):
    path = f"{memory_root}/step=00000002"
    with pytest.raises(RuntimeError), CheckpointWriter(path) as writer:
        writer.write_bytes("a.bin", b"abc")
        raise RuntimeError("interrupted")
    fs, root = url_to_fs(path)
    assert fs.exists(f"{root}/a.bin")  # written in place: no rename on object stores
    assert not is_complete(path)
    assert find_last(memory_root) is None


def test_overwriting_on_a_remote_filesystem_invalidates_the_old_checkpoint_first(memory_root):
    older = _commit(f"{memory_root}/step=00000001")
    path = _commit(f"{memory_root}/step=00000002", {"a.bin": b"old"})
    with pytest.raises(RuntimeError), CheckpointWriter(path) as writer:
        writer.write_bytes("a.bin", b"half-new")
        raise RuntimeError("interrupted")
    assert not is_complete(path)  # a mix of old and new files never counts
    found = find_last(memory_root)
    assert found is not None and url_to_fs(found)[1] == url_to_fs(older)[1]


# -- completeness ----------------------------------------------------------------------------------
@pytest.fixture
def complete(tmp_path) -> Path:
    return Path(
        _commit(tmp_path / "step=00000003", {"model.safetensors": b"0123456789", "state.json": b"{}"})
    )


def test_a_committed_checkpoint_is_complete(complete):
    assert is_complete(str(complete))
    (complete / "unlisted.txt").write_text("extra files do not matter")
    assert is_complete(str(complete))


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: (p / "model.safetensors").unlink(),
        lambda p: (p / "model.safetensors").write_bytes(b"01234"),
        lambda p: (p / "model.safetensors").write_bytes(b"0123456789-longer"),
        lambda p: (p / "manifest.json").unlink(),
        lambda p: (p / "manifest.json").write_text('{"files": {"model.safetensors": 1'),
        lambda p: (p / "manifest.json").write_text('{"names": []}'),
    ],
    ids=[
        "missing-file",
        "truncated-file",
        "grown-file",
        "no-manifest",
        "truncated-manifest",
        "wrong-manifest",
    ],
)
def test_a_damaged_checkpoint_is_not_complete_and_not_picked(complete, damage):
    older = _commit(complete.parent / "step=00000002")
    damage(complete)
    assert not is_complete(str(complete))
    assert find_last(str(complete.parent)) == older


def test_a_missing_directory_is_not_complete(tmp_path):
    assert not is_complete(str(tmp_path / "nothing"))
    assert not is_complete(str(tmp_path))


def test_remove_deletes_the_whole_checkpoint(complete):
    remove(str(complete))
    assert not complete.exists()
    remove(str(complete))  # already gone: no error


# -- find_last -------------------------------------------------------------------------------------
def test_find_last_picks_the_highest_step_numerically_anywhere_below(tmp_path):
    _commit(tmp_path / "a" / "step=9")
    _commit(tmp_path / "a" / "step=10")
    assert find_last(str(tmp_path)) == str(tmp_path / "a" / "step=10")
    _commit(tmp_path / "b" / "c" / "epoch=3-step=00000011-loss=0.25")
    assert find_last(str(tmp_path)) == str(tmp_path / "b" / "c" / "epoch=3-step=00000011-loss=0.25")


def test_find_last_ignores_temporary_incomplete_and_unnamed_directories(tmp_path):
    best = _commit(tmp_path / "step=00000005")
    # A temporary directory whose manifest is written but which was not renamed yet (killed between the two).
    Path(_commit(tmp_path / "scratch" / "step=00000009")).rename(tmp_path / "step=00000009.tmp-1a2b3c4d")
    (tmp_path / "step=00000010.tmp-5e6f7a8b").mkdir()
    (tmp_path / "step=00000011").mkdir()
    _commit(tmp_path / "final")
    assert find_last(str(tmp_path)) == best


def test_find_last_of_nothing_is_none(tmp_path):
    assert find_last(str(tmp_path)) is None
    assert find_last(str(tmp_path / "does-not-exist")) is None


def test_find_last_keeps_the_url_scheme(tmp_path, memory_root):
    _commit(f"{memory_root}/run/step=00000001")
    found = find_last(memory_root)
    assert found is not None and found.startswith("memory://") and found.endswith("/run/step=00000001")
    assert is_complete(found)

    local = f"file://{tmp_path}"
    _commit(f"{local}/step=00000004")
    assert (tmp_path / "step=00000004" / "manifest.json").exists()
    found = find_last(local)
    assert found is not None and found.startswith("file://") and is_complete(found)
    assert _step(found) == 4


# -- fsspec round trip through the trainer ---------------------------------------------------------
class Net(tt.TaskModule):
    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, hidden), torch.nn.Dropout(0.3), torch.nn.ReLU(), torch.nn.Linear(hidden, 1)
        )

    def compute_loss(self, batch):
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def _fit(root: str, max_steps: int, ckpt_path: str | None = None, seed: int = 0) -> tuple[Net, tt.Trainer]:
    torch.manual_seed(seed)
    module = Net()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 4, generator=g)
    loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4, shuffle=True)
    trainer = tt.Trainer(
        max_steps=max_steps,
        accumulate_grad_batches=2,
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        accelerator="cpu",
    )
    trainer.fit(module, loader, ckpt_path=ckpt_path)
    return module, trainer


def _assert_equal_params(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa), "parameters differ"


def test_memory_url_round_trip(tmp_path, memory_root):
    first, _ = _fit(memory_root, 5)  # stops mid-epoch (4 steps per epoch)
    path = find_last(memory_root)
    assert path is not None and path.startswith("memory://")
    assert path.endswith(memory_root.split("://", 1)[1] + "/checkpoints/step=00000005")
    assert read_state(path)["global_step"] == 5
    assert not list(tmp_path.iterdir())  # nothing on the local disk

    loaded = Net.load_from_checkpoint(path)
    _assert_equal_params(first, loaded)

    reference, _ = _fit(str(tmp_path / "reference"), 11)
    from_url, _ = _fit(str(tmp_path / "other"), 11, ckpt_path=path, seed=8)
    _assert_equal_params(reference, from_url)
    # Resuming in place lets retention (keep_last=1) delete step 5 once step 11 is saved.
    from_last, trainer = _fit(memory_root, 11, ckpt_path="last", seed=7)
    assert trainer.state.global_step == 11
    _assert_equal_params(reference, from_last)


# -- kill -9 in the middle of a save ---------------------------------------------------------------
CHILD = textwrap.dedent(
    """
    import sys

    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    import tasktrain as tt
    from tasktrain.callbacks import ModelCheckpoint


    class Wide(tt.TaskModule):
        # ~60k parameters: with its AdamW state each save writes ~1 MB, so saves are a good part of a step.
        def __init__(self, hidden=10_000):
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(4, hidden), torch.nn.Dropout(0.2), torch.nn.ReLU(), torch.nn.Linear(hidden, 1)
            )

        def compute_loss(self, batch):
            x, y = batch
            return F.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)


    def fit(root, max_steps, ckpt_path=None, seed=0):
        torch.manual_seed(seed)
        module = Wide()
        g = torch.Generator().manual_seed(1)
        x = torch.randn(20, 4, generator=g)
        loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4, shuffle=True)
        trainer = tt.Trainer(
            max_steps=max_steps, accumulate_grad_batches=2, default_root_dir=root, logger=False,
            enable_progress_bar=False, accelerator="cpu",
            callbacks=[ModelCheckpoint(every_n_train_steps=1, keep_last=2)],
        )
        trainer.fit(module, loader, ckpt_path=ckpt_path)
        return module


    if __name__ == "__main__":
        fit(sys.argv[1], 10**6)
    """
)


def _freeze_inside_a_save(proc: subprocess.Popen, ckpts: Path) -> Path | None:
    """If the child is writing a checkpoint, stop it there and return the partial directory."""
    try:
        names = os.listdir(ckpts)
    except FileNotFoundError:
        return None
    if not any(".tmp-" in name for name in names) or find_last(str(ckpts)) is None:
        return None
    os.kill(proc.pid, signal.SIGSTOP)
    os.waitpid(proc.pid, os.WUNTRACED)  # returns once the child is really stopped
    partial = [p for p in ckpts.glob("*.tmp-*") if not (p / "manifest.json").exists()]
    if partial:
        return partial[0]
    os.kill(proc.pid, signal.SIGCONT)  # it had just finished that save: try the next one
    return None


def test_kill_9_during_a_save_never_leaves_a_checkpoint_that_resume_picks(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    root = tmp_path / "run"
    ckpts = root / "checkpoints"
    with open(tmp_path / "child.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(root)], stdout=log, stderr=subprocess.STDOUT
        )
    partial = None
    try:
        deadline = time.monotonic() + 120
        while partial is None:
            assert proc.poll() is None, (tmp_path / "child.log").read_text()
            assert time.monotonic() < deadline, "never caught the child inside a save"
            partial = _freeze_inside_a_save(proc, ckpts)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    assert partial.exists() and not is_complete(str(partial))
    last = find_last(str(root))
    assert last is not None and ".tmp-" not in last and is_complete(last)
    assert _step(last) == _step(partial) - 1  # the previous save, not the interrupted one

    spec = importlib.util.spec_from_file_location("tasktrain_kill9_child", script)
    child = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(child)
    end = _step(partial) + 2
    resumed = child.fit(str(root), end, ckpt_path="last", seed=1)
    reference = child.fit(str(tmp_path / "reference"), end)
    _assert_equal_params(reference, resumed)
