"""The GPU check: what the CPU suite cannot show, in one run of a few minutes on a CUDA machine.

Checks, each against a plain-PyTorch reference computed here (same seed, same data order):

1. single-device fits under ``32-true``, ``bf16-mixed``, ``16-mixed`` (GradScaler) and
   ``bf16-true``: the final loss against the fp32 hand-written loop's (``32-true`` within 1e-5,
   TF32 off; the others within a few percent);
2. a one-process NCCL DDP fit equals the single-device fit (1e-6);
3. exact resume: stop after 7 steps, resume from ``"last"``, ``torch.equal`` to uninterrupted;
4. the sync counters (``tests/_syncs.py``): host reads and collectives on the steps that neither
   log nor save, per precision;
5. overhead: ``Trainer.fit`` against a hand-written CUDA loop on the same MLP, interleaved
   (ABBA rounds, ``torch.cuda.synchronize`` at block ends): the median time ratio.

It prints one table (and ``--json`` writes it). ``--device cpu`` runs the same checks on the CPU
(gloo instead of NCCL) as a smoke test of this script; the numbers mean nothing there.

Run:  .venv/bin/python benchmarks/gpu_check.py [--device cuda] [--steps 30] [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
from tasktrain.checkpoint import find_last

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _syncs import SyncCounter

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true")
TOLERANCE = {"32-true": 1e-5, "bf16-mixed": 0.05, "16-mixed": 0.05, "bf16-true": 0.10}
BATCH, WIDTH = 64, 256


def make_net() -> nn.Module:
    return nn.Sequential(
        nn.Linear(32, WIDTH), nn.GELU(), nn.Linear(WIDTH, WIDTH), nn.GELU(), nn.Linear(WIDTH, 1)
    )


def make_loader(steps: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps * BATCH, 32, generator=g)
    y = x[:, :1] * 0.5 + torch.randn(steps * BATCH, 1, generator=g) * 0.1
    return DataLoader(TensorDataset(x, y), batch_size=BATCH)


class Regression(tt.TaskModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = make_net()

    def compute_loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x).float(), y.float())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def reference_loss(device: torch.device, steps: int) -> float:
    """The fp32 hand-written loop: the final step's loss."""
    torch.manual_seed(0)
    net = make_net().to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss = torch.zeros(())
    for x, y in make_loader(steps):
        loss = nn.functional.mse_loss(net(x.to(device)), y.to(device))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.item()


class LastLoss(tt.callbacks.Callback):
    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.loss = outputs["loss"] if isinstance(outputs, dict) else outputs


def fit(
    device: str, steps: int, root: str, data_steps: int | None = None, **kwargs: Any
) -> tuple[tt.TaskModule, tt.Trainer, float]:
    module, last, counter = Regression(), LastLoss(), SyncCounter(cpu_reads=device == "cpu")
    ckpt_path = kwargs.pop("ckpt_path", None)
    trainer = tt.Trainer(
        accelerator=device,
        max_steps=steps,
        log_every_n_steps=10,
        default_root_dir=root,
        enable_progress_bar=False,
        callbacks=[last, counter, *kwargs.pop("callbacks", [])],
        **kwargs,
    )
    trainer.fit(module, make_loader(data_steps or steps), ckpt_path=ckpt_path)
    return module, trainer, float(last.loss)


def quiet_counts(trainer: tt.Trainer, reads_allowed: bool) -> tuple[str, str, bool]:
    """Host reads (of device tensors, on a GPU) and collectives on steps that neither log nor save."""
    counter = next(cb for cb in trainer.callbacks if isinstance(cb, SyncCounter))
    quiet = counter.quiet_batches()
    reads = sum(b["host_reads"] for b in quiet)
    collectives = sum(b["collectives"] for b in quiet)
    result = f"{reads} reads, {collectives} collectives on {len(quiet)} quiet steps"
    return "sync counters", result, collectives == 0 and (reads == 0 or reads_allowed)


