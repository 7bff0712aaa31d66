"""Hyperparameter search with optuna: one Trainer run per trial, pruned from validation metrics.

``search(task, space)`` builds ``task(**space(trial))`` for every trial, fits it in its own run
directory (``root_dir/trial_0003/``) and reports the monitored metric to optuna, which prunes
unpromising trials through :class:`PruningCallback`. Works on one process, with ``devices=N``
(the launching process owns the study and serves the spawned ranks) and under torchrun (rank 0
owns the study and broadcasts each trial's parameters). optuna is an extra:
``pip install "tasktrain[tune]"``. See ``docs/concepts/tune.md``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Client, Listener
from typing import TYPE_CHECKING, Any, Literal

from fsspec.core import url_to_fs
from lightning_utilities.core.imports import RequirementCache
from torch.utils.data import DataLoader
from typing_extensions import override

from tasktrain.callbacks.base import Callback
from tasktrain.module import TaskModule
from tasktrain.monitor import monitored
from tasktrain.seed import seed_everything
from tasktrain.trainer import Trainer

if TYPE_CHECKING:
    import optuna

    from tasktrain.strategies.base import Strategy

_OPTUNA = RequirementCache("optuna>=4.0")
_DIRECTIONS = ("minimize", "maximize")

Space = Callable[["optuna.Trial"], Mapping[str, Any]]


def _require_optuna() -> None:
    if not _OPTUNA:
        raise ModuleNotFoundError(
            f'tasktrain.tune needs optuna>=4.0: pip install "tasktrain[tune]" ({_OPTUNA.message})'
        )


@dataclass
class SearchResult:
    """What :func:`search` returns: the best trial, where its files are, and the optuna study.

    ``best_params`` are the values optuna suggested (``study.best_params``); ``best_checkpoint``
    is the newest checkpoint of the best trial (None without checkpointing). ``study`` is None on
    ranks other than 0 under torchrun (rank 0 owns it).
    """

    best_params: dict[str, Any]
    best_value: float
    best_trial_number: int
    best_run_dir: str
    best_checkpoint: str | None
    study: optuna.Study | None


class PruningCallback(Callback):
    """Report ``monitor`` to an optuna trial after each validation during fit; prune when told.

    The value reported is rank 0's (broadcast to every rank), at step ``global_step``. When the
    pruner says so, every rank raises ``optuna.TrialPruned`` (``Trainer.fit`` calls
    ``on_exception``, finalizes the loggers and re-raises it, so optuna records the trial as
    pruned). In ranks spawned by ``devices=N`` the trial lives in the launching process:
    :func:`search` passes a proxy, the ranks stop the fit instead, and ``search`` marks the trial
    pruned when ``fit`` returns.

    Example:
        >>> def objective(trial):  # doctest: +SKIP
        ...     trainer = tt.Trainer(max_epochs=10, callbacks=[PruningCallback(trial, "val/loss")])
        ...     trainer.fit(MyTask(lr=trial.suggest_float("lr", 1e-4, 1e-1, log=True)))
        ...     return trainer.callback_metrics["val/loss"]
    """

    def __init__(self, trial: optuna.Trial | _RemoteTrial | None, monitor: str = "val/loss") -> None:
        _require_optuna()
        self.trial = trial  # None on the ranks of a torchrun search that do not own the study
        self.monitor = monitor
        self.pruned_at_step: int | None = None

    @override
    def on_validation_end(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        if trainer.state.stage != "fit":
            return
        value = trainer.strategy.broadcast(
            monitored(trainer.callback_metrics, self.monitor, "PruningCallback")
        )
        step = trainer.state.global_step
        prune = False
        if trainer.is_global_zero and self.trial is not None:
            prune = _report(self.trial, value, step)
        if not trainer.strategy.broadcast(prune):
            return
        self.pruned_at_step = step
        if isinstance(self.trial, _RemoteTrial):  # a spawned rank: end the fit, the launcher raises
            trainer.state.should_stop = True
            return
        import optuna

        raise optuna.TrialPruned(f"pruned at step {step} with {self.monitor}={value:.6g}")

    def __getstate__(self) -> dict[str, Any]:
        if self.trial is not None and not isinstance(self.trial, _RemoteTrial):
            raise TypeError(
                "PruningCallback holds an optuna Trial, which cannot travel to the processes that "
                "devices=N spawns (their reports would reach a copy of the study): run the trials "
                "with tasktrain.tune.search, which serves the trial to the ranks, or under torchrun"
            )
        return dict(self.__dict__)


def _report(trial: optuna.Trial | _RemoteTrial, value: float, step: int) -> bool:
    """Report ``value`` at ``step``; return whether the pruner stops the trial."""
    if isinstance(trial, _RemoteTrial):
        return trial.report(value, step)
    trial.report(value, step)
    return trial.should_prune()


# -- devices=N: the launching process answers the spawned ranks' reports --------------------------
@dataclass(frozen=True)
class _RemoteTrial:
    """What spawned ranks hold instead of a trial: the address of the launching process's server."""

    address: tuple[str, int]
    authkey: bytes

    def report(self, value: float, step: int) -> bool:
        with Client(self.address, authkey=self.authkey) as connection:
            connection.send((value, step))
            ok, answer = connection.recv()
        if not ok:
            raise RuntimeError(f"reporting {value} at step {step} to the trial failed: {answer}")
        return bool(answer)


