"""``tasktrain plot``: learning curves from the CSVLogger's files, one line per run, read back as
matplotlib objects and as a real PNG."""

from __future__ import annotations

import struct
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from tasktrain.cli.main import main
from tasktrain.cli.plot import build_figure, collect_runs, find_runs, read_metrics
from tasktrain.loggers import CSVLogger


def _log_run(root: Path, version: int, scale: float, name: str = "csv") -> Path:
    logger = CSVLogger(str(root), name=name, version=version)
    for step in range(1, 11):
        logger.log_metrics({"train/loss": scale / step, "lr": 0.1 / step}, step)
        if step % 5 == 0:
            logger.log_metrics({"val/loss": scale / step + 0.1, "val/acc": 1 - 1 / step}, step)
    logger.finalize()
    return root / name / f"version_{version}"


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def _lines(figure) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """Panel title -> run label -> (x, y) of its line, read back from the matplotlib objects."""
    panels = {}
    for ax in figure.axes:
        if ax.get_visible():
            lines = ax.get_lines()
            legend = [text.get_text() for text in ax.get_legend().get_texts()]
            assert legend == [line.get_label() for line in lines]  # the legend names every line
            panels[ax.get_title()] = {
                line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in lines
            }
    return panels


def test_one_line_per_run_below_a_root_with_its_own_values(tmp_path):
    _log_run(tmp_path / "runs", 0, 2.0)
    _log_run(tmp_path / "runs", 1, 3.0)
    runs = collect_runs([str(tmp_path / "runs")])
    assert list(runs) == ["version_0", "version_1"]  # "csv/", shared by both, is left out
    panels = _lines(build_figure(runs))

    assert list(panels) == ["lr", "train/loss", "val/acc", "val/loss"]  # one panel per metric
    steps = [float(step) for step in range(1, 11)]
    for run, scale in (("version_0", 2.0), ("version_1", 3.0)):
        assert panels["train/loss"][run] == (steps, pytest.approx([scale / s for s in steps]))
        assert panels["val/loss"][run] == ([5.0, 10.0], pytest.approx([scale / 5 + 0.1, scale / 10 + 0.1]))
        assert panels["lr"][run] == (steps, pytest.approx([0.1 / s for s in steps]))
    assert all(len(lines) == 2 for lines in panels.values())
    # a run keeps its colour in every panel
    figure = build_figure(runs)
    colours = {(line.get_label(), line.get_color()) for ax in figure.axes for line in ax.get_lines()}
    assert len(colours) == 2


def test_labels_are_paths_below_dir_and_sort_naturally(tmp_path):
    _log_run(tmp_path, 0, 1.0, name="lightning_logs")
    _log_run(tmp_path, 10, 1.0, name="lightning_logs")
    _log_run(tmp_path, 2, 1.0, name="lightning_logs")
    _log_run(tmp_path, 0, 1.0, name="other")
    assert list(find_runs([str(tmp_path)])) == [
        "lightning_logs/version_0",
        "lightning_logs/version_2",
        "lightning_logs/version_10",
        "other/version_0",
    ]


def test_a_run_folder_a_csv_file_and_several_dirs(tmp_path):
    first, second = _log_run(tmp_path, 0, 2.0, name="a"), _log_run(tmp_path, 0, 3.0, name="b")
    assert list(find_runs([str(first)])) == ["version_0"]  # DIR is the run: labelled by its folder
    assert find_runs([str(first / "metrics.csv")]) == find_runs([str(first)])
    assert list(find_runs([str(first), str(second), str(tmp_path)])) == ["a/version_0", "b/version_0"]


def test_memory_url_runs():
    root = f"memory://plot-{uuid.uuid4().hex}"
    for version in (0, 1):
        logger = CSVLogger(root, version=version)
        logger.log_metrics({"train/loss": 1.0 + version}, step=1)
        logger.finalize()
    runs = collect_runs([root])
    assert runs == {"version_0": {"train/loss": [(1, 1.0)]}, "version_1": {"train/loss": [(1, 2.0)]}}


def test_metrics_option_keeps_only_those(tmp_path):
    _log_run(tmp_path, 0, 2.0)
    _log_run(tmp_path, 1, 3.0)
    runs = collect_runs([str(tmp_path)], metrics=["val/loss"])
    assert list(_lines(build_figure(runs))) == ["val/loss"]


def test_plot_writes_one_panel_per_metric(tmp_path, capsys):
    first, second = _log_run(tmp_path, 0, 2.0), _log_run(tmp_path, 1, 3.0)
    out = tmp_path / "figures" / "curves.png"
    assert main(["plot", str(first), str(second), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}: 2 runs (version_0, version_1), 4 metrics" in printed
    # panels: lr, train/loss, val/acc, val/loss -> 3 columns, 2 rows of 5 x 3.6 inches at 100 dpi
    assert _png_size(out) == (1500, 720)


def test_read_metrics_reads_one_runs_csv(tmp_path):
    run = _log_run(tmp_path, 0, 2.0)
    series = read_metrics(str(run / "metrics.csv"))
    assert set(series) == {"train/loss", "lr", "val/loss", "val/acc"}
    assert series["val/loss"] == [(5, pytest.approx(0.5)), (10, pytest.approx(0.3))]


def test_a_csv_that_is_not_ours_is_named(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.csv").write_text("epoch,loss\n0,0.5\n")
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "metrics.csv: no 'step' column" in err and "Traceback" not in err
    (tmp_path / "run" / "metrics.csv").write_text("step,loss\n1,high\n")
    assert main(["plot", str(tmp_path)]) == 2
    assert "'loss' at step '1' is 'high', not a number" in capsys.readouterr().err


def test_importing_the_command_does_not_import_matplotlib():
    code = "import sys, tasktrain.cli.plot; print('matplotlib' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_plot_without_logs_says_what_it_looked_for(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "no metrics.csv" in err and "Traceback" not in err
