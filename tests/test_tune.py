"""Hyperparameter search: real optuna studies over real Trainer runs of a tiny task.

One process, ``devices=2`` (the ranks are spawned per trial and report through the launching
process) and a launched job where every rank calls ``search`` (as under torchrun).
"""

from __future__ import annotations

import csv
import json
import pickle
import sys
from pathlib import Path

import pytest
from lightning_utilities.core.imports import RequirementCache

optuna = pytest.importorskip("optuna")

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _tune_workers, here and in spawned ranks
import _tune_workers as workers  # noqa: E402
import tasktrain as tt  # noqa: E402
import tasktrain.tune as tune  # noqa: E402
from tasktrain.strategies.launcher import spawn  # noqa: E402
from tasktrain.tune import PruningCallback, search  # noqa: E402

TinyTask = workers.TinyTask
QUIET = {"enable_progress_bar": False, "accelerator": "cpu", "seed": 0}


@pytest.fixture(autouse=True)
def _quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _val_loss(lr: float, root: Path) -> float:
    trainer = tt.Trainer(
        max_epochs=2, default_root_dir=root, logger=False, enable_checkpointing=False, **QUIET
    )
    tt.seed_everything(0)
    trainer.fit(TinyTask(lr=lr))
    return trainer.callback_metrics["val/loss"]


def _by_lr(study: optuna.Study) -> dict[float, optuna.trial.FrozenTrial]:
    return {t.params["lr"]: t for t in study.trials}


# -- one process -----------------------------------------------------------------------------------
def test_search_finds_a_learning_rate_far_better_than_a_bad_fixed_one(tmp_path):
    def space(trial):
        return {"lr": trial.suggest_float("lr", 1e-4, 0.5, log=True)}

    result = search(
        TinyTask,
        space,
        n_trials=6,
        trainer_kwargs={"max_epochs": 2, **QUIET},
        root_dir=tmp_path / "tune",
        sampler=optuna.samplers.TPESampler(seed=0),
    )

    bad = _val_loss(1e-4, tmp_path / "fixed")  # the space's bad end, fixed
    assert result.best_value < 0.5 * bad
    # Every trial starts from the same weights (seed=0), so only the lr can make them differ.
    assert len({t.value for t in result.study.trials}) == len(result.study.trials)
    assert result.best_value == min(t.value for t in result.study.trials)
    assert result.best_params == result.study.best_params
    # The suggested lr reached the module: the best checkpoint holds it, and every trial's config too.
    assert TinyTask.load_from_checkpoint(result.best_checkpoint).hparams.lr == result.best_params["lr"]
    assert result.best_checkpoint.startswith(str(tmp_path / "tune" / "trial_"))
    for trial in result.study.trials:
        run_dir = tmp_path / "tune" / f"trial_{trial.number:04d}"
        config = json.loads((run_dir / "trial.json").read_text())
        assert config["params"] == trial.params
        assert config["trainer_kwargs"] == {"max_epochs": 2, **QUIET}
        assert trial.user_attrs["run_dir"] == str(run_dir)
        assert (run_dir / "csv" / "version_0" / "metrics.csv").is_file()
    assert result.best_run_dir == str(tmp_path / "tune" / f"trial_{result.best_trial_number:04d}")