class _TrialServer:
    """Serves ``trial.report`` / ``should_prune`` on a loopback socket while ``fit`` spawns ranks.

    The launching process owns the study, whatever its storage (in memory included): the ranks
    never touch it, they send ``(value, step)`` and get the pruning decision back.
    """

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        self.pruned_at_step: int | None = None
        self._authkey = secrets.token_bytes(16)
        self._listener = Listener(("127.0.0.1", 0), authkey=self._authkey)
        self._thread = threading.Thread(target=self._serve, name="tasktrain-trial-server", daemon=True)
        self._thread.start()

    def remote(self) -> _RemoteTrial:
        return _RemoteTrial(self._listener.address, self._authkey)

    def _serve(self) -> None:
        while True:
            try:
                with self._listener.accept() as connection:
                    request = connection.recv()
                    if request is None:  # close()
                        return
                    connection.send(self._answer(*request))
            except (OSError, EOFError):  # a client that failed authentication or went away
                continue

    def _answer(self, value: float, step: int) -> tuple[bool, Any]:
        try:
            self.trial.report(value, step)
            prune = self.trial.should_prune()
        except Exception as error:  # e.g. a storage error: the rank raises it with this message
            return False, f"{type(error).__name__}: {error}"
        if prune:
            self.pruned_at_step = step
        return True, prune

    def close(self) -> None:
        with Client(self._listener.address, authkey=self._authkey) as connection:
            connection.send(None)
        self._thread.join()
        self._listener.close()


# -- the search -------------------------------------------------------------------------------------
def search(
    task: Callable[..., TaskModule[Any]],
    space: Space,
    *,
    monitor: str = "val/loss",
    direction: Literal["minimize", "maximize"] = "minimize",
    n_trials: int | None = 20,
    timeout: float | None = None,
    trainer_kwargs: Mapping[str, Any] | None = None,
    root_dir: str | os.PathLike[str] = "runs/tune",
    train_dataloaders: DataLoader[Any] | None = None,
    val_dataloaders: DataLoader[Any] | None = None,
    storage: str | optuna.storages.BaseStorage | None = None,
    study_name: str | None = None,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    catch: Sequence[type[Exception]] = (),
) -> SearchResult:
    """Search the hyperparameters ``space`` returns; each trial fits ``task(**space(trial))``.

    Args:
        task: a TaskModule class, or any callable that takes the space's keys and returns one.
        space: ``space(trial) -> dict``: suggests values with ``trial.suggest_*`` and returns the
            keyword arguments of ``task``.
        monitor: the logged metric to optimize: its last value is the trial's value, and its value
            after each validation is reported for pruning.
        direction: ``"minimize"`` or ``"maximize"``.
        n_trials: how many trials to run (``study.optimize``'s argument); trials of a study that
            already exists in ``storage`` count on top of the ones it holds.
        timeout: stop starting trials after this many seconds (``study.optimize``'s argument).
        trainer_kwargs: arguments of :class:`~tasktrain.Trainer`, deep-copied for every trial (so
            callbacks start fresh); ``default_root_dir`` is the trial's run directory. With a
            ``seed``, every trial's task is built after seeding, so all start from the same weights.
        root_dir: trial ``n`` runs in ``{root_dir}/trial_{n:04d}`` (a path or fsspec URL), which
            also holds ``trial.json`` (its parameters and Trainer arguments).
        train_dataloaders: passed to every ``fit`` (default: the task's ``train_dataloader()``).
        val_dataloaders: passed to every ``fit`` (default: the task's ``val_dataloader()``).
        storage: optuna storage (e.g. ``"sqlite:///tune.db"``); None keeps the study in memory.
        study_name: the study's name in ``storage``; an existing study of that name is continued.
        sampler: an optuna sampler (default: ``TPESampler``).
        pruner: an optuna pruner (default: ``MedianPruner``).
        catch: exception types that fail one trial without ending the search.

    Returns:
        The best trial's parameters, value, run directory and checkpoint, and the study.

    Example:
        >>> def space(trial):  # doctest: +SKIP
        ...     return {"lr": trial.suggest_float("lr", 1e-4, 1e-1, log=True)}
        >>> result = search(Regressor, space, n_trials=20, trainer_kwargs={"max_epochs": 5})  # doctest: +SKIP
        >>> result.best_params, result.best_checkpoint  # doctest: +SKIP
    """
    _require_optuna()
    import optuna

    _check_arguments(task, space, direction, n_trials, timeout, trainer_kwargs)
    run = _Run(
        task,
        monitor,
        dict(trainer_kwargs or {}),
        str(root_dir).rstrip("/"),
        train_dataloaders,
        val_dataloaders,
    )
    group = _torchrun_group(run.trainer_kwargs)
    catch = tuple(catch)
    if group is not None and group.global_rank != 0:
        return _follow(group, run, catch)
    study = optuna.create_study(
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        study_name=study_name,
        direction=direction,
        load_if_exists=study_name is not None,
    )

    def objective(trial: optuna.Trial) -> float:
        params = _call_space(space, trial)
        if group is not None:
            group.broadcast((trial.number, params))
        return run.trial(trial.number, params, trial, group)

    study.optimize(objective, n_trials=n_trials, timeout=timeout, catch=catch)
    result = _result(study)
    if group is not None:
        group.broadcast(None)  # the followers leave their loop
        group.broadcast({k: v for k, v in vars(result).items() if k != "study"})
    return result


