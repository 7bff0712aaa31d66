"""``MLFlowLogger``: hyperparameters, metrics by step, the CLI config and the final checkpoint path in an
MLflow run that a resumed fit continues."""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Mapping
from typing import Any

from lightning_utilities.core.imports import RequirementCache
from lightning_utilities.core.rank_zero import rank_zero_only

from tasktrain.loggers.base import Logger

_MLFLOW = RequirementCache("mlflow>=2.16")
CHECKPOINT_TAG = "tasktrain.checkpoint_path"
_MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter value (mlflow.utils.validation)


class MLFlowLogger(Logger):
    """Log to an MLflow tracking store: parameters, metrics by step, artifacts, the checkpoint path.

    Without ``tracking_uri`` the store is a local sqlite database, ``{default_root_dir}/mlflow.db``
    (artifacts under ``{default_root_dir}/mlartifacts``); any URI MLflow accepts works
    (``http://...``, ``databricks``, ``sqlite:///...``). The run is created at the start of the
    first fit (rank 0 only) in ``experiment_name`` (created when missing). Hyperparameters are
    logged flat (``model.config.hidden_size``), metrics with their optimizer step, the CLI's
    ``config.yaml`` as an artifact, and each saved checkpoint's path as the tag
    ``tasktrain.checkpoint_path`` (so, at the end, the final checkpoint's).

    The run id is part of every checkpoint: a fit resumed from one continues the same MLflow run,
    and a step the run already holds for a metric (logged after that checkpoint, before the
    interruption) is not logged again, so each step is in the history exactly once. Needs the
    ``mlflow`` extra, imported at the first write.

    Args:
        experiment_name: the MLflow experiment of the run.
        tracking_uri: where the tracking store is (default: the sqlite database above).
        run_name: the run's display name (MLflow picks one when None).
        tags: tags set on the run when it is created.
        run_id: log into this existing run instead of creating one.

    Example:
        >>> trainer = tt.Trainer(logger=MLFlowLogger(experiment_name="bert"))  # doctest: +SKIP
        >>> MlflowClient("sqlite:///runs/mlflow.db").get_metric_history(run_id, "train/loss")  # doctest: +SKIP
    """

    def __init__(
        self,
        experiment_name: str = "tasktrain",
        tracking_uri: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        run_id: str | None = None,
    ) -> None:
        if not _MLFLOW:
            raise ModuleNotFoundError(
                f'MLFlowLogger needs mlflow: pip install "tasktrain[mlflow]" ({_MLFLOW.message})'
            )
        if not isinstance(experiment_name, str) or not experiment_name:
            raise ValueError(f"MLFlowLogger(experiment_name={experiment_name!r}): must be a non-empty str")
        self.experiment_name = experiment_name
        self.tracking_uri = tracking_uri
        self.run_name = run_name
        self.tags = dict(tags or {})
        self._root_dir = "runs"
        self._run_id = run_id
        self._client: Any = None
        self._logged_steps: dict[str, int] = {}  # per metric, the last step the run already holds
        self._history_read = run_id is None  # an existing run: read what it holds before logging
        self._pending_artifacts: list[str] = []

    # -- where --------------------------------------------------------------------------------------
    def set_default_root_dir(self, root_dir: str) -> None:
        self._root_dir = root_dir

    @property
    def resolved_tracking_uri(self) -> str:
        """The tracking URI in use: ``tracking_uri``, else ``sqlite:///{default_root_dir}/mlflow.db``."""
        if self.tracking_uri is not None:
            return self.tracking_uri
        return f"sqlite:///{self._local_root()}/mlflow.db"

    @property
    def run_id(self) -> str | None:
        """The MLflow run's id (None before the run starts, and on ranks other than 0)."""
        return self._run_id

    @property
    def experiment_id(self) -> str | None:
        """The experiment's id (looked up through the tracking store; None before the run starts)."""
        if self._run_id is None:
            return None
        return str(self._require_client().get_run(self._run_id).info.experiment_id)

    # -- Logger ---------------------------------------------------------------------------------------
    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        client = self._start()
        existing = client.get_run(self._run_id).data.params
        flat = {k: _param_text(v) for k, v in flatten_params(params).items()}
        changed = sorted(k for k, v in flat.items() if k in existing and existing[k] != v)
        if changed:  # MLflow parameters cannot change; a resumed run keeps the first values
            warnings.warn(
                f"MLFlowLogger: run {self._run_id} already has other values for {changed[:5]}; MLflow "
                "parameters cannot change, the first values are kept",
                stacklevel=2,
            )
        new = [Param(k, v) for k, v in flat.items() if k not in existing]
        for i in range(0, len(new), 100):  # MLflow takes at most 100 parameters per batch
            client.log_batch(self._run_id, params=new[i : i + 100])

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        client = self._start()
        now = int(time.time() * 1000)
        rows = [
            Metric(key, float(value), now, step)
            for key, value in metrics.items()
            if step > self._logged_steps.get(key, -1)  # a resumed run already holds this step
        ]
        if rows:
            client.log_batch(self._run_id, metrics=rows)
        for row in rows:
            self._logged_steps[row.key] = step

    @rank_zero_only
    def log_artifact(self, path: str) -> None:
        self._pending_artifacts.append(path)  # uploaded once the run is known (after a resume's load)
        if self._client is not None and self._run_id is not None:
            self._upload_pending()

    @rank_zero_only
    def after_save_checkpoint(self, path: str) -> None:
        if self._run_id is not None:
            self._start().set_tag(self._run_id, CHECKPOINT_TAG, path)

    @rank_zero_only
    def finalize(self) -> None:
        if self._client is not None and self._run_id is not None:
            self._client.set_terminated(self._run_id, "FINISHED")

    # -- Stateful: the run identity in checkpoints ----------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self._run_id, "experiment_name": self.experiment_name}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the checkpoint's run (rank 0's; other ranks log nothing)."""
        run_id = state.get("run_id")
        if run_id is not None and run_id != self._run_id:
            self._run_id = run_id
            self._history_read = False  # read at the next write

    def __getstate__(self) -> dict[str, Any]:  # spawned ranks build their own client
        state = self.__dict__.copy()
        state["_client"] = None
        return state

    # -- internals ------------------------------------------------------------------------------------
    def _start(self) -> Any:
        """The client, with the run created (or, for a resumed run, found and marked running)."""
        client = self._require_client()
        if self._run_id is None:
            run = client.create_run(self._experiment(client), tags=self.tags, run_name=self.run_name)
            self._run_id, self._logged_steps, self._history_read = run.info.run_id, {}, True
        elif not self._history_read:
            client.update_run(self._run_id, status="RUNNING")
            self._read_logged_steps()
            self._history_read = True
        self._upload_pending()
        return client

    def _require_client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            if self.tracking_uri is None:
                os.makedirs(self._local_root(), exist_ok=True)
            self._client = MlflowClient(tracking_uri=self.resolved_tracking_uri)
        return self._client

    def _experiment(self, client: Any) -> str:
        found = client.get_experiment_by_name(self.experiment_name)
        if found is not None:
            return str(found.experiment_id)
        location = None if self.tracking_uri is not None else f"file://{self._local_root()}/mlartifacts"
        return str(client.create_experiment(self.experiment_name, artifact_location=location))

    def _read_logged_steps(self) -> None:
        client = self._client
        run = client.get_run(self._run_id)
        self._logged_steps = {
            key: max(m.step for m in client.get_metric_history(self._run_id, key)) for key in run.data.metrics
        }

    def _upload_pending(self) -> None:
        while self._pending_artifacts:
            self._client.log_artifact(self._run_id, self._pending_artifacts.pop(0))

    def _local_root(self) -> str:
        if "://" in self._root_dir:
            raise ValueError(
                f"MLFlowLogger: default_root_dir={self._root_dir!r} is not a local directory, so it cannot hold the "
                "default sqlite tracking store; pass tracking_uri=..."
            )
        return os.path.abspath(self._root_dir)


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys, the way tracking stores that hold flat parameters want them.

    Example:
        >>> flatten_params({"lr": 0.1, "model": {"config": {"hidden": 8}}})
        {'lr': 0.1, 'model.config.hidden': 8}
    """
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _param_text(value: Any) -> str:
    text = repr(value) if isinstance(value, float) and not math.isfinite(value) else str(value)
    return text[:_MAX_PARAM_LENGTH]
