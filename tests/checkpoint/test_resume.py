"""Exact resume: stopping at any optimizer step and resuming equals the uninterrupted run, bit for bit.

The run under test has everything that can break a resume: shuffled data, dropout, gradient
accumulation with a remainder group at each epoch end, AdamW, a per-step StepLR and validation
every two steps. 50 samples in batches of 4 are 13 micro-batches; accumulating 2 makes 7
optimizer steps per epoch, so the 20 steps of a run cover three epochs.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import xxhash
from torch.utils.data import DataLoader, Dataset, RandomSampler, TensorDataset

import tasktrain as tt
from tasktrain.callbacks import Callback, ModelCheckpoint
from tasktrain.checkpoint import CheckpointError, find_last, is_complete, read_state, read_weights

STEPS = 20
STEPS_PER_EPOCH = 7


class Net(tt.TaskModule):
    def __init__(self, hidden: int = 16, blowup_step: int | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, hidden), torch.nn.Dropout(0.3), torch.nn.ReLU(), torch.nn.Linear(hidden, 1)
        )

    def compute_loss(self, batch):
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        if self.hparams.blowup_step == self.global_step:
            loss = loss * 1e6  # overflows fp16 gradients: the scaler skips the step and halves its scale
        return loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=1e-2)
        return opt, {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 3, 0.5), "interval": "step"}


def _dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 4, generator=g)
    return TensorDataset(x, x.sum(1, keepdim=True))


def _loaders(sampler: str, sampler_seed: int) -> tuple[DataLoader, DataLoader]:
    ds = _dataset()
    if sampler == "shuffle":
        train = DataLoader(ds, batch_size=4, shuffle=True)
    else:  # the sampler owns its generator: the global RNG does not shuffle
        generator = torch.Generator().manual_seed(sampler_seed)
        train = DataLoader(ds, batch_size=4, sampler=RandomSampler(ds, generator=generator))
    return train, DataLoader(ds, batch_size=8)


def _fit(
    root: Path | str,
    max_steps: int | None = STEPS,
    *,
    max_epochs: int | None = None,
    ckpt_path: str | None = None,
    seed: int = 0,
    sampler: str = "shuffle",
    sampler_seed: int = 7,
    precision: str = "32-true",
    blowup_step: int | None = None,
    callbacks: list[Callback] | None = None,
) -> tuple[Net, tt.Trainer]:
    """One run. ``seed`` sets the initial weights and global RNG: a resumed run uses another one."""
    torch.manual_seed(seed)
    module = Net(blowup_step=blowup_step)
    train, val = _loaders(sampler, sampler_seed)
    trainer = tt.Trainer(
        max_steps=max_steps,
        max_epochs=max_epochs,
        accumulate_grad_batches=2,
        val_check_interval=2,
        precision=precision,
        default_root_dir=root,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        accelerator="cpu",
    )
    trainer.fit(module, train, val, ckpt_path=ckpt_path)
    return module, trainer


def _summary(module: torch.nn.Module, trainer: tt.Trainer) -> dict[str, Any]:
    precision = trainer.strategy.precision
    scaler = getattr(precision, "scaler", None)
    return {
        "params": {k: v.clone() for k, v in module.state_dict().items()},
        "optimizer": trainer.optimizer.state_dict()["state"],
        "lr": [group["lr"] for group in trainer.optimizer.param_groups],
        "global_step": trainer.state.global_step,
        "scaler": scaler.state_dict() if scaler is not None else None,
    }


@functools.cache
def _reference(tmp_root: str, **kwargs: Any) -> dict[str, Any]:
    module, trainer = _fit(Path(tmp_root) / json.dumps(kwargs, sort_keys=True), STEPS, **kwargs)
    return _summary(module, trainer)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted 20-step run for a configuration, computed once per configuration."""
    root = str(tmp_path_factory.mktemp("reference"))
    return lambda **kwargs: _reference(root, **kwargs)


def _assert_same_params(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == actual.keys()
    differ = [name for name in expected if not torch.equal(expected[name], actual[name])]
    assert not differ, f"parameters differ from the uninterrupted run: {differ}"


def _assert_same_run(expected: dict[str, Any], module: torch.nn.Module, trainer: tt.Trainer) -> None:
    actual = _summary(module, trainer)
    assert actual["global_step"] == expected["global_step"]
    _assert_same_params(expected["params"], actual["params"])
    for index, state in expected["optimizer"].items():
        for key, value in state.items():
            assert torch.equal(value, actual["optimizer"][index][key]), (
                f"optimizer state {index}.{key} differs"
            )
    assert actual["lr"] == expected["lr"]
    assert actual["scaler"] == expected["scaler"]


# -- exact resume ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "stop",
    [1, 4, STEPS_PER_EPOCH, 10, 2 * STEPS_PER_EPOCH, 19],
    ids=["step1", "mid-epoch0", "epoch-end", "mid-epoch1", "second-epoch-end", "last-but-one"],
)
def test_resume_from_last_equals_the_uninterrupted_run(tmp_path, reference, stop):
    _fit(tmp_path, stop)
    module, trainer = _fit(tmp_path, ckpt_path="last", seed=1234)
    _assert_same_run(reference(), module, trainer)


