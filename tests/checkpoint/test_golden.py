"""The checkpoint format, pinned. Changing what this test expects is a deliberate, CHANGELOG-worthy act."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
from tasktrain.checkpoint.format import FORMAT_VERSION

FILES = {"manifest.json", "model.safetensors", "optimizer.pt", "states.safetensors", "trainer_state.json"}
STATE_KEYS = {"format_version", "global_step", "epoch", "hparams", "versions", "strategy", "states"}
#: The names of the Trainer's Stateful parts, as checkpoints store them.
STATES = {
    "trainer",
    "fit_loop",
    "totals",
    "logs",
    "precision",
    "lr_scheduler.0",
    "callbacks.ModelCheckpoint",
    "callbacks.Preemption",
    "rng",
}
LOOP_KEYS = {
    "epoch_progress",
    "epoch_loop.batch_progress",
    "epoch_loop.exhausted",
    "epoch_loop.epoch_start_rng",
    "epoch_loop.dataloader",
    "epoch_loop.accumulation.progress",
    "epoch_loop.optimization.progress",
    "epoch_loop.optimization.skipped",
    "epoch_loop.manual.progress",
    "epoch_loop.manual.optimizer_steps",
    "epoch_loop.manual.skipped_steps",
    "epoch_loop.cadence.val_loop.batch_progress",
    "epoch_loop.cadence.last_val_step",
}


class Small(tt.TaskModule):
    def __init__(self, hidden: int = 3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Linear(2, hidden)

    def compute_loss(self, batch):
        return self.net(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=0.1)
        return opt, torch.optim.lr_scheduler.StepLR(opt, 1)


def test_a_checkpoint_directory_holds_exactly_the_documented_files_and_keys(tmp_path: Path):
    trainer = tt.Trainer(max_steps=3, default_root_dir=str(tmp_path), logger=False, enable_progress_bar=False)
    trainer.fit(Small(), DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=2))
    (ckpt,) = (tmp_path / "checkpoints").iterdir()
    assert ckpt.name == "step=00000003"
    assert {p.name for p in ckpt.iterdir()} == FILES

    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert manifest["step"] == 3
    assert set(manifest["files"]) == FILES - {"manifest.json"}
    assert all(manifest["files"][name] == (ckpt / name).stat().st_size for name in manifest["files"])

    state = json.loads((ckpt / "trainer_state.json").read_text())  # strict JSON: no NaN or Infinity
    assert set(state) == STATE_KEYS
    assert state["format_version"] == FORMAT_VERSION == 2
    assert state["global_step"] == 3 and state["epoch"] == 0
    assert set(state["states"]) == STATES
    assert set(state["states"]["fit_loop"]) == LOOP_KEYS
    assert state["states"]["trainer"] == {"global_step": 3, "epoch": 0}
    assert set(state["states"]["totals"]) == {"samples", "items", "losses"}
    assert set(state["states"]["rng"]["torch_cpu"]) == {"__tensor__"}  # tensors live in states.safetensors
    assert state["hparams"] == {"hidden": 3}
    assert state["strategy"] == {"name": "single", "world_size": 1}
    assert set(state["versions"]) == {"tasktrain", "torch"}

    with safe_open(str(ckpt / "model.safetensors"), framework="pt") as f:
        assert set(f.keys()) == {"net.weight", "net.bias"}
        assert set(f.metadata()) == {"tasktrain.aliases", "format"}

    optimizer = torch.load(ckpt / "optimizer.pt", weights_only=True)
    assert set(optimizer) == {"optimizers"}
    (adamw,) = optimizer["optimizers"]
    assert set(adamw["state"]) == {"net.weight", "net.bias"}  # keyed by parameter name

    with safe_open(str(ckpt / "states.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["rank_states"]) == {}  # one rank: nothing differs from rank 0
        assert all(key.startswith("0.") for key in f.keys())  # noqa: SIM118  (safe_open has no __iter__) rank 0's tensors: RNG snapshots
