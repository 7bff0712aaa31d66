"""A training script as users launch it with ``torchrun`` or ``srun``: every process runs all of it.

``python _launched_job.py ROOT OUT [--num-nodes N] [--ckpt-path P] [--kill-at STEP] [--every N]``
fits ItemNet on ``item_data`` (the conformance setup of ``_dist_workers``) and rank 0 writes
the final weights to ``OUT`` (safetensors). ``--kill-at`` makes rank 1 kill itself (SIGKILL)
after that optimizer step on the first attempt of a torchrun job (``TORCHELASTIC_RESTART_COUNT=0``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from _dist_workers import ACCUMULATE, CONFORMANCE_EPOCHS, PER_RANK_BATCH, ItemNet, item_data
from safetensors.torch import save_file
from torch.utils.data import DataLoader

import tasktrain as tt
from tasktrain.callbacks import Callback, ModelCheckpoint


class HangRankOne(Callback):
    """Rank 1 stops responding (sleeps in this hook, outside any collective) after step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_step_end(self, trainer, module):
        if trainer.strategy.global_rank == 1 and trainer.state.global_step == self.step:
            time.sleep(10**6)


class KillRankOne(Callback):
    """Rank 1 dies (SIGKILL, no cleanup) after optimizer step ``step`` of the first attempt."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_step_end(self, trainer, module):
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        if first_attempt and trainer.strategy.global_rank == 1 and trainer.state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("out")
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--ckpt-path", default=None)
    parser.add_argument("--kill-at", type=int, default=None)
    parser.add_argument("--every", type=int, default=None)
    parser.add_argument("--hang-at", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--optimizer", default="sgd")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    module = ItemNet(optimizer=args.optimizer)
    callbacks: list[Callback] = []
    if args.every is not None:
        callbacks.append(ModelCheckpoint(every_n_train_steps=args.every, keep_last=2))
    if args.kill_at is not None:
        callbacks.append(KillRankOne(args.kill_at))
    if args.hang_at is not None:
        callbacks.append(HangRankOne(args.hang_at))
    trainer = tt.Trainer(
        strategy=tt.strategies.DDP(accelerator="cpu", timeout=args.timeout),
        num_nodes=args.num_nodes,
        max_epochs=CONFORMANCE_EPOCHS,
        accumulate_grad_batches=ACCUMULATE,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=args.every is not None,
        default_root_dir=args.root,
    )
    trainer.fit(module, DataLoader(item_data(), batch_size=PER_RANK_BATCH), ckpt_path=args.ckpt_path)
    if trainer.is_global_zero:
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, args.out)
    trainer.strategy.teardown()


if __name__ == "__main__":
    main()
