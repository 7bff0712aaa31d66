"""The on-disk checkpoint: safetensors weights, optimizer.pt, trainer_state.json; no pickle to load."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
from tasktrain.checkpoint import load_module, read_state, read_weights, save_checkpoint
from tasktrain.checkpoint.format import FORMAT_VERSION, OPTIMIZER, STATE, WEIGHTS


class Tied(tt.TaskModule):
    """A tiny language-model shape: the output projection shares the embedding's weight."""

    def __init__(self, vocab: int = 11, dim: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.head = torch.nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def compute_loss(self, batch):
        (tokens,) = batch
        logits = self.head(self.embed(tokens[:, :-1]))
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=0.01)
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)


def _tokens() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randint(0, 11, (8, 5), generator=g)), batch_size=4)


def _trained(**kwargs: Any) -> tuple[tt.Trainer, Tied]:
    module = Tied(**kwargs)
    trainer = tt.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False)
    trainer.fit(module, _tokens())
    return trainer, module


def _weights() -> dict[str, torch.Tensor]:
    return {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4, dtype=torch.int64)}


def test_trainer_save_checkpoint_writes_the_three_files(tmp_path: Path):
    trainer, _ = _trained()
    path = tmp_path / "ckpt"
    trainer.save_checkpoint(str(path))

    names = {p.name for p in path.iterdir()}
    assert {WEIGHTS, OPTIMIZER, STATE} <= names
    assert (WEIGHTS, OPTIMIZER, STATE) == ("model.safetensors", "optimizer.pt", "trainer_state.json")
    assert not any(".tmp-" in p.name for p in tmp_path.iterdir())  # the temporary directory is gone

    state = json.loads((path / STATE).read_text())
    assert state["format_version"] == FORMAT_VERSION
    assert state["global_step"] == 2 and state["epoch"] == 0
    assert state["hparams"] == {"vocab": 11, "dim": 4}
    assert "epoch_progress" in state["states"]["fit_loop"]
    assert state["versions"]["torch"] == torch.__version__
    assert read_state(str(path))["global_step"] == 2


def test_optimizer_state_loads_with_weights_only(tmp_path: Path):
    trainer, _ = _trained()
    trainer.save_checkpoint(str(tmp_path / "ckpt"))
    loaded = torch.load(tmp_path / "ckpt" / OPTIMIZER, weights_only=True)
    expected = trainer.optimizer.state_dict()
    # Keyed by parameter name, not position, so the state loads under any strategy.
    names = [name for name, _ in trainer.module.named_parameters()]
    groups = [{**group, "params": [names[i] for i in group["params"]]} for group in expected["param_groups"]]
    (saved,) = loaded["optimizers"]  # one state per optimizer, by position
    assert saved["param_groups"] == groups
    for pid, pstate in expected["state"].items():
        torch.testing.assert_close(saved["state"][names[pid]]["exp_avg"], pstate["exp_avg"])
    assert read_state(str(tmp_path / "ckpt"))["states"]["lr_scheduler.0"]["last_epoch"] == 1


def test_tied_weights_are_stored_once_and_round_trip(tmp_path: Path):
    trainer, module = _trained()
    path = str(tmp_path / "ckpt")
    trainer.save_checkpoint(path)

    with safe_open(str(tmp_path / "ckpt" / WEIGHTS), framework="pt") as f:
        stored = set(f.keys())
    assert len(stored) == 1 and stored <= {"embed.weight", "head.weight"}

    weights = read_weights(path)
    assert set(weights) == {"embed.weight", "head.weight"}
    torch.testing.assert_close(weights["head.weight"], module.embed.weight.detach())

    loaded = Tied.load_from_checkpoint(path)
    assert loaded.head.weight is loaded.embed.weight  # still tied after loading
    torch.testing.assert_close(loaded.embed.weight, module.embed.weight, rtol=0, atol=0)


def test_save_and_read_on_a_memory_url():
    url = f"memory://ckpt-{uuid.uuid4().hex}/step=3"
    save_checkpoint(url, _weights(), [{"state": {}, "param_groups": []}], {"global_step": 3})
    weights = read_weights(url)
    assert set(weights) == {"a", "b"}
    torch.testing.assert_close(weights["a"], _weights()["a"])
    assert weights["b"].dtype == torch.int64
    assert read_state(url)["global_step"] == 3


def test_save_overwrites_an_existing_checkpoint(tmp_path: Path):
    path = str(tmp_path / "ckpt")
    save_checkpoint(path, _weights(), [], {"global_step": 1})
    save_checkpoint(path, {"a": torch.zeros(1)}, [], {"global_step": 2})
    assert set(read_weights(path)) == {"a"}
    assert read_state(path)["global_step"] == 2


def test_missing_files_name_the_file(tmp_path: Path):
    path = tmp_path / "ckpt"
    save_checkpoint(str(path), _weights(), [], {"global_step": 1})
    (path / WEIGHTS).unlink()
    with pytest.raises(FileNotFoundError, match=WEIGHTS):
        read_weights(str(path))
    (path / STATE).unlink()
    with pytest.raises(FileNotFoundError, match=STATE):
        read_state(str(path))
    with pytest.raises(FileNotFoundError, match=STATE):
        read_state(str(tmp_path / "does-not-exist"))


