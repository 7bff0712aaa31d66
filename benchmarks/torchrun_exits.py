"""How many consecutive torchrun runs of a small DDP fit exit 0 (the shutdown-abort check).

Each run is ``torchrun --standalone --nproc-per-node=2`` of a script that fits a small model with
``strategy="ddp"`` on gloo and returns (``--teardown``: calls ``trainer.strategy.teardown()`` at
the end; ``--plain``: the same with plain torch, ``init_process_group`` and DDP, no tasktrain).
A worker that aborts at interpreter shutdown ("terminate called without an active exception")
makes torchrun fail; this counts exits and aborts.

Run:  PYTHONPATH=src .venv/bin/python benchmarks/torchrun_exits.py --runs 50 [--teardown] [--plain]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

SCRIPT = r"""
import sys, torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
torch.set_num_threads(1)
data = TensorDataset(torch.randn(64, 8), torch.randn(64, 1))
if sys.argv[1] == "plain":
    import torch.distributed as dist
    dist.init_process_group("gloo")
    model = nn.parallel.DistributedDataParallel(nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in DataLoader(data, batch_size=8):
        opt.zero_grad(); nn.functional.mse_loss(model(x), y).backward(); opt.step()
    if sys.argv[2] == "teardown":
        del model
        dist.destroy_process_group()
else:
    import tasktrain as tt

    class Net(tt.TaskModule):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(8, 1)
        def compute_loss(self, batch):
            return nn.functional.mse_loss(self.layer(batch[0]), batch[1])
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = tt.Trainer(strategy="ddp", max_epochs=1, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, accelerator="cpu")
    trainer.fit(Net(), DataLoader(data, batch_size=8))
    if sys.argv[2] == "teardown":
        trainer.strategy.teardown()
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument(
        "--teardown", action="store_true", help="tear down explicitly at the end of the script"
    )
    parser.add_argument("--plain", action="store_true", help="plain torch instead of tasktrain")
    args = parser.parse_args()
    ok = aborts = 0
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "job.py")
        with open(script, "w") as f:
            f.write(SCRIPT)
        for run in range(args.runs):
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--standalone",
                    "--nproc-per-node=2",
                    script,
                    "plain" if args.plain else "tasktrain",
                    "teardown" if args.teardown else "exit",
                ],
                capture_output=True,
                text=True,
                timeout=300,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
            aborted = "terminate called" in done.stdout + done.stderr
            ok += done.returncode == 0
            aborts += aborted
            if done.returncode != 0:
                print(
                    f"run {run}: exit {done.returncode}{' (abort at shutdown)' if aborted else ''}",
                    flush=True,
                )
                print((done.stdout + done.stderr)[-1500:], flush=True)
    kind = ("plain torch" if args.plain else "tasktrain") + (", explicit teardown" if args.teardown else "")
    print(
        f"{kind}: {ok}/{args.runs} torchrun runs exited 0, {aborts} aborted at shutdown "
        f"({time.monotonic() - start:.0f} s)"
    )


if __name__ == "__main__":
    main()
