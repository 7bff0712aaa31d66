"""How long ``trainer.save_checkpoint`` stalls the training loop: synchronous vs ``async_save=True``.

A module of ``--params`` float32 parameters (default 100M, as ``benchmarks/checkpoint.py``) with
SGD is fitted one step, then saved ``--rounds`` times each way, alternating which goes first.
"stall" is the time until ``save_checkpoint`` returns (the loop is blocked that long); for the
async save, "background" is the time until the checkpoint is committed. Each round writes a
fresh directory; the old ones are removed outside the timed region.

Run:  PYTHONPATH=src .venv/bin/python benchmarks/async_checkpoint.py [--params 100_000_000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt


class Big(tt.TaskModule):
    def __init__(self, params: int, width: int = 4096) -> None:
        super().__init__()
        rows = params // width
        self.layers = nn.ParameterList(
            nn.Parameter(torch.randn(min(1024, rows - i * 1024), width)) for i in range((rows + 1023) // 1024)
        )

    def compute_loss(self, batch):
        return sum(p[0, 0] for p in self.layers) * batch[0].sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", type=int, default=100_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    module = Big(args.params)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = tt.Trainer(
            max_steps=1,
            logger=False,
            enable_progress_bar=False,
            enable_checkpointing=False,
            accelerator="cpu",
            default_root_dir=tmp,
        )
        trainer.fit(module, DataLoader(TensorDataset(torch.ones(1, 1)), batch_size=1))
        sync, stall, background = [], [], []
        for i in range(args.rounds):
            for kind in ("sync", "async") if i % 2 == 0 else ("async", "sync"):
                path = f"{tmp}/{kind}-{i}"
                start = time.perf_counter()
                trainer.save_checkpoint(path, async_save=kind == "async")
                returned = time.perf_counter() - start
                trainer.wait_for_checkpoint()
                done = time.perf_counter() - start
                if kind == "sync":
                    sync.append(returned)
                else:
                    stall.append(returned)
                    background.append(done)
                shutil.rmtree(path)
    s, a, b = (statistics.median(v) for v in (sync, stall, background))
    print(f"{args.params / 1e6:.0f}M parameters, {args.rounds} rounds (medians; min in brackets):")
    print(f"  synchronous save:   {s:.2f} s stall [{min(sync):.2f}]")
    print(
        f"  async_save=True:    {a:.2f} s stall [{min(stall):.2f}] = {a / s:.2f}x the synchronous save; "
        f"first async save {stall[0]:.2f} s (fresh host buffers); committed after {b:.2f} s"
    )


if __name__ == "__main__":
    main()
