"""``tasktrain plot RUN_DIR [RUN_DIR...]``: learning curves from CSV logs, several runs overlaid.

Metrics that share a last name part go in one panel (``train/loss`` and ``val/loss`` under
"loss"), one line per run and metric. matplotlib is an extra: ``pip install 'tasktrain[plot]'``.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
from collections import defaultdict
from typing import Any

from fsspec.core import url_to_fs

from tasktrain.cli.errors import CLIError

Series = dict[str, list[tuple[int, float]]]  # metric name -> [(step, value)]


def plot_main(argv: list[str]) -> int:
    """Draw every logged metric of the given runs into one PNG.

    Example:
        >>> plot_main(["runs/csv/version_0", "runs/csv/version_1", "--out", "curves.png"])  # doctest: +SKIP
        0
    """
    parser = argparse.ArgumentParser(
        prog="tasktrain plot",
        description="Plot learning curves (every logged metric; several runs overlaid) to a PNG.",
    )
    parser.add_argument(
        "runs", metavar="RUN_DIR", nargs="+", help="a run's log directory, or a folder above it"
    )
    parser.add_argument("--out", default="curves.png", help="the PNG to write (default: curves.png)")
    parser.add_argument("--metrics", nargs="*", default=None, help="only these metrics (default: all)")
    args = parser.parse_args(argv)
    runs = {run: read_metrics(run) for run in args.runs}
    if args.metrics:
        runs = {run: {k: v for k, v in series.items() if k in args.metrics} for run, series in runs.items()}
    if not any(runs.values()):
        raise CLIError(
            f"no metrics to plot in {args.runs}" + (f" matching {args.metrics}" if args.metrics else "")
        )
    path = draw(runs, args.out)
    print(f"wrote {path}")
    return 0


def read_metrics(run: str) -> Series:
    """Every metric in the ``metrics.csv`` files at or below ``run`` (a path or URL)."""
    fs, root = url_to_fs(run)
    root = root.rstrip("/")
    files = [root] if root.endswith(".csv") else sorted(fs.glob(f"{root}/**/metrics.csv"))
    if not files and fs.exists(f"{root}/metrics.csv"):
        files = [f"{root}/metrics.csv"]
    if not files:
        raise CLIError(f"RUN_DIR {run!r}: no metrics.csv at or below it (the CSVLogger writes one per run)")
    series: Series = defaultdict(list)
    for file in files:
        with fs.open(file, "r") as f:
            for row in csv.DictReader(io.StringIO(f.read())):
                step = int(row.pop("step"))
                for name, value in row.items():
                    if value not in ("", None) and math.isfinite(number := float(value)):
                        series[name].append((step, number))
    return dict(series)


def draw(runs: dict[str, Series], out: str) -> str:
    """One panel per metric family, one line per (run, metric); returns the file written."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise CLIError("tasktrain plot needs matplotlib: pip install 'tasktrain[plot]'") from error
    panels: dict[str, list[tuple[str, str, list[tuple[int, float]]]]] = defaultdict(list)
    for run, series in runs.items():
        for name, points in sorted(series.items()):
            panels[name.rsplit("/", 1)[-1]].append((run, name, sorted(points)))
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    for ax, (panel, lines) in zip(axes.flat, sorted(panels.items()), strict=False):
        for run, name, points in lines:
            label = name if len(runs) == 1 else f"{name} ({run})"
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker="o" if len(points) < 20 else None, markersize=3, label=label)
        ax.set_title(panel)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    figure.tight_layout()
    _save(figure, out)
    plt.close(figure)
    return out


def _save(figure: Any, out: str) -> None:
    fs, path = url_to_fs(out)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as f:
        figure.savefig(f, format="png", dpi=100)
