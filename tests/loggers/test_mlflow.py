"""MLFlowLogger against a real MLflow sqlite store, read back with ``MlflowClient``.

The reference is a CSVLogger in the same run: MLflow's metric histories must hold the same
(step, value) pairs, and a run stopped and resumed from a checkpoint must be one MLflow run with
every step exactly once, equal to the uninterrupted run's history.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("mlflow")

import _tracked as tracked
from mlflow.tracking import MlflowClient

from tasktrain.checkpoint import find_last
from tasktrain.loggers import MLFlowLogger
from tasktrain.loggers.mlflow import CHECKPOINT_TAG


def _client(root: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{root.resolve()}/mlflow.db")


def _history(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    run = client.get_run(run_id)
    return {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        for key in run.data.metrics
    }


def _only_run(client: MlflowClient, experiment: str) -> str:
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0].info.run_id


def test_params_and_metric_histories_equal_the_csv_loggers_rows(tmp_path):
    logger = MLFlowLogger(experiment_name="exp", run_name="first")
    trainer = tracked.fit(tmp_path, logger, max_steps=6)
    client = _client(tmp_path)  # the default store: sqlite under default_root_dir
    run_id = _only_run(client, "exp")
    assert run_id == logger.run_id
    run = client.get_run(run_id)
    assert run.info.run_name == "first" and run.info.status == "FINISHED"
    assert run.data.params == {"hidden": "4", "lr": "0.05", "opts.depth": "2", "opts.act": "tanh"}
    expected = tracked.csv_history(tmp_path)
    assert {"train/loss", "val/loss"} <= set(expected)
    assert _history(client, run_id) == expected
    assert [s for s, _ in expected["train/loss"]] == [1, 2, 3, 4, 5, 6]
    assert (
        run.data.tags[CHECKPOINT_TAG]
        == find_last(str(tmp_path))
        == trainer.checkpoint_callback.last_model_path
    )


def test_stop_and_resume_continue_the_same_run_with_each_step_once(tmp_path):
    whole = tmp_path / "whole"
    tracked.fit(whole, MLFlowLogger(experiment_name="exp"), max_steps=6)
    uninterrupted = tracked.csv_history(whole)

    parts = tmp_path / "parts"
    first = MLFlowLogger(experiment_name="exp")
    tracked.fit(parts, first, max_steps=3)
    second = MLFlowLogger(experiment_name="exp")  # a new process would build a new logger
    tracked.fit(parts, second, max_steps=6, ckpt_path="last")
    assert second.run_id == first.run_id
    client = _client(parts)
    assert _only_run(client, "exp") == first.run_id
    history = _history(client, first.run_id)
    assert history == tracked.csv_history(parts)  # both fits' CSV rows, each step once
    assert tracked.steps(history)["train/loss"] == [1, 2, 3, 4, 5, 6]
    assert history["train/loss"] == uninterrupted["train/loss"]  # resume is exact


def test_resuming_from_an_older_checkpoint_logs_no_step_twice(tmp_path):
    """Interrupted after step 5 with a checkpoint at step 3: steps 4 and 5 run again but are not re-logged."""
    whole = tmp_path / "whole"
    tracked.fit(whole, MLFlowLogger(), max_steps=6)
    expected = tracked.csv_history(whole)
    parts = tmp_path / "parts"
    first = MLFlowLogger()
    tracked.fit(parts, first, max_steps=5)
    step3 = next(p for p in (parts / "checkpoints").iterdir() if p.name.endswith("3"))
    tracked.fit(parts, MLFlowLogger(), max_steps=6, ckpt_path=str(step3))
    client = _client(parts)
    history = _history(client, _only_run(client, "tasktrain"))
    for key, found in tracked.steps(history).items():
        assert found == sorted(set(found)), key  # no step twice
    assert tracked.steps(history)["train/loss"] == [1, 2, 3, 4, 5, 6]
    assert history["train/loss"] == expected["train/loss"]


def test_any_tracking_uri_is_used(tmp_path):
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    logger = MLFlowLogger(experiment_name="e2", tracking_uri=uri)
    tracked.fit(tmp_path / "root", logger, max_steps=2)
    assert not (tmp_path / "root" / "mlflow.db").exists()
    client = MlflowClient(uri)
    assert _only_run(client, "e2") == logger.run_id
    assert [m.step for m in client.get_metric_history(logger.run_id, "train/loss")] == [1, 2]


def test_cli_selects_it_by_name_and_keeps_the_config_file_as_an_artifact(tmp_path, capsys):
    from tasktrain.cli import main

    task = Path(__file__).parent.parent / "cli" / "tiny_task.py"
    root = tmp_path / "runs"
    status = main(
        [
            "fit",
            "--task",
            str(task),
            "--trainer.max_steps",
            "3",
            "--trainer.logger",
            "MLFlowLogger",
            "--trainer.logger.experiment_name",
            "cli",
            "--trainer.default_root_dir",
            str(root),
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.log_every_n_steps",
            "1",
        ]
    )
    assert status == 0
    client = _client(root)
    run_id = _only_run(client, "cli")
    assert [a.path for a in client.list_artifacts(run_id)] == ["config.yaml"]
    local = client.download_artifacts(run_id, "config.yaml", str(tmp_path))
    assert "MLFlowLogger" in Path(local).read_text()
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [1, 2, 3]
    assert client.get_run(run_id).data.params["lr"] == "0.1"


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match=r"MLFlowLogger\(experiment_name=''\): must be a non-empty str"):
        MLFlowLogger(experiment_name="")
    logger = MLFlowLogger()
    logger.set_default_root_dir("memory://runs")
    with pytest.raises(ValueError, match=r"not a local directory.*pass tracking_uri"):
        logger.resolved_tracking_uri  # noqa: B018


def test_under_ddp_rank_0_logs_one_run_that_a_resume_continues(tmp_path):
    """Two gloo ranks: only rank 0 writes; the launching process learns the run id from rank 0's state."""
    first = MLFlowLogger(experiment_name="ddp")
    tracked.fit(tmp_path, first, max_steps=2, strategy="ddp", devices=2)
    assert first.run_id is not None  # adopted from rank 0
    second = MLFlowLogger(experiment_name="ddp")
    tracked.fit(tmp_path, second, max_steps=4, ckpt_path="last", strategy="ddp", devices=2)
    assert second.run_id == first.run_id
    client = _client(tmp_path)
    assert _only_run(client, "ddp") == first.run_id
    history = _history(client, first.run_id)
    assert tracked.steps(history)["train/loss"] == [1, 2, 3, 4]
    assert history == tracked.csv_history(tmp_path)
