"""The run the legacy checkpoint fixtures were saved from, shared by ``make_fixtures.py`` and the tests.

20 samples in batches of 2 are 10 micro-batches; accumulating 2 makes 5 optimizer steps per
epoch. Dropout, AdamW, a per-step StepLR and a shuffling sampler with its own generator: every
part of the state a resume must put back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

import tasktrain as tt

FIXTURES = Path(__file__).parent
#: fixture directory -> the step it was saved at (``v1``: tasktrain 0.x, checkpoint format_version 1).
V1 = {"v1/mid-epoch": 3, "v1/epoch-end": 5}
#: the same run under FSDP on 2 processes (DCP shards), saved inside its first epoch.
V1_FSDP = {"v1/fsdp-mid-epoch": 3}
TOTAL_STEPS = 12


class LegacyNet(tt.TaskModule):
    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, hidden), torch.nn.Dropout(0.2), torch.nn.ReLU(), torch.nn.Linear(hidden, 1)
        )

    def compute_loss(self, batch):
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=1e-2)
        return opt, {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 2, 0.5), "interval": "step"}


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(20, 4, generator=g)
    dataset = TensorDataset(x, x.sum(1, keepdim=True))
    return DataLoader(
        dataset, batch_size=2, sampler=RandomSampler(dataset, generator=torch.Generator().manual_seed(5))
    )


def fit(
    root: Path | str,
    max_steps: int,
    ckpt_path: str | None = None,
    seed: int = 0,
    trainer_seed: int | None = None,
    **kwargs: Any,
):
    """One run from ``seed``'s initial weights; returns ``(module, trainer)``.

    ``trainer_seed`` is ``Trainer(seed=...)``: spawned ranks need it for a reproducible run.
    """
    torch.manual_seed(seed)
    module = LegacyNet()
    trainer = tt.Trainer(
        max_steps=max_steps,
        accumulate_grad_batches=2,
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        accelerator="cpu",
        seed=trainer_seed,
        **kwargs,
    )
    trainer.fit(module, loader(), ckpt_path=ckpt_path)
    return module, trainer
