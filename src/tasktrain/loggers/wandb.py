"""``WandbLogger``: a Weights & Biases run (offline by default) that a resumed fit continues."""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from typing import Any

from lightning_utilities.core.imports import RequirementCache
from lightning_utilities.core.rank_zero import rank_zero_only

from tasktrain.loggers.base import Logger

_WANDB = RequirementCache("wandb>=0.18")
MODES = ("offline", "online", "disabled")


class WandbLogger(Logger):
    """Log to Weights & Biases: the config, metrics by step, artifacts, the checkpoint path.

    ``mode="offline"`` (the default) needs no account and no network: the run is written under
    ``{save_dir}/wandb/offline-run-*`` (``save_dir`` defaults to the Trainer's
    ``default_root_dir``) and ``wandb sync`` uploads it later. The run starts at the first write
    of the first fit (rank 0 only); the hyperparameters become its config, metrics are logged
    with their optimizer step, the CLI's ``config.yaml`` is saved with the run, and each saved
    checkpoint's path is the summary value ``checkpoint_path``.

    The run id is part of every checkpoint: a fit resumed from one continues the same W&B run
    (``resume="allow"``; offline, a new ``offline-run-*`` directory with the same id, which
    ``wandb sync`` appends), and steps up to the last one logged before that checkpoint are not
    logged again. Needs the ``wandb`` extra, imported at the first write.

    Args:
        project: the W&B project.
        name: the run's display name.
        mode: ``"offline"``, ``"online"`` or ``"disabled"``.
        save_dir: the directory for W&B's files (default: ``default_root_dir``).
        entity: the W&B team or user (online).
        tags: tags of the run.
        id: continue this run id (default: a new id, or the checkpoint's).

    Example:
        >>> trainer = tt.Trainer(logger=WandbLogger(project="bert"))  # doctest: +SKIP
    """

    def __init__(
        self,
        project: str = "tasktrain",
        name: str | None = None,
        mode: str = "offline",
        save_dir: str | None = None,
        entity: str | None = None,
        tags: Sequence[str] | None = None,
        id: str | None = None,
    ) -> None:
        if not _WANDB:
            raise ModuleNotFoundError(
                f'WandbLogger needs wandb: pip install "tasktrain[wandb]" ({_WANDB.message})'
            )
        if mode not in MODES:
            raise ValueError(f"WandbLogger(mode={mode!r}): accepted values are {list(MODES)}")
        self.project = project
        self.name = name
        self.mode = mode
        self.save_dir = save_dir
        self.entity = entity
        self.tags = list(tags or [])
        self._root_dir = "runs"
        self._run_id = id
        self._resuming = id is not None
        self._run: Any = None
        self._last_step = -1  # the last step this run holds
        self._resumed_step = -1  # the last step the run held when the loaded checkpoint was saved
        self._pending_artifacts: list[str] = []

    def set_default_root_dir(self, root_dir: str) -> None:
        self._root_dir = root_dir

    @property
    def run_id(self) -> str | None:
        """The W&B run id (None before the run starts, and on ranks other than 0)."""
        return self._run_id

    @property
    def run_dir(self) -> str | None:
        """The directory of the current (or last) run's files (an ``offline-run-*`` folder offline)."""
        return None if self._run is None else os.path.dirname(self._run.dir)

    @property
    def log_dir(self) -> str | None:
        return self.run_dir

    # -- Logger ---------------------------------------------------------------------------------------
    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any]) -> None:
        self._start().config.update(dict(params), allow_val_change=True)

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if step <= self._resumed_step:  # a resumed run already holds this step
            return
        self._start().log(dict(metrics), step=step)
        self._last_step = max(self._last_step, step)

    @rank_zero_only
    def log_artifact(self, path: str) -> None:
        self._pending_artifacts.append(path)  # saved once the run is known (after a resume's load)
        if self._run is not None:
            self._save_pending()

    @rank_zero_only
    def after_save_checkpoint(self, path: str) -> None:
        if self._run is not None:
            self._run.summary["checkpoint_path"] = path

    @rank_zero_only
    def finalize(self) -> None:
        """Finish the run (its files are complete); a later fit, validate or test resumes it."""
        if self._run is not None:
            self._run.finish()
            self._run = None
            self._resuming = True

    # -- Stateful: the run identity in checkpoints ----------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self._run_id, "last_step": self._last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the checkpoint's run (rank 0's; other ranks log nothing)."""
        if state.get("run_id") is not None:
            if self._run is not None and self._run.id != state["run_id"]:
                self._run.finish()
                self._run = None
            self._run_id, self._resuming = state["run_id"], True
            self._resumed_step = int(state.get("last_step", -1))
            self._last_step = max(self._last_step, self._resumed_step)

    def __getstate__(self) -> dict[str, Any]:  # spawned ranks start their own run
        state = self.__dict__.copy()
        state["_run"] = None
        return state

    # -- internals ------------------------------------------------------------------------------------
    def _start(self) -> Any:
        if self._run is None:
            import wandb

            directory = self.save_dir if self.save_dir is not None else self._root_dir
            os.makedirs(directory, exist_ok=True)
            self._run_id = self._run_id or uuid.uuid4().hex[:12]  # W&B ids: lowercase letters and digits
            self._run = wandb.init(
                project=self.project,
                entity=self.entity,
                name=self.name,
                tags=self.tags or None,
                mode=self.mode,  # type: ignore[arg-type]
                dir=directory,
                id=self._run_id,
                resume="allow" if self._resuming else None,
                reinit="create_new",
                settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
            )
        self._save_pending()
        return self._run

    def _save_pending(self) -> None:
        while self._pending_artifacts:
            path = os.path.abspath(self._pending_artifacts.pop(0))
            self._run.save(path, base_path=os.path.dirname(path), policy="now")
