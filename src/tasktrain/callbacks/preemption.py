"""``Preemption``: on SIGTERM (or other signals), finish the step, save a checkpoint, exit."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import warnings
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from tasktrain.callbacks.base import Callback
from tasktrain.callbacks.checkpoint import ModelCheckpoint

if TYPE_CHECKING:
    from tasktrain.module import TaskModule
    from tasktrain.trainer import Trainer

#: The exit status of a process that saved a checkpoint because it was asked to stop.
#: Distinct from 0 (finished) and 1 (crashed), so a job script can requeue on it.
EXIT_PREEMPTED = 99

#: Signals received by a rank before any Preemption was armed (recorded by :func:`catch_early_signals`).
_EARLY: list[signal.Signals] = []


def catch_early_signals(signals: Sequence[signal.Signals] = (signal.SIGTERM,)) -> None:
    """Record ``signals`` from now on instead of dying of them, for the next :meth:`Preemption.arm`.

    The ``devices=N`` launcher calls it first thing in every rank, so a SIGTERM that arrives while
    the rank imports the user's script and builds the Trainer still ends in a clean exit 99.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in signals:
        signal.signal(sig, lambda signum, frame: _EARLY.append(signal.Signals(signum)))


class Preemption(Callback):
    """Turn a termination signal into: finish the current optimizer step, checkpoint, exit ``exit_code``.

    Installed by default when checkpointing is enabled. The handlers are active only while
    ``fit`` runs (and only in the main thread), from the moment the process group is up: a signal
    during the rest of set-up or checkpoint restore ends the fit when training would start, with
    ``exit_code`` and without a new checkpoint when there is nothing new to save (the run is
    where it started or was restored from). While the process group forms, the default action
    stays: a rank stuck connecting to its peers must remain killable by the launcher. The
    previous handlers are restored afterwards. The next ``fit(ckpt_path="auto")`` resumes exactly.

    Args:
        signals: names of the signals to act on.
        exit_code: the exit status after the checkpoint (99: requeue me).
        requeue: under SLURM, rank 0 runs ``scontrol requeue $SLURM_JOB_ID`` after the checkpoint
            (``<array job>_<task>`` for array jobs), so the job is requeued whatever exit status
            the launcher reports (torchrun turns 99 into 1).
        check_every_n_steps: under several processes, agree on a stop every this many optimizer
            steps (default: the Trainer's ``log_every_n_steps``; see below).

    How soon a signal is acted on: in one process, at the end of the optimizer step during which
    it arrived. Under several processes the ranks must agree to stop at the same step, which
    takes a collective; so they agree only every ``check_every_n_steps`` optimizer steps
    (default: the Trainer's ``log_every_n_steps``, steps that sync anyway) and at the end of
    training. The stop then comes at most ``check_every_n_steps`` steps after the signal: keep
    that many steps shorter than the grace period between SIGTERM and SIGKILL (SLURM's
    ``KillWait``, or ``--signal=TERM@SECONDS``).

    Example:
        >>> import tasktrain as tt
        >>> trainer = tt.Trainer(callbacks=[Preemption(signals=("SIGTERM", "SIGUSR1"), requeue=True)])
    """

    def __init__(
        self,
        signals: Sequence[str] = ("SIGTERM",),
        exit_code: int = EXIT_PREEMPTED,
        requeue: bool = False,
        check_every_n_steps: int | None = None,
    ) -> None:
        if check_every_n_steps is not None and (
            not isinstance(check_every_n_steps, int)
            or isinstance(check_every_n_steps, bool)
            or check_every_n_steps < 1
        ):
            raise ValueError(
                f"Preemption(check_every_n_steps={check_every_n_steps!r}): accepted values are None or an int >= 1"
            )
        self.check_every_n_steps = check_every_n_steps
        unknown = [
            name for name in signals if not isinstance(getattr(signal, str(name), None), signal.Signals)
        ]
        if unknown:
            raise ValueError(f"Preemption(signals={list(signals)!r}): unknown signal names {unknown}")
        self.signals = [signal.Signals[name] for name in signals]
        if not isinstance(requeue, bool):
            raise TypeError(f"Preemption(requeue={requeue!r}): must be True or False")
        self.exit_code = exit_code
        self.requeue = requeue
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}
        self._armed = False
        self._restored_step: int | None = None

    def arm(self) -> None:
        """Install the handlers now (the Trainer calls it once the process group is up, before the restore).

        A signal recorded earlier by :func:`catch_early_signals` counts as received.
        """
        self.received = None
        self._restored_step = None
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.signals:
            self._previous.setdefault(sig, signal.signal(sig, self._handle))
        early = [sig for sig in _EARLY if sig in self.signals]
        _EARLY.clear()
        if early:
            self.received = early[0]
        self._armed = True

    @override
    def on_load_checkpoint(
        self, trainer: Trainer, module: TaskModule[Any], checkpoint: dict[str, Any]
    ) -> None:
        self._restored_step = trainer.state.global_step

    @override
    def on_fit_start(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        if not self._armed:
            self.arm()
        # One collective per fit (not per step): a signal that came during set-up or restore.
        if trainer.strategy.any_rank(self.received is not None):
            step = trainer.state.global_step
            if step in (0, self._restored_step):  # nothing new since the start or the restored checkpoint
                self._exit(trainer)
            self._checkpoint_and_exit(trainer)

    @override
    def on_train_step_end(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        if self._requested(trainer, agree_now=self._due(trainer)):
            self._checkpoint_and_exit(trainer)

    @override
    def on_train_end(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        if self._requested(trainer):
            self._checkpoint_and_exit(trainer)

    @override
    def on_fit_end(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        self._restore_handlers()

    @override
    def on_exception(self, trainer: Trainer, module: TaskModule[Any], error: BaseException) -> None:
        self._restore_handlers()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum)  # acted on at the end of the current optimizer step

    def _due(self, trainer: Trainer) -> bool:
        every = self.check_every_n_steps or trainer.log_every_n_steps
        return trainer.state.global_step % every == 0

    def _requested(self, trainer: Trainer, agree_now: bool = True) -> bool:
        if trainer.strategy.world_size == 1:  # nothing to agree on: a Python flag, no sync
            return self.received is not None
        # A collective, so every rank stops at the same step: only when due (see the class docstring).
        return agree_now and trainer.strategy.any_rank(self.received is not None)

    def _checkpoint_and_exit(self, trainer: Trainer) -> None:
        checkpoint = next((cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)), None)
        if checkpoint is not None:
            checkpoint.save(trainer)
        else:
            trainer.save_checkpoint(
                f"{trainer.default_root_dir}/checkpoints/step={trainer.state.global_step:08d}"
            )
        trainer.wait_for_checkpoint()  # an async_save is complete before the process exits
        self._exit(trainer)

    def _exit(self, trainer: Trainer) -> None:
        if self.requeue and trainer.is_global_zero:
            requeue_slurm_job()
        self._restore_handlers()
        raise SystemExit(self.exit_code)

    def _restore_handlers(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        self._armed = False


def requeue_slurm_job() -> bool:
    """Run ``scontrol requeue`` for this SLURM job (as Lightning does); False, with a warning, if it could not.

    Example:
        >>> requeue_slurm_job()  # doctest: +SKIP
        True
    """
    job = os.environ.get("SLURM_JOB_ID")
    if "SLURM_ARRAY_JOB_ID" in os.environ and "SLURM_ARRAY_TASK_ID" in os.environ:
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    if job is None:
        warnings.warn(
            "Preemption(requeue=True): SLURM_JOB_ID is not set (not a SLURM job); nothing requeued",
            stacklevel=2,
        )
        return False
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        warnings.warn(f"Preemption(requeue=True): `scontrol requeue {job}` failed: {err}", stacklevel=2)
        return False
    if done.returncode != 0:
        warnings.warn(
            f"Preemption(requeue=True): `scontrol requeue {job}` exited {done.returncode}: {done.stderr.strip()}",
            stacklevel=2,
        )
        return False
    return True
