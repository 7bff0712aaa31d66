"""How does ``tasktrain`` DDP on 2 processes compare with hand-written DDP, per step and at start-up?

Usage::

    .venv/bin/python benchmarks/ddp.py                 # full run (about 3-4 minutes)
    .venv/bin/python benchmarks/ddp.py --quick         # smoke run (under a minute), not a measurement
    .venv/bin/python benchmarks/ddp.py --json out.json --check   # exit 1 if a target is missed

Method (docs/benchmarks.md, section "DDP", has the reasoning and the latest numbers):

* **Per step.** One launch of 2 ranks (``tasktrain.strategies.launcher.spawn``, gloo, one torch
  thread per rank). In it, each rank holds two copies of the same network with the same starting
  weights: one wrapped by hand in ``DistributedDataParallel`` and trained by a plain loop
  (``DistributedSampler``, ``set_epoch`` per epoch, ``AdamW``, ``loss.item()`` every 50 steps),
  and one in a ``TaskModule`` trained by a ``Trainer(strategy=DDP())`` (the ranks already exist,
  so nothing is spawned again; logger, progress bar and checkpointing off,
  ``log_every_n_steps=50``). Work comes in blocks of ``K`` optimizer steps; the dataset holds
  exactly ``K`` batches per rank, so a block is one epoch on both sides. The ``Trainer`` is built
  once and reused: each tasktrain block is one ``fit`` call whose ``max_steps`` is ``K`` more than
  the last, so the DDP wrapper is built once, as in the raw loop (``fit``'s own per-call cost is
  timed and reported). Both ranks ``gc.collect()`` and meet at a barrier before a block; a block's
  time runs from that barrier to a barrier after its last step, and is the slower rank's time.
  A round is raw, tasktrain, tasktrain, raw (ABBA); its ratio is ``(tt1 + tt2) / (raw1 + raw2)``;
  warm-up rounds are discarded; the median over rounds is reported with a bootstrap 95% interval,
  quartiles and range, and cross-checks as in ``benchmarks/overhead.py``.
* **Start-up.** Wall time from just before starting a command to the end of the first optimizer
  step on rank 0, for (a) ``python script.py`` whose ``__main__`` calls
  ``Trainer(strategy="ddp", devices=2).fit`` (the launcher spawns the ranks), and (b)
  ``torchrun --standalone --nproc_per_node 2 script.py`` running a hand-written DDP loop. Both
  scripts are written to a temporary directory: the same transformer LM, the same data, three
  steps. Each process appends timestamps (``time.monotonic``, one clock for all processes) to a
  file at fixed points, which gives the first step and a breakdown of where the time goes. The
  two commands alternate (the order flips every round); a warm-up round is discarded; the
  median of the per-round ratios is the headline.
"""

from __future__ import annotations

import argparse
import copy
import gc
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from workloads import (
    D_MODEL,
    HEADS,
    LAYERS,
    LR,
    SEQ,
    VOCAB,
    BenchTask,
    LossFn,
    TinyLM,
    lm_data,
    lm_loss,
    machine,
    make_mlp,
    median_ci95,
    mlp_data,
    mlp_loss,
    spread,
)

import tasktrain as tt
from tasktrain.strategies import DDP
from tasktrain.strategies.launcher import spawn

WORLD_SIZE = 2
LOG_EVERY_N_STEPS = 50
STEP_TARGET = 1.10  # tasktrain DDP step time / hand-written DDP step time, transformer LM
STARTUP_TARGET = 1.2  # tasktrain devices=2 start-up / torchrun start-up
STARTUP_STEPS = 3
ROOT = Path(__file__).resolve().parent.parent

# ------------------------------------------------------------------------------------------------
# The workloads (the start-up scripts embed this source too, see _startup_scripts).
# ------------------------------------------------------------------------------------------------

WORKLOADS: dict[
    str, tuple[Callable[[], nn.Module], LossFn, Callable[[int, torch.Generator], TensorDataset]]
] = {
    "lm": (TinyLM, lm_loss, lm_data),
    "mlp": (make_mlp, mlp_loss, mlp_data),
}


@dataclass(frozen=True)
class Case:
    key: str
    title: str
    workload: str
    batch_size: int  # per rank
    steps_per_block: int
    rounds: int
    budget_s: float  # stop adding rounds after this long (at least a third of ``rounds`` are kept)
    target: float | None  # None: reported, not judged


