"""``Preemption``: on SIGTERM (or other signals), finish the step, save a checkpoint, exit."""

from __future__ import annotations

import signal
import threading
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


class Preemption(Callback):
    """Turn a termination signal into: finish the current optimizer step, checkpoint, exit ``exit_code``.

    Installed by default when checkpointing is enabled. The handlers are active only while
    ``fit`` runs (and only in the main thread); the previous handlers are restored afterwards.
    The next ``fit(ckpt_path="last")`` resumes exactly.

    How soon a signal is acted on: in one process, at the end of the optimizer step during which
    it arrived. Under several processes the ranks must agree to stop at the same step, which
    takes a collective; so they agree only every ``check_every_n_steps`` optimizer steps
    (default: the Trainer's ``log_every_n_steps``, steps that sync anyway) and at the end of
    training. The stop then comes at most ``check_every_n_steps`` steps after the signal: keep
    that many steps shorter than the grace period between SIGTERM and SIGKILL (SLURM's
    ``KillWait``, or ``--signal=TERM@SECONDS``).

    Args:
        signals: the signal names to act on.
        exit_code: the exit status after the checkpoint (:data:`EXIT_PREEMPTED`).
        check_every_n_steps: under several processes, agree on a stop every this many steps.

    Example:
        >>> import tasktrain as tt
        >>> trainer = tt.Trainer(callbacks=[Preemption(signals=("SIGTERM", "SIGUSR1"))])
    """

    def __init__(
        self,
        signals: Sequence[str] = ("SIGTERM",),
        exit_code: int = EXIT_PREEMPTED,
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
        self.exit_code = exit_code
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    @override
    def on_fit_start(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        self.received = None
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)

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
        self._restore_handlers()
        raise SystemExit(self.exit_code)

    def _restore_handlers(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
