"""Verified checkpoints: a checksum per file, checked before anything loads; ``"last"`` skips a
corrupt newest checkpoint; a SIGKILL storm on one path always leaves a verified checkpoint;
fit start cleans up after interrupted saves and refuses an unwritable checkpoint directory."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
import zlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import xxhash
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
from tasktrain.callbacks import Callback, ModelCheckpoint
from tasktrain.checkpoint import CheckpointError, find_last, is_complete
from tasktrain.checkpoint.format import write_checkpoint
from tasktrain.checkpoint.sharded import save_sharded
from tasktrain.checkpoint.storage import CheckpointWriter, checkpoints, describe, resolve, verify


class Net(tt.TaskModule):
    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1)
        )
        self.training_steps = 0

    def training_step(self, batch, batch_idx):
        self.training_steps += 1
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def _loader() -> DataLoader:
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)


def _trainer(
    root: Path | str, max_steps: int, callbacks: list[Callback] | None = None, **kwargs
) -> tt.Trainer:
    return tt.Trainer(
        max_steps=max_steps,
        default_root_dir=str(root),
        logger=False,
        enable_progress_bar=False,
        accelerator="cpu",
        callbacks=callbacks,
        **kwargs,
    )


def _fit(root: Path, max_steps: int, ckpt_path: str | None = None, **ckpt) -> tuple[Net, tt.Trainer]:
    torch.manual_seed(0)
    module = Net()
    callbacks = [ModelCheckpoint(**ckpt)] if ckpt else None
    trainer = _trainer(root, max_steps, callbacks)
    trainer.fit(module, _loader(), ckpt_path=ckpt_path)
    return module, trainer


def _flip(file: Path, start: int | None = None, count: int = 16) -> None:
    """Invert ``count`` bytes from ``start`` (default: the middle); the size stays the same."""
    data = bytearray(file.read_bytes())
    start = len(data) // 2 - count // 2 if start is None else start
    assert start >= 0 and start + count <= len(data), (file, len(data))
    for i in range(start, start + count):
        data[i] ^= 0xFF
    file.write_bytes(bytes(data))


def _tensor_data_middle(file: Path) -> int:
    """An offset in the middle of a safetensors file's tensor data (past its header)."""
    data = file.read_bytes()
    begin = 8 + int.from_bytes(data[:8], "little")
    return (begin + len(data)) // 2 - 8


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A verified checkpoint of ``Net`` at step 4 (model, optimizer, states, trainer state)."""
    root = tmp_path_factory.mktemp("saved")
    _fit(root, 4)
    path = find_last(str(root))
    assert path is not None
    return Path(path)


@pytest.fixture
def ckpt(saved, tmp_path) -> Path:
    copy = tmp_path / "run" / "checkpoints" / saved.name
    shutil.copytree(saved, copy)
    return copy


# -- checksums ---------------------------------------------------------------------------------------
def test_every_file_has_a_checksum_that_verifies(saved):
    manifest = json.loads((saved / "manifest.json").read_text())
    assert (
        set(manifest["checksums"])
        == set(manifest["files"])
        == {
            "model.safetensors",
            "optimizer.pt",
            "states.safetensors",
            "trainer_state.json",
        }
    )
    assert all(value.startswith("xxh3_64:") and len(value) == 24 for value in manifest["checksums"].values())
    verify(str(saved))

    for name, value in manifest["checksums"].items():
        assert value == f"xxh3_64:{xxhash.xxh3_64_hexdigest((saved / name).read_bytes())}", name


def test_a_crc32_manifest_of_an_earlier_release_still_verifies_and_catches_flips(ckpt):
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["checksums"] = {
        name: f"crc32:{zlib.crc32((ckpt / name).read_bytes()):08x}" for name in manifest["files"]
    }
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    verify(str(ckpt))
    _flip(ckpt / "model.safetensors", _tensor_data_middle(ckpt / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model.safetensors is corrupt: its crc32 is"):
        verify(str(ckpt))


def test_an_unknown_checksum_algorithm_is_refused_naming_it(ckpt):
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["checksums"]["optimizer.pt"] = "blake3:00"
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"optimizer.pt: manifest.json records a 'blake3' checksum"):
        verify(str(ckpt))


FLIPS = {
    "model.safetensors": _tensor_data_middle,
    "optimizer.pt": None,
    "states.safetensors": _tensor_data_middle,
    "trainer_state.json": None,
}


@pytest.mark.parametrize("name", list(FLIPS))
def test_flipped_bytes_in_any_file_are_named_before_training(ckpt, name):
    where = FLIPS[name]
    _flip(ckpt / name, where(ckpt / name) if where else None)
    assert is_complete(str(ckpt))  # sizes alone cannot tell
    torch.manual_seed(3)
    module = Net()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = _trainer(ckpt.parent, 8, enable_checkpointing=False)
    with pytest.raises(CheckpointError, match=rf"{name} is corrupt") as err:
        trainer.fit(module, _loader(), ckpt_path=str(ckpt))
    assert str(ckpt / name) in str(err.value)
    assert module.training_steps == 0
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items()), "weights were loaded"
    with pytest.raises(CheckpointError, match=rf"{name} is corrupt"):
        Net.load_from_checkpoint(str(ckpt))
    with pytest.raises(CheckpointError, match=rf"{name} is corrupt"):
        _trainer(ckpt.parent, 1).validate(module, _loader(), ckpt_path=str(ckpt))


def test_a_same_size_edit_that_still_parses_is_caught(ckpt):
    state = ckpt / "trainer_state.json"
    text = state.read_text()
    assert '"global_step": 4' in text
    state.write_text(text.replace('"global_step": 4', '"global_step": 5', 1))
    with pytest.raises(CheckpointError, match=r"trainer_state\.json is corrupt"):
        verify(str(ckpt))


def test_a_manifest_without_checksums_is_checked_by_size_only(ckpt):
    manifest = json.loads((ckpt / "manifest.json").read_text())
    del manifest["checksums"]
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    verify(str(ckpt))
    assert Net.load_from_checkpoint(str(ckpt)) is not None
    (ckpt / "optimizer.pt").write_bytes(b"short")
    with pytest.raises(CheckpointError, match=r"optimizer\.pt has 5 bytes"):
        verify(str(ckpt))


def test_a_checkpoint_that_verified_is_checked_again_once_a_file_changes(ckpt):
    verify(str(ckpt))
    verify(str(ckpt))  # unchanged: not read again
    _flip(ckpt / "model.safetensors", _tensor_data_middle(ckpt / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors is corrupt"):
        verify(str(ckpt))


def test_verification_on_a_remote_filesystem(ckpt):
    url = f"memory://integrity/{ckpt.parent.parent.name}/{ckpt.name}"
    from fsspec.core import url_to_fs

    fs, root = url_to_fs(url)
    fs.put(str(ckpt), root, recursive=True)
    try:
        verify(url)
        data = bytearray(fs.cat(f"{root}/optimizer.pt"))
        data[len(data) // 2] ^= 0xFF
        fs.pipe(f"{root}/optimizer.pt", bytes(data))
        with pytest.raises(CheckpointError, match=r"optimizer\.pt is corrupt"):
            verify(url)
    finally:
        fs.rm(root, recursive=True)


def _sharded_checkpoint(path: Path, module: Net) -> None:
    """A checkpoint whose weights are DCP shards, written in one process as rank 0 of FSDP writes it."""
    with CheckpointWriter(str(path), step=2) as writer:
        save_sharded(f"{writer.directory}/sharded", {"model": module.state_dict()})
        writer.record("sharded")
        write_checkpoint(writer, None, [], {"global_step": 2, "hparams": {"hidden": 8}, "states": {}}, {}, {})


def test_recorded_shards_take_the_checksums_their_writer_described(tmp_path):
    """Rank 0 records what each rank described (no re-read); a file described with another size, or
    not at all, is hashed on the spot."""
    with CheckpointWriter(str(tmp_path / "step=00000001"), step=1) as writer:
        folder = Path(writer.directory) / "shards"
        folder.mkdir(parents=True)
        for name, data in {
            "__0_0.distcp": b"rank zero",
            "__1_0.distcp": b"rank one",
            ".metadata": b"m",
        }.items():
            (folder / name).write_bytes(data)
        described = describe(str(folder), ["__0_0.distcp", "__1_0.distcp"])
        assert described["__0_0.distcp"] == (9, f"xxh3_64:{xxhash.xxh3_64_hexdigest(b'rank zero')}")
        described["__0_0.distcp"] = (9, "xxh3_64:trusted")  # as sent by the rank that wrote it
        described["__1_0.distcp"] = (1, "xxh3_64:stale")  # its size changed since: hashed again
        writer.record("shards", described)
    checksums = json.loads((tmp_path / "step=00000001" / "manifest.json").read_text())["checksums"]
    assert checksums == {
        "shards/__0_0.distcp": "xxh3_64:trusted",
        "shards/__1_0.distcp": f"xxh3_64:{xxhash.xxh3_64_hexdigest(b'rank one')}",
        "shards/.metadata": f"xxh3_64:{xxhash.xxh3_64_hexdigest(b'm')}",
    }


@pytest.mark.parametrize("shard", ["__0_0.distcp", ".metadata"])
def test_flipped_bytes_in_a_dcp_shard_are_named_before_loading(tmp_path, shard):
    torch.manual_seed(0)
    source = Net()
    path = tmp_path / "step=00000002"
    _sharded_checkpoint(path, source)
    manifest = json.loads((path / "manifest.json").read_text())
    assert {"sharded/.metadata", "sharded/__0_0.distcp"} <= set(manifest["checksums"])
    loaded = Net.load_from_checkpoint(str(path))
    assert all(torch.equal(a, b) for a, b in zip(source.parameters(), loaded.parameters(), strict=True))

    file = path / "sharded" / shard
    _flip(file, len(file.read_bytes()) - 24 if shard != ".metadata" else None)
    with pytest.raises(CheckpointError, match=rf"sharded/{shard} is corrupt"):
        verify(str(path))
    with pytest.raises(CheckpointError, match=rf"sharded/{shard} is corrupt"):
        Net.load_from_checkpoint(str(path))
    torch.manual_seed(3)
    module = Net()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(CheckpointError, match=rf"sharded/{shard} is corrupt"):
        _trainer(tmp_path, 1).validate(module, _loader(), ckpt_path=str(path))
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


# -- "last" falls back ---------------------------------------------------------------------------------
class _StartStep(Callback):
    def on_fit_start(self, trainer, module):
        self.step = trainer.state.global_step


def _two_checkpoints(tmp_path: Path) -> tuple[Path, Path]:
    _fit(tmp_path, 8, every_n_train_steps=4, every_n_epochs=None, keep_last=2)
    older, newer = (Path(p) for p in sorted(checkpoints(str(tmp_path))))
    assert (older.name, newer.name) == ("step=00000004", "step=00000008")
    return older, newer


@pytest.mark.parametrize("damage", ["flipped-weights", "bad-json-no-checksums", "bad-safetensors-header"])
def test_last_skips_a_newest_checkpoint_that_does_not_verify_with_a_warning(tmp_path, damage):
    older, newer = _two_checkpoints(tmp_path)
    if damage == "flipped-weights":
        _flip(newer / "model.safetensors", _tensor_data_middle(newer / "model.safetensors"))
    else:  # a checkpoint from before checksums: only parsing can tell
        manifest = json.loads((newer / "manifest.json").read_text())
        del manifest["checksums"]
        (newer / "manifest.json").write_text(json.dumps(manifest))
        if damage == "bad-json-no-checksums":
            _flip(newer / "trainer_state.json")
        else:
            header = newer / "model.safetensors"
            header.write_bytes((2**40).to_bytes(8, "little") + header.read_bytes()[8:])
    start = _StartStep()
    torch.manual_seed(0)
    module = Net()
    trainer = _trainer(tmp_path, 10, [start], enable_checkpointing=False)
    with pytest.warns(UserWarning, match=r"ckpt_path='last': skipping .*step=00000008") as record:
        trainer.fit(module, _loader(), ckpt_path="last")
    (message,) = [str(w.message) for w in record if "skipping" in str(w.message)]
    assert str(newer) in message and str(older) in message
    assert start.step == 4 and trainer.state.global_step == 10


def test_last_when_no_checkpoint_verifies_names_each(tmp_path):
    older, newer = _two_checkpoints(tmp_path)
    for path in (older, newer):
        _flip(path / "optimizer.pt")
    with pytest.raises(CheckpointError, match=r"none of the 2 checkpoint\(s\).*verifies") as err:
        _fit(tmp_path, 10, ckpt_path="last")
    assert str(older / "optimizer.pt") in str(err.value) and str(newer / "optimizer.pt") in str(err.value)


def test_an_explicit_corrupt_path_is_not_replaced_by_another(tmp_path):
    _, newer = _two_checkpoints(tmp_path)
    _flip(newer / "optimizer.pt")
    with pytest.raises(CheckpointError, match=r"optimizer\.pt is corrupt"):
        _fit(tmp_path, 10, ckpt_path=str(newer))


def test_a_missing_ckpt_path_says_it_does_not_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ckpt_path='does/not/exist' does not exist"):
        _fit(tmp_path, 1, ckpt_path="does/not/exist")
    with pytest.raises(FileNotFoundError, match=r"does not exist"):
        Net.load_from_checkpoint(str(tmp_path / "nowhere"))


# -- a SIGKILL storm on one path -------------------------------------------------------------------------
ZYGOTE = textwrap.dedent(
    """
    # Imports torch once, then forks one saver per request: each saver saves to one fixed path
    # until it is killed. (A fresh interpreter per kill would spend ~2 s importing.)
    import os, sys
    import torch
    torch.set_num_threads(1)  # no thread pool to break in the forked savers
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset
    import tasktrain as tt

    class Wide(tt.TaskModule):
        def __init__(self, hidden=5_000):
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))

        def compute_loss(self, batch):
            x, y = batch
            return F.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    fixed = sys.argv[1]
    x = torch.randn(8, 4)
    trainer = tt.Trainer(max_steps=1, default_root_dir=sys.argv[2], logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, accelerator="cpu")
    trainer.fit(Wide(), DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4))
    trainer.save_checkpoint(fixed)  # a complete checkpoint exists before the first kill
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "fork":
            pid = os.fork()
            if pid == 0:
                try:
                    while True:
                        trainer.save_checkpoint(fixed)
                finally:
                    os._exit(1)
            print(pid, flush=True)
        elif line.strip() == "reap":  # the parent killed it
            print(os.waitpid(pid, 0)[1], flush=True)
    """
)


def _send(zygote: subprocess.Popen, command: str) -> int:
    assert zygote.stdin is not None and zygote.stdout is not None
    zygote.stdin.write(f"{command}\n")
    zygote.stdin.flush()
    return int(zygote.stdout.readline())


def test_a_sigkill_storm_on_one_path_always_leaves_a_verified_checkpoint(tmp_path):
    root = tmp_path / "ckpts"
    fixed = root / "fixed"
    script = tmp_path / "zygote.py"
    script.write_text(ZYGOTE)
    log = tmp_path / "zygote.log"
    with open(log, "wb") as err:
        zygote = subprocess.Popen(
            [sys.executable, str(script), str(fixed), str(tmp_path / "run")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    rng = random.Random(0)
    kills, only_aside, with_tmp = 0, 0, 0
    deadline = time.monotonic() + 60
    try:
        assert zygote.stdout is not None and zygote.stdout.readline().strip() == "ready", log.read_text()
        while kills < 30:
            assert time.monotonic() < deadline, f"only {kills} kills in 60 s"
            pid = _send(zygote, "fork")
            time.sleep(rng.uniform(0.0, 0.08))  # a save takes ~10-30 ms: kills land in every phase
            os.kill(pid, signal.SIGKILL)
            status = _send(zygote, "reap")
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, log.read_text()
            kills += 1
            names = os.listdir(root)
            only_aside += "fixed" not in names
            with_tmp += any(".tmp-" in name for name in names)
            found = find_last(str(root))
            assert found is not None, f"kill {kills}: no complete checkpoint among {names}"
            assert found == str(fixed) or found.startswith(f"{fixed}.old-"), found
            verify(found)
            assert verify(resolve(str(fixed))) is None
    finally:
        zygote.kill()
        zygote.wait()
    # Printed for whoever runs this with -s: how often the interesting states came up.
    print(f"{kills} kills: only the .old- copy left {only_aside} times, a .tmp- directory {with_tmp} times")

    (root / "notes.tmp-keep").mkdir()  # not our pattern: never touched
    _fit(tmp_path / "resume", 1, dirpath=str(root))
    names = set(os.listdir(root))
    assert not [name for name in names if _ours(name, ".tmp-")], names
    assert "notes.tmp-keep" in names
    if "fixed" in names:
        assert not [name for name in names if _ours(name, ".old-")], names
    verify(resolve(str(fixed)))


def _ours(name: str, kind: str) -> bool:
    stem, _, suffix = name.rpartition(kind)
    return bool(stem) and len(suffix) == 8 and all(c in "0123456789abcdef" for c in suffix)


# -- fit start ----------------------------------------------------------------------------------------
def test_fit_start_removes_only_our_leftovers(tmp_path):
    root = tmp_path / "ckpts"
    _fit(tmp_path, 4, dirpath=str(root))
    kept = Path(find_last(str(root)) or "")
    (root / "step=00000009.tmp-1a2b3c4d").mkdir()
    (root / "step=00000009.tmp-1a2b3c4d" / "model.safetensors").write_bytes(b"partial")
    shutil.copytree(kept, root / f"{kept.name}.old-5e6f7a8b")  # superseded: its path is complete
    others = ["notes.tmp-1a2b", "step=1.tmp-1A2B3C4D", "x.tmp-1a2b3c4d.bak", "y.old-0000000g"]
    for name in others:
        (root / name).mkdir()
    (root / "file.tmp-1a2b3c4d").write_text("a file, not a save")
    _fit(tmp_path, 5, dirpath=str(root), ckpt_path=str(kept))
    names = set(os.listdir(root))
    assert not {"step=00000009.tmp-1a2b3c4d", f"{kept.name}.old-5e6f7a8b"} & names
    assert {*others, "file.tmp-1a2b3c4d"} <= names


def test_an_unwritable_checkpoint_directory_fails_before_the_first_training_step(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file where a directory should be")
    dirpath = str(blocker / "ckpts")  # cannot be created, even by root
    torch.manual_seed(0)
    module = Net()
    trainer = _trainer(tmp_path, 4, [ModelCheckpoint(dirpath=dirpath)])
    with pytest.raises(OSError, match=rf"ModelCheckpoint\(dirpath='{dirpath}'\).*cannot write checkpoints"):
        trainer.fit(module, _loader())
    assert module.training_steps == 0


def test_a_read_only_checkpoint_directory_fails_before_the_first_training_step(tmp_path):
    dirpath = tmp_path / "ro"
    dirpath.mkdir()
    dirpath.chmod(0o500)
    try:
        if os.access(dirpath, os.W_OK):
            pytest.skip("running as root: chmod does not stop writes")
        torch.manual_seed(0)
        module = Net()
        trainer = _trainer(tmp_path, 4, [ModelCheckpoint(dirpath=str(dirpath))])
        with pytest.raises(OSError, match=rf"cannot write checkpoints to '{dirpath}'"):
            trainer.fit(module, _loader())
        assert module.training_steps == 0
    finally:
        dirpath.chmod(0o700)


def test_the_write_probe_leaves_nothing_behind(tmp_path):
    root = tmp_path / "ckpts"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _fit(tmp_path, 1, dirpath=str(root))
    assert sorted(os.listdir(root)) == ["step=00000001"]