def test_resume_after_a_run_that_stopped_by_max_epochs(tmp_path, reference):
    _, first = _fit(tmp_path, None, max_epochs=1)
    assert first.state.global_step == STEPS_PER_EPOCH
    module, trainer = _fit(tmp_path, ckpt_path="last", seed=1234)
    _assert_same_run(reference(), module, trainer)


def test_resume_twice_in_a_row(tmp_path, reference):
    _fit(tmp_path, 5)
    _, second = _fit(tmp_path, 12, ckpt_path="last", seed=55)
    assert second.state.global_step == 12
    module, trainer = _fit(tmp_path, ckpt_path="last", seed=66)
    _assert_same_run(reference(), module, trainer)


def test_resume_from_an_explicit_path_in_another_root(tmp_path, reference):
    _fit(tmp_path / "first", 10)
    path = find_last(str(tmp_path / "first"))
    assert path is not None and Path(path).name == "step=00000010"
    module, trainer = _fit(tmp_path / "second", ckpt_path=path, seed=99)
    _assert_same_run(reference(), module, trainer)


@pytest.mark.parametrize("stop", [3, STEPS_PER_EPOCH, 10])
def test_resume_with_a_sampler_that_owns_its_generator(tmp_path, reference, stop):
    """The shuffle comes from the sampler's own torch.Generator; the resumed run seeds it differently."""
    _fit(tmp_path, stop, sampler="generator")
    module, trainer = _fit(tmp_path, ckpt_path="last", seed=1234, sampler="generator", sampler_seed=8)
    _assert_same_run(reference(sampler="generator"), module, trainer)


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_resume_with_mixed_precision(tmp_path, reference, precision):
    """16-mixed overflows at step 2, so the scaler's scale and growth tracker must come back too."""
    stop = 10
    blowup = 2 if precision == "16-mixed" else None
    expected = reference(precision=precision, blowup_step=blowup)
    if precision == "16-mixed":
        assert expected["scaler"]["scale"] < 65536.0  # the overflow really changed the scaler state
    _fit(tmp_path, stop, precision=precision, blowup_step=blowup)
    module, trainer = _fit(tmp_path, ckpt_path="last", seed=1234, precision=precision, blowup_step=blowup)
    _assert_same_run(expected, module, trainer)


class _CountingDataset(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n
        self.fetched = 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.fetched += 1
        x = torch.tensor([index / self.n])
        return x, 2 * x


class _Linear(tt.TaskModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(1, 1)

    def compute_loss(self, batch):
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_mid_epoch_resume_loads_none_of_the_skipped_samples(tmp_path):
    """A 1,000,000-sample epoch resumed 40 batches in: only the batches trained on are fetched."""
    batch = 100
    args = dict(logger=False, enable_progress_bar=False, accelerator="cpu", default_root_dir=tmp_path)

    def fit(max_steps: int, ckpt_path: str | None) -> tuple[_CountingDataset, _Linear]:
        torch.manual_seed(0)
        data = _CountingDataset(1_000_000)
        module = _Linear()
        tt.Trainer(max_steps=max_steps, **args).fit(
            module, DataLoader(data, batch_size=batch, shuffle=True), ckpt_path=ckpt_path
        )
        return data, module

    first, _ = fit(40, None)
    assert first.fetched == 40 * batch
    resumed, module = fit(43, "last")
    assert resumed.fetched == 3 * batch
    _, uninterrupted = fit(43, None)
    _assert_same_params(uninterrupted.state_dict(), module.state_dict())


# -- sharded weights -------------------------------------------------------------------------------
def test_sharded_checkpoint_writes_several_shards_and_resumes_exactly(tmp_path, reference):
    module, trainer = _fit(tmp_path / "run", 6)
    path = tmp_path / "sharded" / "step=00000006"
    trainer.save_checkpoint(str(path), max_shard_bytes=60)  # every tensor is at least 60 bytes but one
    shards = sorted(p.name for p in path.glob("model-*-of-*.safetensors"))
    assert len(shards) == 4
    assert shards == [f"model-{i:05d}-of-00004.safetensors" for i in range(1, 5)]
    assert not (path / "model.safetensors").exists()
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(module.state_dict())
    assert set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in module.state_dict().values())
    assert is_complete(str(path))

    _assert_same_params(module.state_dict(), read_weights(str(path)))
    loaded = Net.load_from_checkpoint(str(path))
    _assert_same_params(module.state_dict(), loaded.state_dict())
    resumed, resumed_trainer = _fit(tmp_path / "elsewhere", ckpt_path=str(path), seed=3)
    _assert_same_run(reference(), resumed, resumed_trainer)


def test_model_checkpoint_max_shard_bytes_shards_its_saves(tmp_path):
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), max_shard_bytes=60)
    module, _ = _fit(tmp_path, 3, callbacks=[ckpt])
    path = Path(ckpt.last)
    assert len(list(path.glob("model-*-of-00004.safetensors"))) == 4
    _assert_same_params(module.state_dict(), Net.load_from_checkpoint(str(path)).state_dict())


