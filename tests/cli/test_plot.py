"""``tasktrain plot``: learning curves from the CSVLogger's files, read back as a real PNG."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from tasktrain.cli.main import main
from tasktrain.cli.plot import read_metrics
from tasktrain.loggers import CSVLogger


def _log_run(root: Path, version: int, scale: float) -> Path:
    logger = CSVLogger(str(root), version=version)
    for step in range(1, 11):
        logger.log_metrics({"train/loss": scale / step, "lr": 0.1 / step}, step)
        if step % 5 == 0:
            logger.log_metrics({"val/loss": scale / step + 0.1, "val/acc": 1 - 1 / step}, step)
    logger.finalize()
    return root / "csv" / f"version_{version}"


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_plot_overlays_runs_in_one_panel_per_metric_family(tmp_path, capsys):
    first, second = _log_run(tmp_path, 0, 2.0), _log_run(tmp_path, 1, 3.0)
    out = tmp_path / "figures" / "curves.png"
    assert main(["plot", str(first), str(second), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    # panels: acc, loss (train/loss and val/loss together), lr -> 3 columns of 5 x 3.6 inches at 100 dpi
    assert _png_size(out) == (1500, 360)


def test_read_metrics_finds_every_metric_below_a_folder(tmp_path):
    _log_run(tmp_path, 0, 2.0)
    series = read_metrics(str(tmp_path))
    assert set(series) == {"train/loss", "lr", "val/loss", "val/acc"}
    assert series["val/loss"] == [(5, pytest.approx(0.5)), (10, pytest.approx(0.3))]


def test_plot_without_logs_says_what_it_looked_for(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "no metrics.csv" in err and "Traceback" not in err
