"""``tasktrain tune``: a real search over ``tests/cli/tiny_task.py``, read back from its sqlite study."""

from __future__ import annotations

import json

import pytest
from _cli_helpers import QUIET, copy_fixtures, harness

optuna = pytest.importorskip("optuna")


def _lines(stdout: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in stdout.splitlines() if ": " in line)


def test_tune_searches_prints_the_best_trial_and_keeps_the_study(tmp_path):
    search = ["tune", "--task", "tiny_task.py", "--space", "tune_space.py", "--n_trials", "3"]
    search += ["--trainer.max_epochs", "2", "--trainer.seed", "0", "--task.batch_size", "8", *QUIET]
    search += ["--storage", "sqlite:///study.db", "--study_name", "cli", "--root_dir", "runs/tune"]
    results = harness(
        copy_fixtures(tmp_path),
        search,
        ["tune", "--task", "tiny_task.py", "--n_trials", "1", *QUIET],
        ["tune", "--task", "tiny_task.py", "--space", "tiny_data.py", *QUIET],
        ["tune", "--task", "tiny_task.py", "--space", "tune_space.py", "--direction", "up", *QUIET],
        [
            "tune",
            "--task",
            "tiny_task.py",
            "--space",
            "tune_space.py",
            "--monitor",
            "val/acc",
            "--root_dir",
            "other",
            *QUIET,
        ],
        ["tune", "--task", "tiny_task.py", "--space", "tune_space.py", "--n_trials", "0", *QUIET],
        ["tune", "--task", "tiny_task.py", "--space", "tune_space.py", "--trainer.max_steps", "-1", *QUIET],
    )
    ran, no_space, no_function, bad_direction, bad_monitor, no_trials, bad_trainer = results

    assert ran["code"] == 0, ran["stderr"]
    study = optuna.load_study(study_name="cli", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    printed = _lines(ran["stdout"])
    assert printed["trials"] == "3 (3 complete)"
    assert int(printed["best trial"]) == study.best_trial.number
    assert printed["best value"] == f"val/loss = {study.best_value:.6g} (minimize)"
    assert json.loads(printed["best params"]) == study.best_params
    assert printed["run dir"] == f"runs/tune/trial_{study.best_trial.number:04d}"
    assert printed["checkpoint"].startswith(str(tmp_path / printed["run dir"] / "checkpoints"))
    for trial in study.trials:  # the space's lr and the fixed --task.batch_size reached each trial's task
        hparams = (
            tmp_path / "runs" / "tune" / f"trial_{trial.number:04d}" / "csv" / "version_0" / "hparams.json"
        )
        assert json.loads(hparams.read_text()) == {
            "lr": trial.params["lr"],
            "batch_size": 8,
            "marker_dir": None,
        }
    assert "space: tune_space.py" in (tmp_path / "runs" / "tune" / "config.yaml").read_text()

    assert no_space["code"] == 2 and "no search space given: add --space" in no_space["stderr"]
    assert no_function["code"] == 2
    assert "has no attribute 'space'" in no_function["stderr"]
    assert bad_direction["code"] == 2 and "--direction: 'up'" in bad_direction["stderr"]
    assert bad_monitor["code"] == 1  # the search started: the user's run failed, with the reason
    assert "monitor='val/acc' was not logged; logged metrics: [" in bad_monitor["stderr"]
    assert no_trials["code"] == 2 and "--n_trials 0: give an int >= 1" in no_trials["stderr"]
    assert bad_trainer["code"] == 2 and "max_steps=-1" in bad_trainer["stderr"]
    assert not (tmp_path / "runs" / "tune" / "trial_0003").exists()  # the bad command lines ran no trial