def test_pruned_trial_ends_cleanly_and_the_sqlite_study_reads_back_in_optuna(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    result = workers.grid_search(str(tmp_path / "tune"), storage=url)

    study = optuna.load_study(study_name="grid", storage=url)  # read back by optuna itself
    trials = _by_lr(study)
    assert len(study.trials) == 2
    assert trials[0.1].state == optuna.trial.TrialState.COMPLETE
    assert trials[1e-6].state == optuna.trial.TrialState.PRUNED
    assert study.best_value == result.best_value == trials[0.1].value
    assert result.best_params == {"lr": 0.1}
    # Pruned at its first validation (step 4), above the threshold; the good one ran on.
    assert list(trials[1e-6].intermediate_values) == [4]
    assert trials[1e-6].intermediate_values[4] > workers.PRUNE_ABOVE
    assert list(trials[0.1].intermediate_values) == [4, 8, 12, 16]
    # The pruned run's logs were finalized: its last validation is in metrics.csv.
    pruned_dir = Path(trials[1e-6].user_attrs["run_dir"])
    rows = list(csv.DictReader((pruned_dir / "csv" / "version_0" / "metrics.csv").open()))
    logged = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert logged == [pytest.approx(trials[1e-6].intermediate_values[4])]
    assert "checkpoint" not in trials[1e-6].user_attrs


def test_a_study_in_storage_is_continued(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    for _ in range(2):
        kwargs = {"max_steps": 2, "enable_checkpointing": False, **QUIET}
        result = search(
            TinyTask,
            workers.lr_space,
            n_trials=1,
            trainer_kwargs=kwargs,
            root_dir=tmp_path / "tune",
            storage=url,
            study_name="again",
        )
    assert [t.number for t in result.study.trials] == [0, 1]
    assert sorted(p.name for p in (tmp_path / "tune").iterdir()) == ["trial_0000", "trial_0001"]
    assert result.best_checkpoint is None  # no checkpointing asked for


def test_a_new_study_refuses_the_run_directories_of_an_earlier_one(tmp_path):
    kwargs = {"max_steps": 1, **QUIET}
    search(TinyTask, workers.lr_space, n_trials=1, trainer_kwargs=kwargs, root_dir=tmp_path)
    with pytest.raises(FileExistsError, match=r"trial_0000 already exists.*storage= and study_name="):
        search(TinyTask, workers.lr_space, n_trials=1, trainer_kwargs=kwargs, root_dir=tmp_path)


@pytest.mark.parametrize(
    ("monitor", "hint"),
    [
        ("val/acc", r" \(log it with self\.log, or pass monitor= one of these\)$"),
        ("val_loss", r"; did you mean 'val/loss'\?$"),  # the shared helper's close match
    ],
)
def test_a_monitor_that_is_not_logged_names_the_logged_metrics(tmp_path, monitor, hint):
    with pytest.raises(
        KeyError, match=rf"monitor='{monitor}' was not logged; logged metrics: \[.*'val/loss'.*{hint}"
    ):
        search(
            TinyTask,
            workers.lr_space,
            monitor=monitor,
            n_trials=1,
            trainer_kwargs={"max_steps": 2, **QUIET},
            root_dir=tmp_path,
        )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"direction": "down"}, ValueError, r"direction='down'.*'minimize', 'maximize'"),
        ({"n_trials": 0}, ValueError, r"n_trials=0.*None or an int >= 1"),
        ({"n_trials": None}, ValueError, r"give at least one"),
        ({"trainer_kwargs": {"default_root_dir": "x"}}, ValueError, r"default_root_dir.*root_dir="),
        ({"trainer_kwargs": {"precision": "fp8"}}, ValueError, r"precision='fp8'"),
        ({"space": lambda trial: [1e-3]}, TypeError, r"space\(trial\) returned list; it must return a dict"),
        ({"space": lambda trial: {"learning_rate": 0.1}}, TypeError, r"TinyTask\(\*\*\{'learning_rate'"),
        ({"task": "TinyTask"}, TypeError, r"search\(task='TinyTask'\)"),
    ],
)
def test_bad_input_is_named(tmp_path, kwargs, error, match):
    arguments = {"task": TinyTask, "space": workers.lr_space, "n_trials": 1, "root_dir": tmp_path}
    arguments["trainer_kwargs"] = {"max_steps": 1, **QUIET}
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        search(**arguments)


def test_without_optuna_the_error_names_the_extra(monkeypatch):
    monkeypatch.setattr(tune, "_OPTUNA", RequirementCache("optuna>=999"))
    with pytest.raises(ModuleNotFoundError, match=r'pip install "tasktrain\[tune\]"'):
        search(TinyTask, workers.lr_space)


def test_a_pruning_callback_holding_a_trial_refuses_to_be_sent_to_spawned_ranks():
    trial = optuna.create_study().ask()
    with pytest.raises(TypeError, match="cannot travel to the processes that devices=N spawns"):
        pickle.dumps(PruningCallback(trial))


# -- several processes ------------------------------------------------------------------------------
def test_spawned_ddp_trials_report_to_the_launching_process(tmp_path):
    result = workers.grid_search(str(tmp_path), strategy="ddp", devices=2)

    trials = _by_lr(result.study)
    assert trials[1e-6].state == optuna.trial.TrialState.PRUNED  # decided here, from the ranks' report
    assert list(trials[1e-6].intermediate_values) == [4]
    assert trials[0.1].state == optuna.trial.TrialState.COMPLETE
    assert list(trials[0.1].intermediate_values) == [4, 8]  # 2 ranks: 4 steps per epoch
    assert result.best_value == trials[0.1].value < workers.PRUNE_ABOVE
    state = json.loads((Path(result.best_checkpoint) / "trainer_state.json").read_text())
    assert state["strategy"] == {"name": "ddp", "world_size": 2}
    assert state["hparams"]["lr"] == 0.1


def test_a_launched_job_runs_the_search_on_every_rank(tmp_path):
    out = spawn(workers.torchrun_rank, (str(tmp_path),), nprocs=2)

    assert out["ranks"][0] == out["ranks"][1]  # every rank returns rank 0's result
    assert out["rank1_has_no_study"]
    assert out["ranks"][0]["best_params"] == {"lr": 0.1}
    assert sorted(out["states"]) == ["COMPLETE", "PRUNED"]
    assert out["ranks"][0]["best_value"] == min(v for v in out["values"] if v is not None)
    state = json.loads((Path(out["ranks"][0]["best_checkpoint"]) / "trainer_state.json").read_text())
    assert state["strategy"] == {"name": "ddp", "world_size": 2}