@dataclass
class _Run:
    """What every trial shares: how to build the task and the Trainer, where to write, the data."""

    task: Callable[..., TaskModule[Any]]
    monitor: str
    trainer_kwargs: dict[str, Any]
    root_dir: str
    train_dataloaders: DataLoader[Any] | None
    val_dataloaders: DataLoader[Any] | None

    def trial(
        self,
        number: int,
        params: dict[str, Any],
        trial: optuna.Trial | None,
        group: Strategy | None,
    ) -> float:
        """Fit one trial in its run directory; return the monitored value (rank 0's, on every rank)."""
        import optuna

        run_dir = f"{self.root_dir}/trial_{number:04d}"
        if trial is not None:
            _claim(run_dir)
            trial.set_user_attr("run_dir", run_dir)
            _write_json(f"{run_dir}/trial.json", self._config(number, params))
        trainer = Trainer(**copy.deepcopy(self.trainer_kwargs), default_root_dir=run_dir)
        if trainer.args.seed is not None:  # every trial starts from the same initial weights
            seed_everything(trainer.args.seed)
        module = _build_task(self.task, params)
        # devices=N: the ranks run in new processes, so they reach the trial through a server here.
        server = _TrialServer(trial) if trial is not None and trainer.strategy.processes_to_launch else None
        trainer.callbacks.append(
            PruningCallback(server.remote() if server is not None else trial, self.monitor)
        )
        try:
            trainer.fit(module, self.train_dataloaders, self.val_dataloaders)
        finally:
            if server is not None:
                server.close()
        if server is not None and server.pruned_at_step is not None:
            raise optuna.TrialPruned(f"pruned at step {server.pruned_at_step} (in the spawned ranks)")
        value = monitored(trainer.callback_metrics, self.monitor, "search")
        if group is not None:
            value = group.broadcast(value)  # every rank returns rank 0's value
        if trial is not None:
            trial.set_user_attr("checkpoint", _last_checkpoint(trainer, run_dir))
        return value

    def _config(self, number: int, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "trial": number,
            "params": params,
            "monitor": self.monitor,
            "trainer_kwargs": self.trainer_kwargs,
        }


def _follow(group: Strategy, run: _Run, catch: tuple[type[Exception], ...]) -> SearchResult:
    """A torchrun rank other than 0: run the trials rank 0 announces until it says the search is over."""
    import optuna

    ends_one_trial: tuple[type[BaseException], ...] = (optuna.TrialPruned, *catch)
    while (message := group.broadcast(None)) is not None:
        number, params = message
        with contextlib.suppress(*ends_one_trial):  # rank 0 records it; the search goes on
            run.trial(number, params, None, group)
    return SearchResult(**group.broadcast(None), study=None)


