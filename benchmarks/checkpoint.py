"""Checkpoint save/load time and peak extra memory, tasktrain vs. torch.save/torch.load.

Each measurement runs in a fresh subprocess, so peak memory (VmHWM, reset through
/proc/self/clear_refs just before the operation) belongs to that operation alone. tasktrain and
torch alternate, round after round, and the median paired ratio is reported.

Also measures the time to the first resumed batch of a 1,000,000-sample epoch at different
positions: it must not grow with the position (skipped samples are never loaded).

Run:  .venv/bin/python benchmarks/checkpoint.py [--params 100_000_000] [--rounds 5] [--json out.json]
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

CHILD = r"""
import json, os, sys, time, torch
from safetensors.torch import load_file
import tasktrain
from tasktrain.checkpoint.format import save_checkpoint, read_weights
from tasktrain.checkpoint.storage import verify

op, path, n_params, shard = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
width = 4096
rows = n_params // width
weights = {f"layer{i}.weight": torch.randn(min(1024, rows - i * 1024), width) for i in range((rows + 1023) // 1024)}

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

before = rss("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak-RSS counter
start = time.perf_counter()
if op == "save_tasktrain":
    save_checkpoint(path, weights, {}, {"global_step": 0}, max_shard_bytes=shard)
elif op == "save_torch":
    torch.save(weights, path)
else:  # load into the existing tensors, as loading a model's state_dict does
    before = rss("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = time.perf_counter()
    if op == "load_tasktrain":  # as load_from_checkpoint and fit(ckpt_path=...) do: verify, then read
        verify(path)
        verify_seconds = time.perf_counter() - start
        loaded = read_weights(path)
    else:
        loaded = torch.load(path, weights_only=True)
    with torch.no_grad():
        for name, tensor in weights.items():
            tensor.copy_(loaded[name])
seconds = time.perf_counter() - start
result = {"seconds": seconds, "extra_bytes": rss("VmHWM:") - before}
if op == "load_tasktrain":
    result["verify_seconds"] = verify_seconds
print(json.dumps(result))
"""

RESUME_CHILD = r"""
import sys, time, torch
from torch.utils.data import DataLoader, Dataset
from tasktrain.data import skip_batches

class Counting(Dataset):
    def __init__(self, n): self.n, self.fetched = n, 0
    def __len__(self): return self.n
    def __getitem__(self, i):
        self.fetched += 1
        return torch.tensor([float(i)])

skip = int(sys.argv[1])
ds = Counting(1_000_000)
loader = DataLoader(ds, batch_size=32, shuffle=True)
start = time.perf_counter()
first = next(iter(skip_batches(loader, skip)))
print(time.perf_counter() - start, ds.fetched)
"""


def run_child(op: str, path: str, params: int, shard: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, op, path, str(params), str(shard)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", type=int, default=100_000_000)
    parser.add_argument("--shard-mb", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    shard = args.shard_mb * 1024**2
    results: dict[str, list[dict[str, float]]] = {
        k: [] for k in ("save_tasktrain", "save_torch", "load_tasktrain", "load_torch")
    }
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            # Fresh names every round, as ModelCheckpoint writes them; the old ones are removed
            # outside the timed region (deleting 400 MB is not part of either save).
            ours, theirs = os.path.join(tmp, f"ckpt-{i}"), os.path.join(tmp, f"weights-{i}.pt")
            # Alternate who goes first: a save leaves dirty pages that slow the next one down.
            order = [("tasktrain", ours), ("torch", theirs)][:: 1 if i % 2 == 0 else -1]
            for kind in ("save", "load"):
                for who, path in order:
                    results[f"{kind}_{who}"].append(run_child(f"{kind}_{who}", path, args.params, shard))
            shutil.rmtree(ours)
            os.remove(theirs)
    mb = args.params * 4 / 1024**2
    print(
        f"model: {args.params:,} fp32 parameters ({mb:.0f} MiB), shard size {args.shard_mb} MiB, {args.rounds} rounds"
    )
    summary: dict[str, object] = {"params": args.params, "shard_mb": args.shard_mb}
    for kind in ("save", "load"):
        ours_t = [r["seconds"] for r in results[f"{kind}_tasktrain"]]
        torch_t = [r["seconds"] for r in results[f"{kind}_torch"]]
        ratios = [a / b for a, b in zip(ours_t, torch_t, strict=True)]
        extra = statistics.median(r["extra_bytes"] for r in results[f"{kind}_tasktrain"]) / 1024**2
        extra_torch = statistics.median(r["extra_bytes"] for r in results[f"{kind}_torch"]) / 1024**2
        print(
            f"{kind}: tasktrain {statistics.median(ours_t):.3f}s  torch {statistics.median(torch_t):.3f}s  "
            f"ratio median {statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f})  "
            f"peak extra memory tasktrain {extra:.0f} MiB, torch {extra_torch:.0f} MiB"
        )
        summary[kind] = {
            "tasktrain_s": statistics.median(ours_t),
            "torch_s": statistics.median(torch_t),
            "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "extra_mib_tasktrain": extra,
            "extra_mib_torch": extra_torch,
        }
    verify_s = statistics.median(r["verify_seconds"] for r in results["load_tasktrain"])
    print(f"load: of which checksum verification {verify_s:.3f}s")
    summary["load_verify_s"] = verify_s
    positions = {}
    for skip in (0, 10_000, 31_000):
        out = subprocess.run(
            [sys.executable, "-c", RESUME_CHILD, str(skip)], check=True, capture_output=True, text=True
        )
        seconds, fetched = out.stdout.split()
        positions[skip] = {"seconds": float(seconds), "samples_fetched": int(fetched)}
        print(
            f"resume at batch {skip:>6} of 31250: first batch after {float(seconds) * 1e3:.0f} ms, samples loaded {fetched}"
        )
    summary["resume_first_batch"] = positions
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