def test_corrupted_safetensors_names_the_file(tmp_path: Path):
    path = tmp_path / "ckpt"
    save_checkpoint(str(path), _weights(), [], {"global_step": 1})
    (path / WEIGHTS).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(ValueError, match=WEIGHTS):
        read_weights(str(path))
    save_checkpoint(str(tmp_path / "trunc"), _weights(), [], {"global_step": 1})
    full = (tmp_path / "trunc" / WEIGHTS).read_bytes()
    (tmp_path / "trunc" / WEIGHTS).write_bytes(full[: len(full) // 2])  # truncated
    with pytest.raises(ValueError, match=WEIGHTS):
        read_weights(str(tmp_path / "trunc"))


def test_corrupted_state_json_names_the_file(tmp_path: Path):
    path = tmp_path / "ckpt"
    save_checkpoint(str(path), _weights(), [], {"global_step": 1})
    (path / STATE).write_text("{not json")
    with pytest.raises(ValueError, match=STATE):
        read_state(str(path))


@pytest.mark.parametrize("version", [0, 3, None, "1"])
def test_wrong_format_version_names_the_file_and_versions(tmp_path: Path, version: Any):
    path = tmp_path / "ckpt"
    save_checkpoint(str(path), _weights(), [], {"global_step": 1})
    state = json.loads((path / STATE).read_text())
    if version is None:
        del state["format_version"]
    else:
        state["format_version"] = version
    (path / STATE).write_text(json.dumps(state))
    with pytest.raises(ValueError, match=STATE) as info:
        read_state(str(path))
    assert repr(version) in str(info.value)
    assert str(FORMAT_VERSION) in str(info.value)


def test_mismatched_model_raises_value_error(tmp_path: Path):
    trainer, _ = _trained()
    path = str(tmp_path / "ckpt")
    trainer.save_checkpoint(path)
    with pytest.raises(ValueError, match="Tied"):
        Tied.load_from_checkpoint(path, vocab=12)  # wrong shape

    class Other(tt.TaskModule):
        def __init__(self, vocab: int = 0, dim: int = 0) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(2, 2)

    with pytest.raises(ValueError, match=r"proj\.weight"):  # missing and unexpected keys are named
        Other.load_from_checkpoint(path)


def test_load_module_builds_from_hparams(tmp_path: Path):
    trainer, module = _trained(vocab=13, dim=3)
    path = str(tmp_path / "ckpt")
    trainer.save_checkpoint(path)
    loaded = load_module(Tied, path, {})
    assert loaded.hparams == {"vocab": 13, "dim": 3}
    assert loaded.embed.weight.shape == (13, 3)
    torch.testing.assert_close(loaded.embed.weight, module.embed.weight)


def test_consolidate_merges_weight_shards_into_one_file(tmp_path: Path):
    from safetensors.torch import load_file

    from tasktrain.checkpoint import consolidate, save_checkpoint

    weights = _weights()
    weights["tied"] = weights["a"]
    src = str(tmp_path / "ckpt")
    save_checkpoint(src, weights, [], {"global_step": 0}, max_shard_bytes=16)  # one tensor per shard
    assert (tmp_path / "ckpt" / "model.safetensors.index.json").exists()
    consolidate(src, str(tmp_path / "out" / "model.safetensors"))
    merged = load_file(tmp_path / "out" / "model.safetensors")
    assert set(merged) == {"a", "b"}  # the tied tensor is stored once, as an alias
    for name in ("a", "b"):
        assert torch.equal(merged[name], weights[name])
    assert set(read_weights(src)) == {"a", "b", "tied"}


def test_a_local_optimizer_file_is_memory_mapped_privately(tmp_path: Path):
    from tasktrain.checkpoint import read_optimizer_state

    trainer, _ = _trained()
    trainer.save_checkpoint(str(tmp_path / "ckpt"))
    file = tmp_path / "ckpt" / OPTIMIZER
    before = file.read_bytes()
    (saved,) = read_optimizer_state(str(tmp_path / "ckpt"))["optimizers"]
    exp_avg = next(iter(saved["state"].values()))["exp_avg"]
    exp_avg.add_(1.0)  # an optimizer step writes into the loaded state: copy-on-write, never the file
    assert file.read_bytes() == before
    (again,) = read_optimizer_state(str(tmp_path / "ckpt"))["optimizers"]
    torch.testing.assert_close(next(iter(again["state"].values()))["exp_avg"] + 1.0, exp_avg)


def test_an_optimizer_file_on_another_filesystem_is_read_into_memory():
    from tasktrain.checkpoint import read_optimizer_state

    trainer, _ = _trained()
    path = f"memory://opt-{uuid.uuid4().hex}/ckpt"
    trainer.save_checkpoint(path)
    (saved,) = read_optimizer_state(path)["optimizers"]
    names = [name for name, _ in trainer.module.named_parameters()]
    torch.testing.assert_close(
        saved["state"][names[0]]["exp_avg"], trainer.optimizer.state[trainer.module.embed.weight]["exp_avg"]
    )
