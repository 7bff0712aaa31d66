"""TensorBoardLogger: event files read back with tensorboard's own EventAccumulator."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import fsspec
import pytest
from _tensorboard_reader import hparams, read_events, scalars
from lightning_utilities.core.imports import RequirementCache
from lightning_utilities.core.rank_zero import rank_zero_only

import tasktrain.loggers.tensorboard as tensorboard_module
from tasktrain.loggers import TensorBoardLogger


def _write_run(logger: TensorBoardLogger) -> None:
    logger.log_hyperparams({"lr": 0.125, "layers": [1, 2], "optimizer": "sgd", "compile": False, "depth": 3})
    for step in (5, 10, 15):
        logger.log_metrics({"train/loss": 1.0 / step}, step=step)
    logger.log_metrics({"val/acc": 0.75}, step=15)
    logger.finalize()


def test_local_path_scalars_and_hparams_read_back_by_tensorboard(tmp_path):
    logger = TensorBoardLogger(str(tmp_path))
    assert logger.log_dir == f"{tmp_path}/tensorboard/version_0"
    _write_run(logger)
    logger.log_metrics({"test/acc": 0.5}, step=15)  # a later run (test) appends to the same file
    logger.finalize()
    files = list(Path(logger.log_dir).iterdir())
    assert len(files) == 1 and files[0].name.startswith("events.out.tfevents.")
    events = read_events(logger.log_dir)
    assert sorted(events.Tags()["scalars"]) == ["test/acc", "train/loss", "val/acc"]
    assert scalars(events, "train/loss") == [
        (5, pytest.approx(0.2)),
        (10, pytest.approx(0.1)),
        (15, pytest.approx(1 / 15)),
    ]
    assert scalars(events, "val/acc") == [(15, 0.75)]
    assert scalars(events, "test/acc") == [(15, 0.5)]
    assert hparams(events) == {
        "lr": 0.125,
        "layers": "[1, 2]",
        "optimizer": "sgd",
        "compile": False,
        "depth": 3.0,
    }
    assert TensorBoardLogger(str(tmp_path)).version == 1


def test_memory_url_writes_the_same_event_file(tmp_path):
    logger = TensorBoardLogger(f"memory://tb-{uuid.uuid4().hex}")
    _write_run(logger)
    fs, path = fsspec.core.url_to_fs(logger.log_dir)
    [name] = fs.ls(path, detail=False)
    (tmp_path / Path(name).name).write_bytes(fs.cat(name))  # tensorboard reads local files only
    events = read_events(tmp_path)
    assert scalars(events, "val/acc") == [(15, 0.75)]
    assert hparams(events)["optimizer"] == "sgd"


def test_rows_are_buffered_until_flush_every_and_keep_the_time_they_were_logged(tmp_path):
    logger = TensorBoardLogger(str(tmp_path), flush_every=2)
    before = time.time()
    logger.log_metrics({"a": 1.0}, step=1)
    assert not Path(logger.log_dir).exists()
    time.sleep(0.05)
    middle = time.time()
    logger.log_metrics({"a": 2.0}, step=2)
    events = read_events(logger.log_dir).Scalars("a")
    assert [(e.step, e.value) for e in events] == [(1, 1.0), (2, 2.0)]
    assert before <= events[0].wall_time < middle <= events[1].wall_time


def test_only_rank_zero_writes(tmp_path, monkeypatch):
    logger = TensorBoardLogger(str(tmp_path), flush_every=1)
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    _write_run(logger)
    assert not (tmp_path / "tensorboard").exists()


def test_missing_tensorboard_names_the_extra_to_install(monkeypatch):
    monkeypatch.setattr(tensorboard_module, "_TENSORBOARD", RequirementCache("tensorboard>=999"))
    with pytest.raises(
        ModuleNotFoundError, match=r'pip install "tasktrain\[tensorboard\]".*tensorboard>=999'
    ):
        TensorBoardLogger("memory://never")