class _Tied(tt.TaskModule):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(8, 4)
        self.mid = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 8, bias=False)
        self.head.weight = self.embed.weight

    def compute_loss(self, batch):
        return F.cross_entropy(self.head(self.mid(self.embed(batch[0]))), batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_tied_weights_survive_sharding(tmp_path):
    module = _Tied()
    trainer = tt.Trainer(
        max_steps=2,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, DataLoader(TensorDataset(torch.arange(8)), batch_size=4))
    path = str(tmp_path / "step=00000002")
    trainer.save_checkpoint(path, max_shard_bytes=64)
    assert len(list(Path(path).glob("model-*.safetensors"))) > 1
    loaded = _Tied.load_from_checkpoint(path)
    _assert_same_params(module.state_dict(), loaded.state_dict())
    assert loaded.head.weight is loaded.embed.weight


# -- no code runs on load ----------------------------------------------------------------------------
class _Plant:
    """Unpickling this object would create ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _refresh_manifest(ckpt: Path) -> None:
    """Make the manifest match the files as they are now (as an attacker who rewrites both would)."""
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["files"] = {name: (ckpt / name).stat().st_size for name in manifest["files"]}
    manifest["checksums"] = {
        name: f"xxh3_64:{xxhash.xxh3_64_hexdigest((ckpt / name).read_bytes())}" for name in manifest["files"]
    }
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A complete checkpoint of ``Net`` at step 4, to copy and damage."""
    root = tmp_path_factory.mktemp("saved")
    _fit(root, 4)
    path = find_last(str(root))
    assert path is not None
    return Path(path)


@pytest.fixture
def ckpt(saved, tmp_path) -> Path:
    copy = tmp_path / "ckpts" / saved.name
    shutil.copytree(saved, copy)
    return copy


def test_a_malicious_pickle_in_optimizer_pt_is_never_executed(ckpt, tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"optimizer": _Plant(str(marker))}, ckpt / "optimizer.pt")
    # The payload is live: an unsafe load would run it.
    torch.load(ckpt / "optimizer.pt", weights_only=False)
    assert marker.exists()
    marker.unlink()
    _refresh_manifest(ckpt)
    assert is_complete(str(ckpt))

    for ckpt_path in (str(ckpt), "last"):
        with pytest.raises(CheckpointError, match=r"optimizer\.pt"):
            _fit(ckpt.parent, ckpt_path=ckpt_path)
        assert not marker.exists()


# -- clear errors ----------------------------------------------------------------------------------
def test_a_truncated_weights_file_is_named(ckpt):
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        Net.load_from_checkpoint(str(ckpt))
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        _fit(ckpt.parent, ckpt_path=str(ckpt))


def test_a_truncated_weights_file_with_a_matching_manifest_is_named(ckpt):
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    _refresh_manifest(ckpt)
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        _fit(ckpt.parent, ckpt_path=str(ckpt))


def test_a_corrupt_weights_header_is_named(ckpt):
    weights = ckpt / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[:8] = (2**40).to_bytes(8, "little")  # a header length far beyond the file: same size, unreadable
    weights.write_bytes(bytes(data))
    assert is_complete(str(ckpt))
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        _fit(ckpt.parent, ckpt_path=str(ckpt))
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        Net.load_from_checkpoint(str(ckpt))


def test_a_truncated_optimizer_file_is_named(ckpt):
    optimizer = ckpt / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    _refresh_manifest(ckpt)
    with pytest.raises(CheckpointError, match=r"optimizer\.pt"):
        _fit(ckpt.parent, ckpt_path=str(ckpt))


