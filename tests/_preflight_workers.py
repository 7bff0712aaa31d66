"""What the ranks of the preflight tests run (spawned ranks import it by name)."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
from tasktrain.strategies import DDP


class Net(tt.TaskModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def compute_loss(self, batch):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class OtherNet(Net):
    """Same parameters, another class: what a rank running a stale copy of the script would build."""


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(
        TensorDataset(torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)), batch_size=2
    )


def trainer(root: str, **kwargs: Any) -> tt.Trainer:
    return tt.Trainer(
        logger=False, enable_progress_bar=False, default_root_dir=root, log_every_n_steps=1, **kwargs
    )


def fit_from_own_root(root: str, ckpt_path: str, module_per_rank: bool = False) -> dict[str, Any]:
    """Each rank resumes from its own ``root/rank<N>`` (node-local disks), or builds its own class."""
    rank = int(os.environ["RANK"])
    torch.set_num_threads(1)
    module = OtherNet() if module_per_rank and rank == 1 else Net()
    run = trainer(f"{root}/rank{rank}", strategy=DDP(accelerator="cpu", timeout=120), max_steps=8)
    try:
        result = run.fit(module, loader(), ckpt_path=ckpt_path)
    finally:
        run.strategy.teardown()
    return {"global_step": result.global_step}
