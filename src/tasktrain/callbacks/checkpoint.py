"""``ModelCheckpoint``: when to save checkpoints, and which ones to keep."""

from __future__ import annotations

import math
import re
import time
import warnings
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from fsspec.core import url_to_fs
from typing_extensions import override

from tasktrain.callbacks.base import Callback
from tasktrain.checkpoint.storage import check_writable, remove, remove_leftovers
from tasktrain.monitor import monitored

if TYPE_CHECKING:
    from tasktrain.module import TaskModule
    from tasktrain.trainer import Trainer

_MODES = ("min", "max")
_VALIDATION_NAME = re.compile(r"val(id(ation)?)?[/_.\-]", re.IGNORECASE)  # val/loss, val_loss, valid/…


class ModelCheckpoint(Callback):
    """Save checkpoints on a cadence; keep the newest ``keep_last`` and the best ``save_top_k``.

    At fit start, rank 0 checks that ``dirpath`` can be written (an error naming it comes before
    the first training step, not at the first save) and deletes what interrupted saves left in
    it (``*.tmp-<8 hex>`` directories, and ``*.old-<8 hex>`` ones whose checkpoint is complete
    again at its own path); nothing else there is touched.

    The two retention policies are independent: a checkpoint is deleted only when it is neither
    among the newest ``keep_last`` nor among the ``save_top_k`` best by ``monitor``. The newest
    checkpoint and the best one are never deleted. A NaN metric is never best.

    Args:
        dirpath: where to save (default ``{default_root_dir}/checkpoints``); any fsspec URL.
        filename: a template with ``{step}``, ``{epoch}`` and logged metrics, e.g.
            ``"step={step:08d}-{val/loss:.3f}"`` (``/`` in metric names may be written ``_``).
        every_n_train_steps: save after every this many optimizer steps.
        every_n_epochs: save at the end of every this many epochs.
        train_time_interval: save when this much time (a ``timedelta`` or seconds) has passed.
        save_last: also save at the end of fit.
        keep_last: how many of the newest checkpoints to keep (None: all).
        monitor: the metric that ranks checkpoints for ``save_top_k``. A save before it can have
            been logged records no score; a save without it after the first validation (for a
            ``val…`` name) or after the first epoch end and validation (any other name) raises
            a ``KeyError`` listing the logged names.
        mode: ``"min"`` or ``"max"``: which direction of ``monitor`` is better.
        save_top_k: how many of the best checkpoints to keep (-1: all).
        max_shard_bytes: split weights into safetensors shards of at most this size.
        restore_best: at the end of ``fit`` (after the last save), load the weights of the best
            checkpoint by ``monitor`` into the module (HF's ``load_best_model_at_end``); sharded
            checkpoints too. Needs ``monitor``.
        async_save: write in the background (the loop waits only while tensors are copied);
            one save in flight, the next save and the end of ``fit`` wait for it, and retention
            runs once it is committed (so a checkpoint it would replace stays until then).

    The best checkpoint is also what ``Trainer.validate/test/predict(ckpt_path="best")`` loads,
    and ``FitResult.best_model_path`` / ``best_model_score`` name it.

    Example:
        >>> ckpt = ModelCheckpoint(every_n_train_steps=500, keep_last=2, monitor="val/loss", save_top_k=3)
    """

    def __init__(
        self,
        dirpath: str | None = None,
        filename: str = "step={step:08d}",
        every_n_train_steps: int | None = None,
        every_n_epochs: int | None = 1,
        train_time_interval: timedelta | float | None = None,
        save_last: bool = True,
        keep_last: int | None = 1,
        monitor: str | None = None,
        mode: str = "min",
        save_top_k: int = 1,
        max_shard_bytes: int | None = None,
        restore_best: bool = False,
        async_save: bool = False,
    ) -> None:
        _check_optional_count("every_n_train_steps", every_n_train_steps)
        if not isinstance(async_save, bool):
            raise TypeError(f"ModelCheckpoint(async_save={async_save!r}): must be True or False")
        if not isinstance(restore_best, bool):
            raise TypeError(f"ModelCheckpoint(restore_best={restore_best!r}): must be True or False")
        if restore_best and monitor is None:
            raise ValueError(
                "ModelCheckpoint(restore_best=True) needs monitor= (the metric that says which checkpoint "
                "is best), e.g. monitor='val/loss'"
            )
        _check_optional_count("every_n_epochs", every_n_epochs)
        _check_optional_count("keep_last", keep_last)
        if mode not in _MODES:
            raise ValueError(f"ModelCheckpoint(mode={mode!r}): accepted values are {list(_MODES)}")
        if save_top_k < -1:
            raise ValueError(
                f"ModelCheckpoint(save_top_k={save_top_k!r}): accepted values are -1 (all) or >= 0"
            )
        if "{step" not in filename:
            raise ValueError(
                f"ModelCheckpoint(filename={filename!r}): the template must contain {{step}} so names stay unique"
            )
        seconds = (
            train_time_interval.total_seconds()
            if isinstance(train_time_interval, timedelta)
            else train_time_interval
        )
        if seconds is not None and seconds <= 0:
            raise ValueError(f"ModelCheckpoint(train_time_interval={train_time_interval!r}): must be > 0")
        self.dirpath = dirpath
        self.filename = filename
        self.every_n_train_steps = every_n_train_steps
        self.every_n_epochs = every_n_epochs
        self.train_time_interval = seconds
        self.save_last = save_last
        self.keep_last = keep_last
        self.monitor = monitor
        self.mode = mode
        self.save_top_k = save_top_k
        self.max_shard_bytes = max_shard_bytes
        self.restore_best = restore_best
        self.async_save = async_save
        self._retention_due: str | None = (
            None  # async: the directory to prune once the save in flight is done
        )
        self.saved: list[dict[str, Any]] = []  # oldest first: {"path", "step", "score"}
        self._last_saved_step = -1
        self._last_time = time.monotonic()
        self._reported: set[str] = set()  # what has written its metrics in this fit: "train", "validate"

    @property
    def best(self) -> dict[str, Any] | None:
        """The best saved checkpoint by ``monitor`` (None without a monitor or a finite score)."""
        ranked = self._ranked()
        return ranked[0] if ranked else None

    @property
    def last(self) -> str | None:
        """The path of the newest checkpoint this callback saved."""
        return self.saved[-1]["path"] if self.saved else None

    @property
    def last_model_path(self) -> str:
        """:attr:`last` under Lightning's name ("" when nothing was saved)."""
        return self.last or ""

    @property
    def best_model_path(self) -> str:
        """The path of the best checkpoint by ``monitor`` ("" when there is none)."""
        best = self.best
        return best["path"] if best is not None else ""

    @property
    def best_model_score(self) -> float | None:
        """The ``monitor`` value of the best checkpoint."""
        best = self.best
        return best["score"] if best is not None else None

    # -- when to save ----------------------------------------------------------------------------
    @override
    def on_fit_start(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        if trainer.fast_dev_run:  # a smoke test writes nothing
            return
        dirpath = self._dirpath(trainer)
        error = None
        if trainer.is_global_zero:  # no save is in flight now, so every leftover is stale
            try:
                check_writable(dirpath)
                remove_leftovers(dirpath)
            except OSError as err:
                error = f"ModelCheckpoint(dirpath={dirpath!r}): {err}"
        error = trainer.strategy.broadcast(error)  # every rank fails alike, none waits for rank 0
        if error is not None:
            raise OSError(error)

    @override
    def on_train_start(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        self._last_time = time.monotonic()
        self._reported = set()

    @override
    def on_validation_end(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        if trainer.state.stage == "fit":
            self._reported.add("validate")

    @override
    def on_train_step_end(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        step = trainer.state.global_step
        if (
            self.every_n_train_steps is not None and step % self.every_n_train_steps == 0
        ) or self._time_is_up(trainer):
            self.save(trainer)

    def _time_is_up(self, trainer: Trainer) -> bool:
        """Whether ``train_time_interval`` has passed; under several processes asked on logging steps only.

        Ranks' clocks differ, so they agree with a collective, and only on steps that sync anyway.
        """
        if self.train_time_interval is None:
            return False
        up = time.monotonic() - self._last_time >= self.train_time_interval
        if trainer.strategy.world_size == 1:
            return up
        return trainer.state.global_step % trainer.log_every_n_steps == 0 and trainer.strategy.any_rank(up)

    @override
    def on_train_epoch_end(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        self._reported.add("train")  # the epoch's values (and the step values since the last write) are out
        n = self.every_n_epochs
        if n is not None and (trainer.state.epoch + 1) % n == 0:
            self.save(trainer)

    @override
    def on_fit_end(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        if self.save_last:
            self.save(trainer)
        self.finish_pending(trainer)
        if self.restore_best and not trainer.fast_dev_run:
            self._restore_best(trainer, module)

    def _restore_best(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        """Load the best checkpoint's weights into ``module`` (every rank: sharded loads are collective)."""
        from tasktrain.checkpoint.manager import load_weights

        best = self.best
        if best is None:
            warnings.warn(
                f"ModelCheckpoint(restore_best=True, monitor={self.monitor!r}): no saved checkpoint has a "
                "score for it, so the module keeps its final weights",
                UserWarning,
                stacklevel=2,
            )
            return
        load_weights(best["path"], module, trainer.strategy)

    def save(self, trainer: Trainer) -> str | None:
        """Save now (once per step), then apply retention. Returns the path, or None if already saved
        (or under ``fast_dev_run``)."""
        step = trainer.state.global_step
        if step == self._last_saved_step or trainer.fast_dev_run:
            return None
        self.finish_pending(trainer)  # one save in flight: the previous one is committed (and pruned) first
        score = self._score(trainer)
        dirpath = self._dirpath(trainer)
        path = self._unclaimed(trainer, f"{dirpath}/{self._format_name(trainer)}")
        # Recorded before writing, so the checkpoint's own copy of this state lists itself.
        previous = (list(self.saved), self._last_saved_step)
        self.saved = [entry for entry in self.saved if entry["path"] != path]
        self.saved.append({"path": path, "step": step, "score": score})
        self._last_saved_step = step
        try:
            trainer.save_checkpoint(path, max_shard_bytes=self.max_shard_bytes, async_save=self.async_save)
        except BaseException:
            self.saved, self._last_saved_step = previous
            raise
        self._last_time = time.monotonic()
        if self.async_save:  # retention never deletes a checkpoint before the new one is committed
            self._retention_due = dirpath
        elif trainer.is_global_zero:
            self._apply_retention(dirpath)  # only now that the new checkpoint is committed
        return path

    def finish_pending(self, trainer: Trainer) -> None:
        """Wait for this callback's background save (``async_save``), then apply retention."""
        if self._retention_due is None:
            return
        trainer.wait_for_checkpoint()
        dirpath, self._retention_due = self._retention_due, None
        if trainer.is_global_zero:
            self._apply_retention(dirpath)

    def _unclaimed(self, trainer: Trainer, path: str) -> str:
        """``path``, or ``path-v1``, ``path-v2``, ... when something this callback did not write is
        there (another run's checkpoint in a shared root): it never overwrites what is not its own.
        Rank 0 looks; every rank gets its answer (one broadcast per save)."""
        chosen = None
        if trainer.is_global_zero:
            ours = {entry["path"] for entry in self.saved}
            fs, _ = url_to_fs(path)
            chosen, version = path, 0
            while chosen not in ours and fs.exists(chosen):
                version += 1
                chosen = f"{path}-v{version}"
        return str(trainer.strategy.broadcast(chosen))

    def _dirpath(self, trainer: Trainer) -> str:
        return (self.dirpath or f"{trainer.default_root_dir}/checkpoints").rstrip("/")

    # -- what to keep ----------------------------------------------------------------------------
    def _apply_retention(self, dirpath: str) -> None:
        # Checkpoints elsewhere (e.g. the one a run resumed from, in another directory) are never ours to delete.
        self.saved = [e for e in self.saved if e["path"].startswith(f"{dirpath}/")]
        keep = {self.saved[-1]["path"]}  # the newest, always
        if self.keep_last is not None:
            keep.update(entry["path"] for entry in self.saved[-self.keep_last :])
        else:
            keep.update(entry["path"] for entry in self.saved)
        ranked = self._ranked()
        if self.monitor is not None:
            top = ranked if self.save_top_k == -1 else ranked[: max(self.save_top_k, 1)]  # the best, always
            keep.update(entry["path"] for entry in top)
        for entry in [e for e in self.saved if e["path"] not in keep]:
            remove(entry["path"])
            self.saved.remove(entry)

    def _ranked(self) -> list[dict[str, Any]]:
        scored = [e for e in self.saved if e["score"] is not None]
        return sorted(scored, key=lambda e: e["score"], reverse=self.mode == "max")

    def _monitor_is_due(self, trainer: Trainer) -> bool:
        """Whether ``monitor`` must be logged by now: a save without it is then a mistake, not a wait.

        Due once everything that could log it has written its metrics in this fit: for a name
        starting with ``val`` (``val/…``, ``val_…``, ``valid…``) the first validation run; for
        any other name the first epoch end and, when the fit has validation data, the first
        validation run.
        """
        if self.monitor is None:
            return False
        if "validate" in self._reported and _VALIDATION_NAME.match(self.monitor):
            return True
        return "train" in self._reported and ("validate" in self._reported or trainer.val_dataloader is None)

    def _score(self, trainer: Trainer) -> float | None:
        metrics = trainer.callback_metrics
        if self.monitor is None or (self.monitor not in metrics and not self._monitor_is_due(trainer)):
            return None  # not logged yet, e.g. a step checkpoint before the first validation
        value = monitored(metrics, self.monitor, "ModelCheckpoint")
        return value if not math.isnan(value) else None  # NaN is never best

    def _format_name(self, trainer: Trainer) -> str:
        metrics = trainer.callback_metrics
        values: dict[str, Any] = {"step": trainer.state.global_step, "epoch": trainer.state.epoch}
        values.update(metrics)
        values.update({name.replace("/", "_"): value for name, value in metrics.items()})
        try:
            return self.filename.format(**values).replace("/", "_")
        except KeyError as err:
            raise KeyError(
                f"ModelCheckpoint(filename={self.filename!r}) uses {err}, which was not logged; logged: {sorted(metrics)}"
            ) from None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"saved": [dict(e) for e in self.saved], "last_saved_step": self._last_saved_step}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.saved = [dict(e) for e in state["saved"]]
        self._last_saved_step = int(state["last_saved_step"])


def monitoring_checkpoint(callbacks: Sequence[Callback]) -> ModelCheckpoint | None:
    """The first ``ModelCheckpoint`` among ``callbacks`` that monitors a metric (None if none does)."""
    return next((cb for cb in callbacks if isinstance(cb, ModelCheckpoint) and cb.monitor is not None), None)


def best_checkpoint_path(callbacks: Sequence[Callback], who: str) -> str:
    """The path of the best checkpoint of the first monitoring ``ModelCheckpoint`` (``ckpt_path="best"``).

    Raises:
        ValueError: there is no ``ModelCheckpoint``, or none monitors a metric.
        FileNotFoundError: the monitoring one has saved no checkpoint with a score yet.

    Example:
        >>> best_checkpoint_path([ModelCheckpoint()], "Trainer.test")
        Traceback (most recent call last):
        ...
        ValueError: Trainer.test(ckpt_path='best'): no ModelCheckpoint monitors a metric, so no checkpoint is best; give the Trainer ModelCheckpoint(monitor='val/loss') (or another logged name) before fit, or pass ckpt_path='last' or a path
    """
    checkpoint = monitoring_checkpoint(callbacks)
    if checkpoint is None:
        has_any = any(isinstance(cb, ModelCheckpoint) for cb in callbacks)
        what = "no ModelCheckpoint monitors a metric" if has_any else "the Trainer has no ModelCheckpoint"
        raise ValueError(
            f"{who}(ckpt_path='best'): {what}, so no checkpoint is best; give the Trainer "
            "ModelCheckpoint(monitor='val/loss') (or another logged name) before fit, or pass "
            "ckpt_path='last' or a path"
        )
    best = checkpoint.best
    if best is None:
        raise FileNotFoundError(
            f"{who}(ckpt_path='best'): ModelCheckpoint(monitor={checkpoint.monitor!r}) has saved no "
            f"checkpoint with a score yet; run fit on this trainer first (with {checkpoint.monitor!r} "
            "logged before its saves), or resume its state with fit(ckpt_path=...)"
        )
    return str(best["path"])


def _check_optional_count(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"ModelCheckpoint({name}={value!r}): accepted values are None or an int >= 1")
