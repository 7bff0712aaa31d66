"""WandbLogger offline (no network, no account): the run files W&B writes, parsed back with the tests'
own reader, hold the same history as the CSV logger of the same run, across a stop and resume."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("wandb")

import _tracked as tracked
import _wandb_reader as reader

from tasktrain.checkpoint import find_last
from tasktrain.loggers import WandbLogger


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # belt and braces: nothing may reach the network
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def _run_files(root: Path) -> list[Path]:
    files = sorted(root.glob("wandb/offline-run-*/run-*.wandb"))
    for file in files:
        reader.wait_until_complete(file)
    return files


def _history(files: list[Path]) -> dict[str, list[tuple[int, float]]]:
    history: dict[str, list[tuple[int, float]]] = {}
    for file in files:
        for row in reader.history(file):
            for key, value in row.items():
                if not key.startswith("_"):
                    history.setdefault(key, []).append((row["_step"], value))
    return {key: sorted(points) for key, points in history.items()}


def test_offline_run_files_hold_the_csv_loggers_history_and_config(tmp_path):
    logger = WandbLogger(project="p", name="first")
    trainer = tracked.fit(tmp_path, logger, max_steps=6)
    files = _run_files(tmp_path)  # save_dir defaults to default_root_dir
    assert len(files) == 1 and reader.run_id(files[0]) == logger.run_id
    assert _history(files) == tracked.csv_history(tmp_path)
    assert tracked.steps(_history(files))["train/loss"] == [1, 2, 3, 4, 5, 6]
    config = reader.config(files[0])
    assert config["hidden"] == 4 and config["lr"] == 0.05 and config["opts"] == {"depth": 2, "act": "tanh"}
    summary_paths = [
        json_value
        for record in reader.records(files[0])
        if record.WhichOneof("record_type") == "summary"
        for item in record.summary.update
        if item.key == "checkpoint_path"
        for json_value in [item.value_json]
    ]
    assert summary_paths and summary_paths[-1] == f'"{find_last(str(tmp_path))}"'
    assert trainer.checkpoint_callback.last_model_path == find_last(str(tmp_path))


def test_stop_and_resume_continue_the_same_run_with_each_step_once(tmp_path):
    whole = tmp_path / "whole"
    tracked.fit(whole, WandbLogger(), max_steps=6)
    uninterrupted = _history(_run_files(whole))
    parts = tmp_path / "parts"
    first = WandbLogger()
    tracked.fit(parts, first, max_steps=3)
    second = WandbLogger()
    tracked.fit(parts, second, max_steps=6, ckpt_path="last")
    assert second.run_id == first.run_id
    files = _run_files(parts)
    assert len(files) == 2 and {reader.run_id(f) for f in files} == {first.run_id}
    history = _history(files)
    assert history == tracked.csv_history(parts)
    assert tracked.steps(history)["train/loss"] == [1, 2, 3, 4, 5, 6]
    assert history["train/loss"] == uninterrupted["train/loss"]


def test_cli_selects_it_by_name_and_saves_the_config_file_with_the_run(tmp_path):
    from tasktrain.cli import main

    task = Path(__file__).parent.parent / "cli" / "tiny_task.py"
    root = tmp_path / "runs"
    args = ["fit", "--task", str(task), "--trainer.max_steps", "2", "--trainer.logger", "WandbLogger"]
    args += ["--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false"]
    args += ["--trainer.log_every_n_steps", "1"]
    assert main(args) == 0
    (file,) = _run_files(root)
    saved = file.parent / "files" / "config.yaml"
    assert saved.is_file() and "WandbLogger" in saved.read_text()
    assert tracked.steps(_history([file]))["train/loss"] == [1, 2]


def test_bad_mode_is_refused():
    with pytest.raises(
        ValueError,
        match=r"WandbLogger\(mode='cloud'\): accepted values are \['offline', 'online', 'disabled'\]",
    ):
        WandbLogger(mode="cloud")
    assert os.environ["WANDB_MODE"] == "offline"


def test_under_ddp_rank_0_writes_one_run_that_a_resume_continues(tmp_path):
    first = WandbLogger()
    tracked.fit(tmp_path, first, max_steps=2, strategy="ddp", devices=2)
    assert first.run_id is not None  # adopted from rank 0's state
    second = WandbLogger()
    tracked.fit(tmp_path, second, max_steps=4, ckpt_path="last", strategy="ddp", devices=2)
    assert second.run_id == first.run_id
    files = _run_files(tmp_path)
    assert len(files) == 2 and {reader.run_id(f) for f in files} == {first.run_id}
    history = _history(files)
    assert tracked.steps(history)["train/loss"] == [1, 2, 3, 4]
    assert history == tracked.csv_history(tmp_path)