def _result(study: optuna.Study) -> SearchResult:
    import optuna

    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        states = sorted({t.state.name for t in study.trials})
        raise RuntimeError(
            f"search: no trial completed ({len(study.trials)} trials, states: {states}); "
            "nothing to report as best (check the pruner, n_trials and timeout)"
        )
    best = study.best_trial
    return SearchResult(
        best_params=dict(best.params),
        best_value=float(best.value),  # type: ignore[arg-type]  # a completed single-objective trial
        best_trial_number=best.number,
        best_run_dir=str(best.user_attrs.get("run_dir")),
        best_checkpoint=best.user_attrs.get("checkpoint"),
        study=study,
    )


# -- helpers ----------------------------------------------------------------------------------------
def _check_arguments(
    task: Any,
    space: Any,
    direction: str,
    n_trials: int | None,
    timeout: float | None,
    trainer_kwargs: Mapping[str, Any] | None,
) -> None:
    if not callable(task):
        raise TypeError(f"search(task={task!r}): expected a TaskModule class or a callable returning one")
    if not callable(space):
        raise TypeError(f"search(space={space!r}): expected a function space(trial) -> dict")
    if direction not in _DIRECTIONS:
        raise ValueError(f"search(direction={direction!r}): accepted values are {_DIRECTIONS}")
    if n_trials is not None and (isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1):
        raise ValueError(f"search(n_trials={n_trials!r}): accepted values are None or an int >= 1")
    if n_trials is None and timeout is None:
        raise ValueError("search(n_trials=None, timeout=None): give at least one, or the search never ends")
    if "default_root_dir" in (trainer_kwargs or {}):
        raise ValueError(
            "search(trainer_kwargs={'default_root_dir': ...}): search sets it for each trial "
            "({root_dir}/trial_NNNN); give root_dir= instead"
        )
    Trainer(**copy.deepcopy(dict(trainer_kwargs or {})))  # a bad argument fails now, before any trial


def _call_space(space: Space, trial: optuna.Trial) -> dict[str, Any]:
    params = space(trial)
    if not isinstance(params, Mapping) or not all(isinstance(k, str) for k in params):
        raise TypeError(
            f"search: space(trial) returned {type(params).__name__}; it must return a dict of the "
            "task's keyword arguments, e.g. {'lr': trial.suggest_float('lr', 1e-4, 1e-1, log=True)}"
        )
    return dict(params)


def _build_task(task: Callable[..., TaskModule[Any]], params: dict[str, Any]) -> TaskModule[Any]:
    function = task.func if isinstance(task, functools.partial) else task  # the CLI's partial(TaskClass, ...)
    name = getattr(function, "__name__", type(function).__name__)
    try:
        module = task(**params)
    except TypeError as error:
        raise TypeError(
            f"search: {name}(**{params!r}) failed: {error} (the keys space(trial) returns must be "
            f"arguments of {name})"
        ) from error
    if not isinstance(module, TaskModule):
        raise TypeError(f"search: task {name}(...) returned {type(module).__name__}, not a TaskModule")
    return module


def _torchrun_group(trainer_kwargs: dict[str, Any]) -> Strategy | None:
    """Under torchrun (the environment holds RANK and WORLD_SIZE > 1): the strategy whose process
    group carries the trials' parameters from rank 0; None when this process runs alone."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return None
    quiet = {"logger": False, "enable_progress_bar": False, "enable_checkpointing": False, "callbacks": None}
    strategy = Trainer(**{**copy.deepcopy(trainer_kwargs), **quiet}).strategy
    if strategy.world_size < 2:
        raise ValueError(
            f"search under torchrun (WORLD_SIZE={os.environ['WORLD_SIZE']}) needs a multi-process strategy; "
            f"trainer_kwargs gives {strategy.name!r} (leave strategy unset, or use 'ddp', 'fsdp', ...)"
        )
    strategy.setup_environment()  # creates the process group unless the script already did
    return strategy


def _last_checkpoint(trainer: Trainer, run_dir: str) -> str | None:
    from tasktrain.checkpoint import find_last

    return find_last(run_dir) if trainer.args.enable_checkpointing else None


def _claim(run_dir: str) -> None:
    """Refuse a trial directory that exists: its old checkpoints would pass for this trial's."""
    fs, path = url_to_fs(run_dir)
    if fs.exists(path):
        raise FileExistsError(
            f"search: the run directory {run_dir} already exists (from an earlier search with the same "
            "root_dir?); give another root_dir, or continue that study with storage= and study_name="
        )


def _write_json(path: str, data: dict[str, Any]) -> None:
    fs, local = url_to_fs(path)
    fs.makedirs(local.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(local, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=repr)  # callbacks and the like: by repr
