"""Resuming a big AdamW run: restore time and peak extra memory against ``torch.load`` of its optimizer file.

A stack of ``nn.Linear(4096, 4096)`` layers (16.8M parameters each; 12 layers ≈ 201M) trained one
AdamW step is saved once as a tasktrain checkpoint (weights 0.8 GB, ``optimizer.pt`` 1.6 GB).
Then, round after round, each in a fresh process (peak memory is VmHWM, reset through
/proc/self/clear_refs just before the operation, minus VmRSS at that moment):

- ``torch.load``: ``torch.load(optimizer.pt, weights_only=True, map_location="cpu")`` alone;
- ``restore``: what ``Trainer.fit(ckpt_path=...)`` does before its first step,
  ``checkpoint.manager.load`` (verify every checksum, read weights and optimizer state, load them
  into a freshly built module and AdamW); ``+touch`` is the peak after then reading every state
  tensor once, as the first optimizer step does (memory-mapped state is paged in then);
- ``save SGD`` / ``save AdamW``: ``checkpoint.manager.save`` of the module with a state-less SGD,
  and with the restored AdamW.

``--before SRC`` runs the restore and saves also with the tasktrain sources at ``SRC`` (e.g. a
``git archive`` of an older commit), alternating with the current ones.

Run:  .venv/bin/python benchmarks/resume.py [--layers 12] [--rounds 3] [--before /tmp/old/src] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import torch
from torch import nn
from tasktrain.checkpoint import manager
from tasktrain.strategies import SingleDevice

op, path, layers = sys.argv[2], sys.argv[3], int(sys.argv[4])

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

def build():
    with torch.device("meta"):
        net = nn.Sequential(*[nn.Linear(4096, 4096) for _ in range(layers)])
    net = net.to_empty(device="cpu")
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.01)  # touch every page: the weights are resident, as in a real run
    return net

def reset():
    before = rss("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return before, time.perf_counter()

strategy = SingleDevice("cpu")
net = build()
result = {}
if op == "setup":
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    manager.save(path, {}, net, [opt], strategy, {"global_step": 1})
elif op == "torch_load":
    before, start = reset()
    state = torch.load(f"{path}/optimizer.pt", weights_only=True, map_location="cpu")
    result = {"seconds": time.perf_counter() - start, "extra_bytes": rss("VmHWM:") - before}
elif op in ("restore", "save_adamw"):
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    before, start = reset()
    manager.load(path, {}, net, [opt], strategy)
    seconds = time.perf_counter() - start
    extra = rss("VmHWM:") - before
    total = sum(float(t.sum()) for s in opt.state.values() for t in s.values())  # page everything in
    result = {"seconds": seconds, "extra_bytes": extra, "touched_bytes": rss("VmHWM:") - before}
    if op == "save_adamw":
        before, start = reset()
        manager.save(path + "-resaved", {}, net, [opt], strategy, {"global_step": 1})
        result = {"seconds": time.perf_counter() - start, "extra_bytes": rss("VmHWM:") - before}
elif op == "save_sgd":
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before, start = reset()
    manager.save(path, {}, net, [opt], strategy, {"global_step": 1})
    result = {"seconds": time.perf_counter() - start, "extra_bytes": rss("VmHWM:") - before}
print(json.dumps(result))
"""

MIB = 1024**2


def run_child(src: str, op: str, path: str, layers: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, src, op, path, str(layers)], check=True, capture_output=True, text=True
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", default=None, help="tasktrain sources (a src/ folder) to compare against")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    sides = {"after": str(Path(__file__).resolve().parents[1] / "src")}
    if args.before:
        sides = {"before": args.before, **sides}
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "ckpt")
        run_child(sides["after"], "setup", ckpt, args.layers)
        for i in range(args.rounds):
            names = list(sides)[:: 1 if i % 2 == 0 else -1]  # alternate who goes first
            results.setdefault("torch_load", []).append(
                run_child(sides["after"], "torch_load", ckpt, args.layers)
            )
            for op in ("restore", "save_sgd", "save_adamw"):
                for side in names:
                    target = ckpt if op != "save_sgd" else os.path.join(tmp, f"sgd-{side}-{i}")
                    results.setdefault(f"{op}_{side}", []).append(
                        run_child(sides[side], op, target, args.layers)
                    )
                    shutil.rmtree(os.path.join(tmp, f"sgd-{side}-{i}"), ignore_errors=True)
                    shutil.rmtree(ckpt + "-resaved", ignore_errors=True)
    params = args.layers * (4096 * 4096 + 4096)
    print(
        f"model: {args.layers} x Linear(4096, 4096) = {params:,} fp32 parameters, AdamW; {args.rounds} rounds"
    )
    summary: dict[str, object] = {"params": params, "rounds": args.rounds}
    base = results["torch_load"]
    base_s = statistics.median(r["seconds"] for r in base)
    base_mib = statistics.median(r["extra_bytes"] for r in base) / MIB
    for name, runs in results.items():
        seconds = [r["seconds"] for r in runs]
        row: dict[str, float] = {
            "seconds_median": statistics.median(seconds),
            "seconds_min": min(seconds),
            "seconds_max": max(seconds),
            "extra_mib_median": statistics.median(r["extra_bytes"] for r in runs) / MIB,
            "extra_mib_max": max(r["extra_bytes"] for r in runs) / MIB,
        }
        line = (
            f"{name:<18} {row['seconds_median']:6.2f}s ({row['seconds_min']:.2f}-{row['seconds_max']:.2f})"
            f"  peak extra {row['extra_mib_median']:6.0f} MiB (max {row['extra_mib_max']:.0f})"
        )
        if name.startswith("restore"):
            row["time_vs_torch_load"] = row["seconds_median"] / base_s
            row["memory_vs_torch_load"] = row["extra_mib_median"] / base_mib
            row["touched_mib_median"] = statistics.median(r["touched_bytes"] for r in runs) / MIB
            line += (
                f"  = {row['time_vs_torch_load']:.2f}x time, {row['memory_vs_torch_load']:.2f}x memory of torch.load;"
                f" +touch {row['touched_mib_median']:.0f} MiB"
            )
        print(line)
        summary[name] = row
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
