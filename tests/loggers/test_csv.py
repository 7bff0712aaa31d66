"""CSVLogger: metrics.csv and hparams.json through fsspec (local paths and URLs alike)."""

from __future__ import annotations

import csv
import json
import uuid

import fsspec
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
from tasktrain.loggers import CSVLogger


def _root() -> str:
    return f"memory://csv-{uuid.uuid4().hex}"


def _read_csv(url: str) -> tuple[list[str], list[dict[str, str]]]:
    with fsspec.open(url, "r") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def test_memory_url_round_trip():
    root = _root()
    logger = CSVLogger(root)
    assert logger.version == 0
    assert logger.log_dir == f"{root}/csv/version_0"
    logger.log_hyperparams({"lr": 0.1, "layers": [1, 2]})
    logger.log_metrics({"train/loss": 0.5}, step=10)
    logger.log_metrics({"train/loss": 0.25}, step=20)
    logger.finalize()

    header, rows = _read_csv(f"{logger.log_dir}/metrics.csv")
    assert header == ["step", "train/loss"]
    assert rows == [{"step": "10", "train/loss": "0.5"}, {"step": "20", "train/loss": "0.25"}]
    with fsspec.open(f"{logger.log_dir}/hparams.json", "r") as f:
        assert json.load(f) == {"lr": 0.1, "layers": [1, 2]}


def test_new_column_rewrites_the_header_without_losing_values():
    logger = CSVLogger(_root(), flush_every=1)  # every row is written at once
    logger.log_metrics({"a": 1.0}, step=1)
    logger.log_metrics({"a": 2.0}, step=2)
    logger.log_metrics({"b": 3.0}, step=3)
    logger.log_metrics({"a": 4.0, "b": 5.0}, step=4)
    logger.finalize()

    header, rows = _read_csv(f"{logger.log_dir}/metrics.csv")
    assert header == ["step", "a", "b"]
    assert rows == [
        {"step": "1", "a": "1.0", "b": ""},
        {"step": "2", "a": "2.0", "b": ""},
        {"step": "3", "a": "", "b": "3.0"},
        {"step": "4", "a": "4.0", "b": "5.0"},
    ]


def test_new_column_across_buffered_flushes():
    logger = CSVLogger(_root(), flush_every=2)
    for step in range(1, 4):
        logger.log_metrics({"a": float(step)}, step=step)
    logger.log_metrics({"c": 9.0}, step=4)
    logger.finalize()
    header, rows = _read_csv(f"{logger.log_dir}/metrics.csv")
    assert header == ["step", "a", "c"]
    assert [r["a"] for r in rows] == ["1.0", "2.0", "3.0", ""]
    assert rows[-1]["c"] == "9.0"


def test_versions_increment():
    root = _root()
    first = CSVLogger(root)
    first.log_metrics({"x": 1.0}, step=1)
    first.finalize()
    second = CSVLogger(root)
    second.log_metrics({"x": 2.0}, step=1)
    second.finalize()
    third = CSVLogger(root)
    assert (first.version, second.version, third.version) == (0, 1, 2)
    assert _read_csv(f"{second.log_dir}/metrics.csv")[1] == [{"step": "1", "x": "2.0"}]
    assert CSVLogger(root, version=7).log_dir.endswith("/csv/version_7")
    assert CSVLogger(root, name="other").version == 0


def test_finalize_without_metrics_writes_nothing():
    logger = CSVLogger(_root())
    logger.finalize()
    fs, path = fsspec.core.url_to_fs(f"{logger.log_dir}/metrics.csv")
    assert not fs.exists(path)


def test_local_path(tmp_path):
    logger = CSVLogger(str(tmp_path))
    logger.log_metrics({"m": 1.5}, step=3)
    logger.finalize()
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        assert list(csv.DictReader(f)) == [{"step": "3", "m": "1.5"}]


def test_bad_flush_every():
    with pytest.raises(ValueError, match="flush_every=0"):
        CSVLogger(_root(), flush_every=0)


def test_with_a_trainer_on_a_memory_url():
    class Task(tt.TaskModule):
        def __init__(self, lr: float = 0.1) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Linear(2, 1)

        def compute_loss(self, batch):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    logger = CSVLogger(_root())
    g = torch.Generator().manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(8, 2, generator=g), torch.randn(8, 1, generator=g)), 2)
    trainer = tt.Trainer(
        max_epochs=2,
        log_every_n_steps=2,
        logger=logger,
        enable_progress_bar=False,
        enable_checkpointing=False,
    )
    trainer.fit(Task(), loader, loader)
    header, rows = _read_csv(f"{logger.log_dir}/metrics.csv")
    assert "train/loss" in header and "val/loss" in header
    assert [int(r["step"]) for r in rows if r["train/loss"]] == [2, 4, 6, 8]
    assert [int(r["step"]) for r in rows if r["val/loss"]] == [4, 8]
    with fsspec.open(f"{logger.log_dir}/hparams.json", "r") as f:
        assert json.load(f) == {"lr": 0.1}
