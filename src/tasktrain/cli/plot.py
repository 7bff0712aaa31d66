"""``tasktrain plot DIR [DIR...]``: learning curves from CSV logs, one line per run.

A run is a folder holding a ``metrics.csv`` (the CSVLogger writes
``{root_dir}/{name}/version_N/metrics.csv``); every run at or below each DIR is found. Each
metric gets its own panel, with one line per run, labelled by the run's path with the leading
folders that all runs share left out (``csv/version_0`` and ``csv/version_1`` become
``version_0`` and ``version_1``). matplotlib is an extra: ``pip install 'tasktrain[plot]'``.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import fsspec
from fsspec.core import url_to_fs

from tasktrain.cli.errors import CLIError

if TYPE_CHECKING:  # matplotlib is optional and imported only when drawing
    from matplotlib.figure import Figure

Series = dict[str, list[tuple[int, float]]]  # metric name -> [(step, value)]


def plot_main(argv: list[str]) -> int:
    """Draw every logged metric of every run below the given folders into one PNG.

    Example:
        >>> plot_main(["runs", "--out", "curves.png"])  # doctest: +SKIP
        wrote curves.png: 2 runs (version_0, version_1), 4 metrics
        0
    """
    parser = argparse.ArgumentParser(
        prog="tasktrain plot",
        description="Plot learning curves (one panel per metric, one line per run) to a PNG.",
    )
    parser.add_argument(
        "dirs",
        metavar="DIR",
        nargs="+",
        help="a run's log folder or any folder above runs (each folder holding a metrics.csv is a run)",
    )
    parser.add_argument("--out", default="curves.png", help="the PNG to write (default: curves.png)")
    parser.add_argument("--metrics", nargs="*", default=None, help="only these metrics (default: all)")
    args = parser.parse_args(argv)
    runs = collect_runs(args.dirs, args.metrics)
    path = draw(runs, args.out)
    metrics = {name for series in runs.values() for name in series}
    print(f"wrote {path}: {_count(len(runs), 'run')} ({', '.join(runs)}), {_count(len(metrics), 'metric')}")
    return 0


def collect_runs(dirs: Sequence[str], metrics: Sequence[str] | None = None) -> dict[str, Series]:
    """The metrics of every run at or below ``dirs``, by run label (see :func:`find_runs`).

    Args:
        dirs: run folders or folders above runs (paths or URLs).
        metrics: keep only these metrics (default: all).

    Raises:
        CLIError: when a folder holds no run, or nothing is left to plot.

    Example:
        >>> runs = collect_runs(["runs"], metrics=["train/loss"])  # doctest: +SKIP
        >>> build_figure(runs).savefig("loss.png")                # doctest: +SKIP
    """
    runs = {label: read_metrics(url) for label, url in find_runs(dirs).items()}
    if metrics:
        runs = {run: {k: v for k, v in series.items() if k in metrics} for run, series in runs.items()}
    if not any(runs.values()):
        raise CLIError(
            f"no metrics to plot in {list(dirs)}" + (f" matching {list(metrics)}" if metrics else "")
        )
    return runs


def find_runs(dirs: Sequence[str]) -> dict[str, str]:
    """Every run at or below ``dirs`` (paths or URLs): its label -> the URL of its ``metrics.csv``.

    Labels are the runs' paths less the leading folders they all share, in natural order
    (``version_2`` before ``version_10``). A DIR may also name a ``metrics.csv`` itself.

    Example:
        >>> find_runs(["runs"])  # doctest: +SKIP
        {'csv/version_0': 'file:///work/runs/csv/version_0/metrics.csv', 'other/version_0': ...}
    """
    found: dict[tuple[str, ...], str] = {}  # the run folder's URL, split at "/" -> its metrics.csv URL
    for folder in dirs:
        fs, root = url_to_fs(folder)
        root = root.rstrip("/")
        files = [root] if root.endswith(".csv") and fs.isfile(root) else _metrics_files(fs, root)
        if not files:
            raise CLIError(
                f"DIR {folder!r}: no metrics.csv at or below it (the CSVLogger writes one per run)"
            )
        for file in files:
            url = fs.unstrip_protocol(file)
            found.setdefault(tuple(url.split("/")[:-1]), url)  # a run named twice is drawn once
    labels = _short_labels(list(found))
    return dict(sorted(zip(labels, found.values(), strict=True), key=lambda item: _natural(item[0])))


def read_metrics(path: str) -> Series:
    """Every finite value in one run's ``metrics.csv`` (a path or URL), by metric name."""
    with fsspec.open(path, "r") as f:
        rows = list(csv.DictReader(io.StringIO(f.read())))
    series: Series = {}
    for row in rows:
        if (raw_step := row.pop("step", None)) is None:
            raise CLIError(f"{path}: no 'step' column; is it a tasktrain CSVLogger file?")
        step = int(_number(path, "step", raw_step, raw_step))
        for name, value in row.items():
            if (
                name is not None
                and value not in ("", None)
                and math.isfinite(number := _number(path, name, raw_step, value))
            ):
                series.setdefault(name, []).append((step, number))
    return series