CASES = (
    Case(
        key="lm",
        title=f"transformer LM {LAYERS}x d{D_MODEL} h{HEADS} seq{SEQ} vocab{VOCAB}, batch 8 per rank",
        workload="lm",
        batch_size=8,
        steps_per_block=5,
        rounds=60,
        budget_s=70.0,
        target=STEP_TARGET,
    ),
    Case(
        key="mlp",
        title="tiny MLP 32-64-1, batch 32 per rank",
        workload="mlp",
        batch_size=32,
        steps_per_block=50,
        rounds=90,
        budget_s=25.0,
        target=None,
    ),
)

# ------------------------------------------------------------------------------------------------
# Per step: both loops inside one launch of 2 ranks.
# ------------------------------------------------------------------------------------------------


def _raw_block(
    net: DistributedDataParallel,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader[Any],
    sampler: DistributedSampler[Any],
    epoch: int,
    loss_fn: LossFn,
) -> None:
    """One epoch of the hand-written DDP loop."""
    sampler.set_epoch(epoch)
    net.train()
    step = 0
    logged = 0
    loss: Tensor | None = None
    for batch in loader:
        loss = loss_fn(net, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % LOG_EVERY_N_STEPS == 0:
            loss.item()
            logged = step
    if loss is not None and logged != step:  # tasktrain reads the loss at the end of an epoch too
        loss.item()


def _timed(block: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall, process CPU, result) of ``block``, from a barrier before it to a barrier after it.

    Process CPU time, not thread time: gloo's collectives run on the process group's own threads.
    """
    gc.collect()
    dist.barrier()
    start, cpu = time.perf_counter(), time.process_time()
    result = block()
    dist.barrier()
    return time.perf_counter() - start, time.process_time() - cpu, result


def _step_worker(
    case: dict[str, Any], rounds: int, steps: int, budget_s: float, warmup: int
) -> dict[str, Any]:
    """One rank of the per-step comparison (run by ``spawn``); rank 0 returns every block's times."""
    dist.init_process_group("gloo")  # from the launcher's MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE
    try:
        with tempfile.TemporaryDirectory(prefix="tasktrain-bench-ddp-") as tmp:
            return _step_rounds(Case(**case), rounds, steps, budget_s, warmup, tmp)
    finally:
        dist.destroy_process_group()


def _step_rounds(
    case: Case, rounds: int, steps: int, budget_s: float, warmup: int, tmp: str
) -> dict[str, Any]:
    rank, world = dist.get_rank(), dist.get_world_size()
    make_net, loss_fn, make_data = WORKLOADS[case.workload]
    torch.manual_seed(0)
    net = make_net()
    data = make_data(steps * case.batch_size * world, torch.Generator().manual_seed(0))  # same on all ranks
    torch.manual_seed(1 + rank)  # dropout draws its own numbers on each rank, as in a real run

    raw_net = DistributedDataParallel(copy.deepcopy(net))
    raw_opt = torch.optim.AdamW(raw_net.parameters(), lr=LR)
    sampler: DistributedSampler[Any] = DistributedSampler(data, world, rank, shuffle=True, seed=0)
    raw_loader = DataLoader(data, batch_size=case.batch_size, sampler=sampler)
    assert len(raw_loader) == steps  # a block is exactly one epoch on both sides

    task = BenchTask(copy.deepcopy(net), loss_fn)
    tt_loader = DataLoader(data, batch_size=case.batch_size, shuffle=True)  # tasktrain shards it
    trainer = tt.Trainer(
        strategy=DDP(accelerator="cpu"),
        max_steps=steps,
        log_every_n_steps=LOG_EVERY_N_STEPS,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        default_root_dir=tmp,
    )
    raw_epochs = 0

    def raw() -> tuple[float, float, float]:
        nonlocal raw_epochs
        wall, cpu, _ = _timed(lambda: _raw_block(raw_net, raw_opt, raw_loader, sampler, raw_epochs, loss_fn))
        raw_epochs += 1
        return wall, cpu, wall

    def tasktrain() -> tuple[float, float, float]:
        trainer.fit_loop.max_steps = trainer.state.global_step + steps  # one more epoch, same Trainer
        wall, cpu, result = _timed(lambda: trainer.fit(task, tt_loader))
        if result.global_step != trainer.fit_loop.max_steps:
            raise RuntimeError(
                f"tasktrain stopped at step {result.global_step}, expected {trainer.fit_loop.max_steps}"
            )
        return wall, cpu, result.metrics["train_runtime"]

    kept: list[tuple[tuple[float, ...], ...]] = []
    min_rounds = max(3, rounds // 3)
    gc.collect()
    gc.freeze()  # everything alive now is never scanned again: gc.collect() between blocks is cheap
    started = time.perf_counter()
    for r in range(warmup + rounds):
        a1, b1, b2, a2 = raw(), tasktrain(), tasktrain(), raw()
        if r < warmup:
            started = time.perf_counter()
            continue
        kept.append((a1, b1, b2, a2))
        # Rank 0 decides when the budget is spent, so both ranks run the same number of rounds.
        stop = [time.perf_counter() - started > budget_s and len(kept) >= min_rounds]
        dist.broadcast_object_list(stop, src=0)
        if stop[0]:
            break
    gc.unfreeze()

    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, kept)
    # A block's time is its slowest rank's (the barriers make the two nearly equal anyway).
    merged = [
        [[max(per_rank[i][j][k] for per_rank in gathered) for k in range(3)] for j in range(4)]
        for i in range(len(kept))
    ]
    # Same start, same shards in the same order, same optimizer: without dropout (the MLP) both
    # sides must end with identical weights, which shows they did the same work.
    same = all(
        torch.equal(p, q) for p, q in zip(raw_net.module.parameters(), task.net.parameters(), strict=True)
    )
    return {"rounds": merged, "parameters": sum(p.numel() for p in net.parameters()), "weights_equal": same}


def run_case(case: Case, rounds: int, steps: int, budget_s: float, warmup: int) -> dict[str, Any]:
    started = time.perf_counter()
    out = spawn(_step_worker, (asdict(case), rounds, steps, budget_s, warmup), nprocs=WORLD_SIZE)
    seconds = time.perf_counter() - started
    kept = [tuple(tuple(block) for block in r) for r in out["rounds"]]
    raw_wall = [t[0] for a1, _, _, a2 in kept for t in (a1, a2)]
    tt_wall = [t[0] for _, b1, b2, _ in kept for t in (b1, b2)]
    ratios = [(b1[0] + b2[0]) / (a1[0] + a2[0]) for a1, b1, b2, a2 in kept]
    ratio = {**spread(ratios), "median_ci95": median_ci95(ratios)}
    return {
        "key": case.key,
        "title": case.title,
        "parameters": out["parameters"],
        "batch_size_per_rank": case.batch_size,
        "world_size": WORLD_SIZE,
        "steps_per_block": steps,
        "rounds": len(kept),
        "warmup_rounds": warmup,
        "seconds": seconds,
        "target": case.target,
        "ratio": ratio,
        "passed": None if case.target is None else ratio["median"] <= case.target,
        "cpu_ratio": spread([(b1[1] + b2[1]) / (a1[1] + a2[1]) for a1, b1, b2, a2 in kept]),
        "best_block_ratio": min(tt_wall) / min(raw_wall),
        "loop_ratio": spread([(b1[2] + b2[2]) / (a1[0] + a2[0]) for a1, b1, b2, a2 in kept]),
        "overhead_us_per_step": spread(
            [((b1[0] + b2[0]) - (a1[0] + a2[0])) / (2 * steps) * 1e6 for a1, b1, b2, a2 in kept]
        ),
        "fit_fixed_ms": statistics.median([(b[0] - b[2]) * 1e3 for _, b1, b2, _ in kept for b in (b1, b2)]),
        "noise_raw_ratio": spread([a2[0] / a1[0] for a1, _, _, a2 in kept]),
        "raw_steps_per_s": spread([steps / t for t in raw_wall]),
        "tasktrain_steps_per_s": spread([steps / t for t in tt_wall]),
        "weights_equal_at_end": out["weights_equal"],
    }


# ------------------------------------------------------------------------------------------------
# Start-up: a fresh command each time, to the first optimizer step.
# ------------------------------------------------------------------------------------------------

_PROLOGUE = '''\
import os
import time


def _mark(label: str) -> None:
    """Append "label role pid rank time" to the timeline file (one monotonic clock for all processes)."""
    role = "launcher" if __name__ == "__main__" and "RANK" not in os.environ else "rank"
    with open(os.environ["DDP_BENCH_TIMELINE"], "a") as f:
        f.write(f"{label} {role} {os.getpid()} {os.environ.get('RANK', '-')} {time.monotonic()!r}\\n")


_mark("script_start")
'''

_COMMON = """
VOCAB, SEQ, D_MODEL, HEADS, LAYERS = {VOCAB}, {SEQ}, {D_MODEL}, {HEADS}, {LAYERS}
BATCH, STEPS, LR = 8, {STEPS}, {LR}


{TinyLM}

def lm_loss(net, batch):
    (tokens,) = batch
    logits = net(tokens[:, :-1])
    return F.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))


def make_data():
    gen = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randint(0, VOCAB, (BATCH * 2 * STEPS, SEQ + 1), generator=gen))
"""

_TASKTRAIN_SCRIPT = """
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt

_mark("imports_done")
{COMMON}

class LM(tt.TaskModule):
    def __init__(self):
        super().__init__()
        self.net = TinyLM()

    def configure_model(self):  # runs on each rank right after the process group is set up
        _mark("process_group_ready")

    def compute_loss(self, batch):
        return lm_loss(self.net, batch)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=LR)


class Timeline(tt.callbacks.Callback):
    def __init__(self):
        self.name = "timeline"  # a non-empty __dict__, so unpickling calls __setstate__

    def __setstate__(self, state):  # unpickled in a spawned rank: the launcher's payload arrived
        self.__dict__.update(state)
        _mark("payload_loaded")

    def on_fit_start(self, trainer, module):
        _mark("fit_start")

    def on_train_step_end(self, trainer, module):
        if trainer.state.global_step == 1 and trainer.is_global_zero:
            _mark("first_step")


if __name__ == "__main__":
    torch.manual_seed(0)
    trainer = tt.Trainer(
        strategy="ddp",
        devices=2,
        accelerator="cpu",
        max_steps=STEPS,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        callbacks=[Timeline()],
        default_root_dir=os.environ["DDP_BENCH_ROOT"],
    )
    loader = DataLoader(make_data(), batch_size=BATCH, shuffle=True)
    _mark("fit_call")
    trainer.fit(LM(), loader)
    _mark("fit_returned")
"""

_TORCHRUN_SCRIPT = """
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

_mark("imports_done")
{COMMON}

def main():
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    _mark("process_group_ready")
    rank = dist.get_rank()
    torch.manual_seed(0)
    net = DistributedDataParallel(TinyLM())
    optimizer = torch.optim.AdamW(net.parameters(), lr=LR)
    data = make_data()
    sampler = DistributedSampler(data, dist.get_world_size(), rank, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=BATCH, sampler=sampler)
    _mark("fit_start")
    sampler.set_epoch(0)
    for step, batch in enumerate(loader, start=1):
        loss = lm_loss(net, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step == 1 and rank == 0:
            _mark("first_step")
    loss.item()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    _mark("fit_returned")
"""


def _startup_scripts(directory: Path) -> dict[str, list[str]]:
    """Write the two scripts; return the command of each side."""
    common = _COMMON.format(
        VOCAB=VOCAB,
        SEQ=SEQ,
        D_MODEL=D_MODEL,
        HEADS=HEADS,
        LAYERS=LAYERS,
        STEPS=STARTUP_STEPS,
        LR=LR,
        TinyLM=textwrap.dedent(inspect.getsource(TinyLM)),
    )
    tasktrain_py = directory / "tasktrain_ddp.py"
    torchrun_py = directory / "torchrun_ddp.py"
    tasktrain_py.write_text(_PROLOGUE + _TASKTRAIN_SCRIPT.format(COMMON=common))
    torchrun_py.write_text(_PROLOGUE + _TORCHRUN_SCRIPT.format(COMMON=common))
    torchrun = Path(sys.executable).with_name("torchrun")
    return {
        "tasktrain": [sys.executable, str(tasktrain_py)],
        "torchrun": [str(torchrun), "--standalone", "--nproc_per_node", str(WORLD_SIZE), str(torchrun_py)],
    }


_DISPLAY = {
    "tasktrain": "python tasktrain_ddp.py  (Trainer(strategy='ddp', devices=2).fit)",
    "torchrun": f"torchrun --standalone --nproc_per_node {WORLD_SIZE} torchrun_ddp.py  (hand-written DDP)",
}

# The points of each side's timeline, in order. A point that several processes reach is taken at
# the first ("first") or the last ("last") process to reach it: the first step waits for the slowest.
_PHASES = {
    "tasktrain": (
        ("launcher:script_start:last", "python starts the script"),
        ("launcher:imports_done:last", "launcher: import torch, tasktrain"),
        ("launcher:fit_call:last", "launcher: build Trainer, data; call fit"),
        ("rank:script_start:first", "spawn: first rank's interpreter reaches the script"),
        ("rank:script_start:last", "spawn: last rank's interpreter reaches the script"),
        ("rank:imports_done:last", "ranks: re-import the script (torch, tasktrain)"),
        ("rank:payload_loaded:last", "ranks: unpickle the launcher's payload"),
        ("rank:process_group_ready:last", "ranks: init_process_group"),
        ("rank:fit_start:last", "ranks: DDP wrap (imports torch._dynamo), sampler, optimizer"),
        ("rank:first_step:last", "first optimizer step"),
        (
            "launcher:fit_returned:last",
            f"{STARTUP_STEPS - 1} more steps; ranks save the result, exit; fit returns",
        ),
        ("exit", "the launcher exits"),
    ),
    "torchrun": (
        ("rank:script_start:first", "torchrun: import, rendezvous, first rank reaches the script"),
        ("rank:script_start:last", "torchrun: last rank reaches the script"),
        ("rank:imports_done:last", "ranks: import torch"),
        ("rank:process_group_ready:last", "ranks: init_process_group"),
        ("rank:fit_start:last", "ranks: build model, DDP wrap (imports torch._dynamo), sampler, optimizer"),
        ("rank:first_step:last", "first optimizer step"),
        ("rank:fit_returned:last", f"{STARTUP_STEPS - 1} more steps; destroy_process_group"),
        ("exit", "the ranks exit; torchrun notices and exits"),
    ),
}


def _launch(command: list[str], root: Path) -> dict[str, Any]:
    """Run one command; return its time to the first step, to exit, and its timeline."""
    timeline = root / "timeline.txt"
    timeline.unlink(missing_ok=True)
    env = {**os.environ, "DDP_BENCH_TIMELINE": str(timeline), "DDP_BENCH_ROOT": str(root)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    gc.collect()
    start = time.monotonic()
    proc = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True)
    exited = time.monotonic() - start
    lines = timeline.read_text().splitlines() if timeline.exists() else []
    done = any(line.startswith("fit_returned launcher") for line in lines) or (
        sum(line.startswith("fit_returned rank") for line in lines) == WORLD_SIZE
    )
    # A crash after the work was done (torch's gloo teardown at interpreter exit aborts a rank now
    # and then: "terminate called without an active exception") does not void the start-up time.
    if proc.returncode != 0 and not done:
        raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    points: dict[str, float] = {}
    for line in lines:
        label, role, _pid, _rank, stamp = line.split()
        at = float(stamp) - start
        first, last = f"{role}:{label}:first", f"{role}:{label}:last"
        points[first] = min(points.get(first, at), at)
        points[last] = max(points.get(last, at), at)
    points["exit"] = exited
    return {
        "first_step_s": points["rank:first_step:last"],
        "exit_s": exited,
        "exit_code": proc.returncode,
        "points": points,
    }


def startup(rounds: int, warmup: int) -> dict[str, Any]:
    results: dict[str, list[dict[str, Any]]] = {"tasktrain": [], "torchrun": []}
    with tempfile.TemporaryDirectory(prefix="tasktrain-bench-ddp-") as tmp:
        root = Path(tmp)
        commands = _startup_scripts(root)
        for r in range(warmup + rounds):
            order = ("tasktrain", "torchrun") if r % 2 == 0 else ("torchrun", "tasktrain")
            print(f"  start-up round {r + 1}/{warmup + rounds} ...", file=sys.stderr, flush=True)
            runs = {side: _launch(commands[side], root) for side in order}
            if r >= warmup:
                for side, run in runs.items():
                    results[side].append(run)
    ratios = [
        a["first_step_s"] / b["first_step_s"]
        for a, b in zip(results["tasktrain"], results["torchrun"], strict=True)
    ]
    ratio = {**spread(ratios), "median_ci95": median_ci95(ratios)}
    report: dict[str, Any] = {
        "rounds": rounds,
        "warmup_rounds": warmup,
        "steps": STARTUP_STEPS,
        "target": STARTUP_TARGET,
        "ratio": ratio,
        "passed": ratio["median"] <= STARTUP_TARGET,
        "sides": {},
    }
    for side, runs in results.items():
        phases = []
        previous: str | None = None
        for key, description in _PHASES[side]:
            ends = [run["points"][key] for run in runs]
            starts = [0.0 if previous is None else run["points"][previous] for run in runs]
            phases.append(
                {
                    "point": key,
                    "what": description,
                    "at_s": statistics.median(ends),
                    "duration_s": statistics.median([e - s for e, s in zip(ends, starts, strict=True)]),
                }
            )
            previous = key
        report["sides"][side] = {
            "command": _DISPLAY[side],
            "first_step_s": spread([run["first_step_s"] for run in runs]),
            "exit_s": spread([run["exit_s"] for run in runs]),
            "crashed_at_exit": sum(run["exit_code"] != 0 for run in runs),
            "phases": phases,
        }
    return report


# ------------------------------------------------------------------------------------------------
# Statistics and report.
# ------------------------------------------------------------------------------------------------


def _verdict(passed: bool | None, quick: bool) -> str:
    if passed is None:
        return "-"
    if quick:
        return "smoke"
    return "PASS" if passed else "MISS"


def print_report(results: dict[str, Any]) -> None:
    m = results["machine"]
    load = ", ".join(f"{x:.1f}" for x in m["load_average"])
    print(
        f"\ntasktrain {m['tasktrain']} at {m['commit'] or '?'}{' (src modified)' if m['src_dirty'] else ''}; "
        f"{m['cpu']}, {m['cpu_count']} CPUs (load {load}), torch {m['torch']}, python {m['python']}; "
        f"{WORLD_SIZE} ranks, gloo, 1 torch thread each"
        f"{'  [--quick: smoke run, not a measurement]' if results['quick'] else ''}"
    )
    if results["cases"]:
        header = (
            f"{'case':<4} {'K':>4} {'rounds':>6}  {'tt/raw':>6}  {'95% CI':>11}  {'IQR':>11}  {'min-max':>11}  "
            f"{'raw steps/s':>11}  {'tt steps/s':>10}  {'target':>6}  result"
        )
        print("\nper step: tasktrain Trainer(strategy=DDP()) vs hand-written DDP loop, same 2 ranks")
        print(header)
        print("-" * len(header))
        for c in results["cases"]:
            r = c["ratio"]
            target = f"{c['target']:.2f}" if c["target"] is not None else "-"
            print(
                f"{c['key']:<4} {c['steps_per_block']:>4} {c['rounds']:>6}  {r['median']:>6.3f}  "
                f"{r['median_ci95'][0]:.3f}-{r['median_ci95'][1]:.3f}  "
                f"{r['q1']:.3f}-{r['q3']:.3f}  {r['min']:.3f}-{r['max']:.3f}  "
                f"{c['raw_steps_per_s']['median']:>11.1f}  {c['tasktrain_steps_per_s']['median']:>10.1f}  "
                f"{target:>6}  {_verdict(c['passed'], results['quick'])}"
            )
        header = (
            f"\n{'case':<4}  {'cpu-time':>8}  {'best-block':>10}  {'loop-only':>9}  {'+us/step':>8}  "
            f"{'fit fixed':>9}  {'A/A noise IQR':>13}"
        )
        print(header)
        print("-" * (len(header) - 1))
        for c in results["cases"]:
            noise = c["noise_raw_ratio"]
            print(
                f"{c['key']:<4}  {c['cpu_ratio']['median']:>8.3f}  {c['best_block_ratio']:>10.3f}  "
                f"{c['loop_ratio']['median']:>9.3f}  {c['overhead_us_per_step']['median']:>8.1f}  "
                f"{c['fit_fixed_ms']:>7.2f}ms  {noise['q1']:>6.3f}-{noise['q3']:.3f}"
            )
        print(
            "tt/raw: median over rounds (raw,tt,tt,raw) of wall-clock tasktrain / raw, a block's time being its"
            "\nslower rank's; K: steps per block (= one epoch per rank); steps/s: median over blocks;"
            "\ncpu-time: the ratio in process CPU time (both ranks' max); best-block: fastest tt / fastest raw;"
            "\nloop-only: FitResult train_runtime / raw; fit fixed: fit() wall minus train_runtime, per call;"
            "\nA/A noise: raw block 2 / raw block 1 of a round."
        )
        for c in results["cases"]:
            same = "identical" if c["weights_equal_at_end"] else "different"
            print(
                f"  ({c['key']}) {c['title']}, {c['parameters']:,} parameters; "
                f"final weights of the two sides: {same}"
            )
        if any(not c["weights_equal_at_end"] for c in results["cases"]):
            print("  (weights differ with dropout: its masks come from one RNG stream the two sides share)")
    s = results.get("startup")
    if s:
        r = s["ratio"]
        print(
            f"\nstart-up to the first optimizer step ({s['rounds']} rounds, order alternating, "
            f"{s['warmup_rounds']} warm-up discarded)"
        )
        header = f"{'side':<10} {'first step (median)':>19} {'min-max':>13} {'exit (median)':>13}  command"
        print(header)
        print("-" * len(header))
        for side, v in s["sides"].items():
            fs, ex = v["first_step_s"], v["exit_s"]
            crashed = (
                f" [crashed at exit after the work: {v['crashed_at_exit']}x]" if v["crashed_at_exit"] else ""
            )
            print(
                f"{side:<10} {fs['median']:>17.2f} s {fs['min']:>5.2f}-{fs['max']:<5.2f}s "
                f"{ex['median']:>11.2f} s  {v['command']}{crashed}"
            )
        print(
            f"tasktrain / torchrun: median of per-round ratios {r['median']:.3f} "
            f"(95% CI {r['median_ci95'][0]:.3f}-{r['median_ci95'][1]:.3f}, range {r['min']:.3f}-{r['max']:.3f}), "
            f"target <= {s['target']}: {_verdict(s['passed'], results['quick'])}"
        )
        for side, v in s["sides"].items():
            print(f"  where {side}'s time goes (medians; 'at' from the command's start):")
            for p in v["phases"]:
                print(f"    {p['duration_s']:6.2f} s  (at {p['at_s']:5.2f} s)  {p['what']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few rounds: a smoke test, not a measurement")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this path")
    parser.add_argument(
        "--cases", default="lm,mlp", help="per-step cases to run, comma-separated (default lm,mlp)"
    )
    parser.add_argument("--no-startup", action="store_true", help="skip the start-up measurement")
    parser.add_argument(
        "--startup-rounds", type=int, default=5, help="start-up rounds after warm-up (default 5)"
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when a target is missed (not with --quick)"
    )
    args = parser.parse_args(argv)

    results: dict[str, Any] = {"quick": args.quick, "machine": machine(), "cases": []}
    wanted = args.cases.split(",") if args.cases else []
    for case in CASES:
        if case.key not in wanted:
            continue
        if args.quick:
            steps = max(2, case.steps_per_block // 5)
            rounds, budget, warmup = 3, 5.0, 1
        else:
            steps, rounds, budget, warmup = case.steps_per_block, case.rounds, case.budget_s, 2
        print(f"per step, {case.key}: {case.title} ...", file=sys.stderr, flush=True)
        results["cases"].append(run_case(case, rounds, steps, budget, warmup))
    if not args.no_startup:
        print("start-up ...", file=sys.stderr, flush=True)
        results["startup"] = startup(2 if args.quick else args.startup_rounds, 0 if args.quick else 1)
    results["machine"]["load_average_end"] = os.getloadavg()

    print_report(results)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    missed = [c["key"] for c in results["cases"] if c["passed"] is False]
    if "startup" in results and not results["startup"]["passed"]:
        missed.append("startup")
    return 1 if args.check and missed and not args.quick else 0


if __name__ == "__main__":
    sys.exit(main())