def test_a_wrong_format_version_is_named(ckpt):
    state_file = ckpt / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["format_version"] = 99
    state_file.write_text(json.dumps(state))
    _refresh_manifest(ckpt)
    with pytest.raises(CheckpointError, match=r"trainer_state\.json.*99"):
        _fit(ckpt.parent, ckpt_path=str(ckpt))
    with pytest.raises(CheckpointError, match=r"trainer_state\.json"):
        Net.load_from_checkpoint(str(ckpt))


def test_a_checkpoint_of_another_model_is_refused_before_anything_is_loaded(ckpt):
    torch.manual_seed(0)
    other = Net(hidden=8)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    trainer = tt.Trainer(
        max_steps=8,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        default_root_dir=ckpt,
    )
    with pytest.raises(
        CheckpointError, match=r"(?s)another model.*net\.0\.weight.*\(16, 4\).*\(8, 4\)"
    ) as err:
        trainer.fit(other, *_loaders("shuffle", 0), ckpt_path=str(ckpt))
    assert str(ckpt) in str(err.value)
    _assert_same_params(before, other.state_dict())  # no partial load

    class Renamed(tt.TaskModule):
        def __init__(self, **hparams: Any) -> None:
            super().__init__()
            self.body = torch.nn.Linear(4, 1)

    with pytest.raises(CheckpointError, match=r"missing keys \['body.bias', 'body.weight'\]"):
        Renamed.load_from_checkpoint(str(ckpt))


def test_ckpt_path_to_a_directory_that_is_not_a_checkpoint(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a complete checkpoint") as err:
        _fit(tmp_path, ckpt_path=str(plain))
    assert str(plain) in str(err.value)
    missing = tmp_path / "nowhere"
    with pytest.raises((CheckpointError, FileNotFoundError)) as err:
        _fit(tmp_path, ckpt_path=str(missing))
    assert str(missing) in str(err.value)


def test_last_with_nothing_saved_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="ckpt_path='last'") as err:
        _fit(tmp_path / "empty", ckpt_path="last")
    assert str(tmp_path / "empty") in str(err.value)
    (tmp_path / "empty" / "checkpoints" / "step=00000003.tmp-1234abcd").mkdir(parents=True)
    with pytest.raises(FileNotFoundError):
        _fit(tmp_path / "empty", ckpt_path="last")


def test_the_saved_state_is_readable_json(saved):
    state = read_state(str(saved))
    assert state["global_step"] == 4
    assert state["format_version"] == 2
    assert state["hparams"] == {"hidden": 16, "blowup_step": None}
    assert state["strategy"] == {"name": "single", "world_size": 1}
    assert {"tasktrain", "torch"} <= set(state["versions"])
    files = json.loads((saved / "manifest.json").read_text())["files"]
    assert set(files) == {"model.safetensors", "optimizer.pt", "states.safetensors", "trainer_state.json"}
    assert all(os.path.getsize(saved / name) == size for name, size in files.items())


class _StatefulLoader:
    """A loader that knows its own position (like torchdata's StatefulDataLoader)."""

    def __init__(self, dataset: TensorDataset, batch_size: int) -> None:
        self.dataset, self.batch_size, self.position, self.fetched = dataset, batch_size, 0, 0

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def __iter__(self):
        start = self.position if self.position < len(self) else 0  # a finished epoch starts over
        for i in range(start, len(self)):
            self.fetched += 1
            self.position = i + 1
            yield self.dataset[i * self.batch_size : (i + 1) * self.batch_size]

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = state["position"]


def test_a_loader_with_its_own_state_resumes_itself_without_reading_seen_batches(tmp_path):
    def run(root: str, max_steps: int, ckpt_path: str | None = None) -> tuple[Net, _StatefulLoader]:
        torch.manual_seed(0)
        module, loader = Net(), _StatefulLoader(_dataset(), batch_size=4)
        trainer = tt.Trainer(
            max_steps=max_steps,
            accumulate_grad_batches=2,
            default_root_dir=root,
            logger=False,
            enable_progress_bar=False,
            seed=None,
        )
        trainer.fit(module, loader, ckpt_path=ckpt_path)
        return module, loader

    full, _ = run(str(tmp_path / "full"), 10)
    run(str(tmp_path / "split"), 3)  # stops mid-epoch: 6 of 13 batches read
    state = read_state(find_last(str(tmp_path / "split")))
    assert state["states"]["fit_loop"]["epoch_loop.dataloader"] == {"position": 6}
    resumed, loader = run(str(tmp_path / "split"), 10, ckpt_path="last")
    assert loader.fetched == 13 - 6 + 6  # the rest of epoch 1, then 6 batches of epoch 2: none re-read
    for a, b in zip(full.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