def overhead(device: torch.device, steps: int, rounds: int, root: str) -> dict[str, float]:
    loader = make_loader(steps)

    def raw() -> float:
        torch.manual_seed(0)
        net = make_net().to(device)
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
        synchronize(device)
        started = time.perf_counter()
        for i, (x, y) in enumerate(loader):
            loss = nn.functional.mse_loss(
                net(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
            )
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if (i + 1) % 10 == 0:
                loss.item()
        synchronize(device)
        return time.perf_counter() - started

    def ours() -> float:
        trainer = tt.Trainer(
            accelerator=device.type,
            max_steps=steps,
            log_every_n_steps=10,
            default_root_dir=root,
            enable_progress_bar=False,
            enable_checkpointing=False,
            logger=False,
        )
        module = Regression()
        synchronize(device)
        started = time.perf_counter()
        trainer.fit(module, loader)
        synchronize(device)
        return time.perf_counter() - started

    raw(), ours()  # warm-up: CUDA context, kernels, allocator
    ratios, raws, tts = [], [], []
    for _ in range(rounds):
        a1, b1, b2, a2 = raw(), ours(), ours(), raw()
        ratios.append((b1 + b2) / (a1 + a2))
        raws += [a1, a2]
        tts += [b1, b2]
    return {
        "ratio": statistics.median(ratios),
        "raw_steps_per_s": steps / statistics.median(raws),
        "tasktrain_steps_per_s": steps / statistics.median(tts),
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a GPU machine (or --device cpu for a smoke test)")
        return 2
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference must be fp32
    torch.backends.cudnn.allow_tf32 = False
    rows: list[tuple[str, str, bool]] = []
    expected = reference_loss(device, args.steps)
    with tempfile.TemporaryDirectory() as root:
        for precision in PRECISIONS:
            _, trainer, loss = fit(args.device, args.steps, f"{root}/{precision}", precision=precision)
            gap = abs(loss - expected) / abs(expected)
            rows.append(
                (
                    f"fit {precision}: final loss vs fp32 loop",
                    f"{loss:.6f} vs {expected:.6f} (rel {gap:.1e})",
                    gap <= TOLERANCE[precision],
                )
            )
            # GradScaler reads whether the gradients were finite every step (torch's own step);
            # on a CPU every tensor is a host tensor, so only the collectives are checked there.
            name, counts, ok = quiet_counts(trainer, precision == "16-mixed" or device.type == "cpu")
            rows.append((f"{name} {precision}", counts, ok))
        single, _, _ = fit(args.device, args.steps, f"{root}/single", enable_checkpointing=False)
        ddp, trainer, _ = fit(
            args.device, args.steps, f"{root}/ddp", strategy="ddp", devices=1, enable_checkpointing=False
        )
        gap = max(
            (a - b).abs().max().item() for a, b in zip(single.parameters(), ddp.parameters(), strict=True)
        )
        backend = "nccl" if device.type == "cuda" else "gloo"
        rows.append((f"DDP, 1 process ({backend}) vs single device", f"max |dw| {gap:.1e}", gap <= 1e-6))
        name, counts, ok = quiet_counts(trainer, device.type == "cpu")
        rows.append((f"{name} DDP", counts, ok))
        whole, _, _ = fit(args.device, args.steps, f"{root}/whole")
        fit(args.device, 7, f"{root}/resumed", data_steps=args.steps)
        assert find_last(f"{root}/resumed") is not None
        resumed, _, _ = fit(args.device, args.steps, f"{root}/resumed", ckpt_path="last")
        equal = all(torch.equal(a, b) for a, b in zip(whole.parameters(), resumed.parameters(), strict=True))
        rows.append(("exact resume after 7 steps", "torch.equal" if equal else "DIFFERENT", equal))
        timing = overhead(device, args.steps * 10, args.rounds, f"{root}/overhead")
        rows.append(
            (
                f"overhead vs raw {args.device} loop (MLP, {args.steps * 10} steps)",
                f"{timing['ratio']:.3f}x ({timing['tasktrain_steps_per_s']:.0f} vs {timing['raw_steps_per_s']:.0f} steps/s)",
                True,
            )
        )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\n| check on {name}, torch {torch.__version__} | result | ok |\n|---|---|---|")
    for check, result, ok in rows:
        print(f"| {check} | {result} | {'yes' if ok else '**NO**'} |")
    if args.json:
        args.json.write_text(json.dumps([{"check": c, "result": r, "ok": o} for c, r, o in rows], indent=1))
    return 0 if all(ok for _, _, ok in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
