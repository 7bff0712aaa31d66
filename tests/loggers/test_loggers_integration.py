"""Several loggers at once: one fit and one validate write the same rows to CSV, JSONL and TensorBoard."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from _tensorboard_reader import hparams, read_events
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
from tasktrain.loggers import CSVLogger, JSONLLogger, TensorBoardLogger


class Task(tt.TaskModule):
    def __init__(self, lr: float = 0.1, hidden: int = 3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(2, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1)
        )

    def compute_loss(self, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def _by_name(rows: list[tuple[int, dict[str, float]]]) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for step, metrics in rows:
        for name, value in metrics.items():
            out.setdefault(name, []).append((step, value))
    return out


def test_csv_jsonl_and_tensorboard_together(tmp_path: Path):
    loggers = [CSVLogger(str(tmp_path)), JSONLLogger(str(tmp_path)), TensorBoardLogger(str(tmp_path))]
    g = torch.Generator().manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(8, 2, generator=g), torch.randn(8, 1, generator=g)), 2)
    trainer = tt.Trainer(
        max_epochs=2,
        log_every_n_steps=2,
        logger=loggers,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_checkpointing=False,
    )
    module = Task()
    trainer.fit(module, loader, loader)
    [validated] = trainer.validate(module, loader)

    assert [lg.log_dir for lg in loggers] == [
        f"{tmp_path}/{name}/version_0" for name in ("csv", "jsonl", "tensorboard")
    ]
    with open(tmp_path / "jsonl" / "version_0" / "metrics.jsonl") as f:
        jsonl = _by_name([(row.pop("step"), row) for row in map(json.loads, f)])
    assert [step for step, _ in jsonl["train/loss"]] == [2, 4, 6, 8]
    assert [step for step, _ in jsonl["val/loss"]] == [4, 8, 8]  # two epochs, then validate
    assert jsonl["val/loss"][-1][1] == validated["val/loss"]

    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        csv_rows = [
            (int(row.pop("step")), {k: float(v) for k, v in row.items() if v}) for row in csv.DictReader(f)
        ]
    assert _by_name(csv_rows) == jsonl

    events = read_events(loggers[2].log_dir)
    assert sorted(events.Tags()["scalars"]) == sorted(jsonl)
    for name, expected in jsonl.items():
        got = [(e.step, e.value) for e in events.Scalars(name)]
        assert got == [(step, pytest.approx(value, rel=1e-6)) for step, value in expected], name  # float32

    assert hparams(events) == {"lr": 0.1, "hidden": 3.0}
    for name in ("csv", "jsonl"):
        assert json.loads((tmp_path / name / "version_0" / "hparams.json").read_text()) == {
            "lr": 0.1,
            "hidden": 3,
        }


class CountingTask(Task):
    training_steps = 0

    def training_step(self, batch, batch_idx):
        self.training_steps += 1
        return super().training_step(batch, batch_idx)


def test_an_unwritable_log_dir_fails_fit_before_the_first_training_step(tmp_path: Path):
    (tmp_path / "file").write_text("not a folder")
    root = tmp_path / "file" / "runs"  # cannot be created, even as root (chmod would not stop root)
    loader = DataLoader(TensorDataset(torch.randn(8, 2), torch.randn(8, 1)), 2)

    def trainer(loggers: list) -> tt.Trainer:
        return tt.Trainer(
            max_epochs=1,
            logger=loggers,
            default_root_dir=tmp_path,
            enable_progress_bar=False,
            enable_checkpointing=False,
        )

    module = CountingTask()
    with pytest.raises(OSError, match="CSVLogger: cannot write to the log directory") as info:
        trainer([JSONLLogger(str(tmp_path)), CSVLogger(str(root))]).fit(module, loader)
    assert f"'{root}/csv/version_0'" in str(info.value)
    assert module.training_steps == 0 and module.global_step == 0

    trainer([CSVLogger(str(tmp_path))]).fit(module, loader)  # the same fit with a writable root
    assert module.training_steps == 4 and module.global_step == 4  # the count does count


def test_under_two_ranks_rank_zeros_check_reaches_the_caller(tmp_path: Path):
    """Only rank 0 checks (it alone writes); the launcher stops rank 1 instead of letting it hang."""
    (tmp_path / "file").write_text("not a folder")
    root = tmp_path / "file" / "runs"
    loader = DataLoader(TensorDataset(torch.randn(8, 2), torch.randn(8, 1)), 2)
    trainer = tt.Trainer(
        strategy="ddp",
        devices=2,
        accelerator="cpu",
        max_epochs=1,
        logger=CSVLogger(str(root)),
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_checkpointing=False,
    )
    with pytest.raises(Exception, match="cannot write to the log directory") as info:
        trainer.fit(Task(), loader)
    assert f"'{root}/csv/version_0'" in str(info.value)
