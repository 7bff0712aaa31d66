"""How long does the ``tasktrain`` command take to answer ``--help``, next to ``import torch``?

Usage::

    .venv/bin/python benchmarks/cli_startup.py                 # 9 rounds, about 1.5 minutes on 2 CPUs
    .venv/bin/python benchmarks/cli_startup.py --rounds 5      # quicker, noisier
    .venv/bin/python benchmarks/cli_startup.py --json out.json --check   # exit 1 if a target is missed

Method: every measurement is a fresh interpreter, timed from ``subprocess`` start to exit
(wall clock), so it includes interpreter start-up, imports and building the parser, as a user
sees it. A round runs each command once, in an order that rotates from round to round, so a
drift of the machine's speed touches every command alike; one untimed warm-up round fills the
file-system cache first. Reported: the median and the fastest of the rounds per command, and the
median of the per-round differences to ``python -c "import torch"`` (the floor every command
pays, since ``import tasktrain`` imports torch).

Targets: ``tasktrain --help`` and ``tasktrain fit --help`` add at most 1.0 s to ``import torch``.
``fit --task examples/digits.py --help`` is reported for information: it also imports the
task's file (and its torchmetrics and scikit-learn imports).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 1.0


def tasktrain_command() -> list[str]:
    """The console script next to this interpreter (what users run), else ``python -m tasktrain``."""
    script = Path(sys.executable).with_name("tasktrain")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "tasktrain"]


def commands() -> dict[str, tuple[list[str], bool]]:
    """``name: (argv, has a target)``."""
    cli = tasktrain_command()
    return {
        "import torch": ([sys.executable, "-c", "import torch"], False),
        "tasktrain --help": ([*cli, "--help"], True),
        "tasktrain fit --help": ([*cli, "fit", "--help"], True),
        "tasktrain fit --task examples/digits.py --help": (
            [*cli, "fit", "--task", "examples/digits.py", "--help"],
            False,
        ),
    }


def time_once(argv: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr}")
    return seconds


def measure(rounds: int) -> dict[str, list[float]]:
    todo = commands()
    names = list(todo)
    for name in names:  # warm-up: file-system cache, .pyc files
        time_once(todo[name][0])
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(time_once(todo[name][0]))
    return times


def summarize(times: dict[str, list[float]]) -> dict[str, dict[str, float | bool | None]]:
    floor = times["import torch"]
    summary: dict[str, dict[str, float | bool | None]] = {}
    for name, (_, has_target) in commands().items():
        values = times[name]
        extra = statistics.median(t - f for t, f in zip(values, floor, strict=True))
        summary[name] = {
            "median_s": statistics.median(values),
            "min_s": min(values),
            "extra_over_import_torch_s": None if name == "import torch" else extra,
            "target_met": (extra <= TARGET_S) if has_target else None,
        }
    return summary


def report(summary: dict[str, dict[str, float | bool | None]], rounds: int) -> None:
    print(
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs, {rounds} rounds"
    )
    print(f"{'command':<50} {'median':>8} {'fastest':>8} {'+ torch':>8}  target (+ <= {TARGET_S:.1f} s)")
    for name, row in summary.items():
        extra = row["extra_over_import_torch_s"]
        met = row["target_met"]
        verdict = "" if met is None else ("met" if met else "MISSED")
        shown = "" if extra is None else f"{extra:+.2f}"
        print(f"{name:<50} {row['median_s']:>7.2f}s {row['min_s']:>7.2f}s {shown:>8}  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=9, help="timed runs of each command (default 9)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    times = measure(args.rounds)
    summary = summarize(times)
    report(summary, args.rounds)
    if args.json:
        args.json.write_text(
            json.dumps({"rounds": args.rounds, "times_s": times, "summary": summary}, indent=2)
        )
    if args.check and any(row["target_met"] is False for row in summary.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