def build_figure(runs: dict[str, Series]) -> Figure:
    """One panel per metric (sorted by name), one line per run (a colour per run); returns the figure.

    Example:
        >>> figure = build_figure({"run_a": {"loss": [(1, 0.9), (2, 0.5)]}})  # doctest: +SKIP
        >>> figure.axes[0].get_lines()[0].get_label()                         # doctest: +SKIP
        'run_a'
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise CLIError("tasktrain plot needs matplotlib: pip install 'tasktrain[plot]'") from error
    metrics = sorted({name for series in runs.values() for name in series})
    columns = max(1, min(3, len(metrics)))
    rows = max(1, -(-len(metrics) // columns))
    # A bare Figure (no pyplot): no backend to choose, no global figure list to close.
    figure = Figure(figsize=(5 * columns, 3.6 * rows))
    axes = list(figure.subplots(rows, columns, squeeze=False).flat)
    for ax, metric in zip(axes, metrics, strict=False):
        for colour, (run, series) in enumerate(runs.items()):
            if points := sorted(series.get(metric, []), key=lambda point: point[0]):
                steps, values = zip(*points, strict=True)
                marker = "o" if len(points) < 20 else None
                ax.plot(steps, values, color=f"C{colour % 10}", marker=marker, markersize=3, label=run)
        ax.set_title(metric)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    figure.tight_layout()
    return figure


def draw(runs: dict[str, Series], out: str) -> str:
    """Write :func:`build_figure`'s figure as a PNG to ``out`` (a path or URL); returns ``out``."""
    figure = build_figure(runs)
    fs, path = url_to_fs(out)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as f:
        figure.savefig(f, format="png", dpi=100)
    return out


def _number(path: str, name: str, step: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise CLIError(f"{path}: {name!r} at step {step!r} is {value!r}, not a number") from None


def _metrics_files(fs: fsspec.AbstractFileSystem, root: str) -> list[str]:
    if not fs.isdir(root):
        return []
    # find() walks the whole tree once, root's own files included (glob's "**" may skip them)
    return [path for path in fs.find(root) if path.rsplit("/", 1)[-1] == "metrics.csv"]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _short_labels(runs: list[tuple[str, ...]]) -> list[str]:
    """The runs' paths less the leading parts they all share; each keeps at least its own folder."""
    shared = 0
    while shared < min(len(run) for run in runs) - 1 and len({run[shared] for run in runs}) == 1:
        shared += 1
    return ["/".join(run[shared:]) for run in runs]


def _natural(label: str) -> list[int | str]:
    """A sort key that orders the numbers in ``label`` by value: ``version_2`` before ``version_10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", label)]
