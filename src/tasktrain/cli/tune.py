"""``tasktrain tune``: hyperparameter search with optuna over a task given on the command line.

``--task`` and ``--trainer.*`` work as for ``fit``; ``--task.<name>`` values are fixed for every
trial, and the values the ``--space`` function returns override them. Each trial runs in
``{root_dir}/trial_NNNN``; the resolved config is saved as ``{root_dir}/config.yaml``. See
``docs/concepts/tune.md``.
"""

from __future__ import annotations

import functools
import json
import os
from typing import TYPE_CHECKING, Literal

from jsonargparse import ArgumentParser

from tasktrain.cli.errors import CLIError
from tasktrain.cli.loading import load_space
from tasktrain.cli.run import (
    build_trainer,
    check_data,
    instantiate,
    parse_command,
    stage_loaders,
    trainer_kwargs,
)

if TYPE_CHECKING:
    from tasktrain.tune import SearchResult


def tune_main(argv: list[str]) -> int:
    """Run ``tasktrain tune <argv>``: search, then print the best trial.

    Example:
        >>> tune_main(["--task", "task.py", "--space", "space.py", "--n_trials", "10"])  # doctest: +SKIP
        0
    """
    from tasktrain.tune import _OPTUNA, search

    if not _OPTUNA:
        raise CLIError(f'tasktrain tune needs optuna: pip install "tasktrain[tune]" ({_OPTUNA.message})')
    if any(a.split("=")[0] == "--trainer.default_root_dir" for a in argv):
        raise CLIError(
            "--trainer.default_root_dir: tune runs trial N in ROOT_DIR/trial_000N; give --root_dir"
        )
    parsed = parse_command("tune", argv, _add_search_arguments)
    cfg = parsed.cfg
    if cfg.space is None:
        raise CLIError(
            "no search space given: add --space path/to/space.py (a file defining space(trial) -> dict "
            "of the task's arguments; see docs/concepts/tune.md)"
        )
    space = load_space(cfg.space)
    built = instantiate(parsed.parser, cfg)
    data = parsed.build_data(built)
    check_data("fit", parsed.task_cls, data, parsed.data_spec)
    fixed = dict(vars(built.task.init_args)) if built.task.init_args is not None else {}
    task = functools.partial(parsed.task_cls, **fixed)  # the space's values override these
    root_dir = str(cfg.root_dir).rstrip("/")
    kwargs = trainer_kwargs(built.trainer, parsed.plugins)
    build_trainer(kwargs)  # a bad --trainer.* value is reported now, before any trial
    if (cfg.n_trials is not None and cfg.n_trials < 1) or (cfg.n_trials is None and cfg.timeout is None):
        raise CLIError(f"--n_trials {cfg.n_trials}: give an int >= 1 (or null with --timeout)")
    rank_zero = int(os.environ.get("RANK", "0")) == 0  # under torchrun: rank 0 writes and prints
    config = _save_config(root_dir, parsed.parser.dump(cfg, skip_none=False)) if rank_zero else ""
    result = search(
        task,
        space,
        monitor=cfg.monitor,
        direction=cfg.direction,
        n_trials=cfg.n_trials,
        timeout=cfg.timeout,
        trainer_kwargs=kwargs,
        root_dir=root_dir,
        storage=cfg.storage,
        study_name=cfg.study_name,
        **stage_loaders("fit", data),
    )
    if rank_zero:
        _report(result, cfg.monitor, cfg.direction, config)
    return 0


def _add_search_arguments(parser: ArgumentParser) -> None:
    parser.add_argument(
        "--space",
        type=str | None,
        default=None,
        metavar="SPEC",
        help="The search space: a file or module defining space(trial) -> dict of task arguments "
        "(path/to/space.py, path/to/space.py:my_space, pkg.module:my_space).",
    )
    parser.add_argument("--n_trials", type=int | None, default=20, help="How many trials to run.")
    parser.add_argument("--timeout", type=float | None, default=None, help="Stop after this many seconds.")
    parser.add_argument("--monitor", type=str, default="val/loss", help="The logged metric to optimize.")
    parser.add_argument(
        "--direction",
        type=Literal["minimize", "maximize"],
        default="minimize",
        help="Whether smaller or larger values of --monitor are better.",
    )
    parser.add_argument(
        "--root_dir", type=str, default="runs/tune", help="Trial N runs in ROOT_DIR/trial_000N."
    )
    parser.add_argument(
        "--storage",
        type=str | None,
        default=None,
        help="An optuna storage URL (e.g. sqlite:///tune.db) to keep the study; default: in memory.",
    )
    parser.add_argument(
        "--study_name",
        type=str | None,
        default=None,
        help="The study's name in --storage; an existing study of that name is continued.",
    )


def _save_config(root_dir: str, config: str) -> str:
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(root_dir)
    fs.makedirs(path, exist_ok=True)
    with fs.open(f"{path}/config.yaml", "w") as f:
        f.write(config)
    return f"{root_dir}/config.yaml"


def _report(result: SearchResult, monitor: str, direction: str, config: str) -> None:
    assert result.study is not None  # rank 0 owns the study
    states = [t.state.name.lower() for t in result.study.trials]
    counts = ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(states))
    print(f"trials: {len(states)} ({counts})")
    print(f"best trial: {result.best_trial_number}")
    print(f"best value: {monitor} = {result.best_value:.6g} ({direction})")
    print(f"best params: {json.dumps(result.best_params, sort_keys=True, default=repr)}")
    print(f"run dir: {result.best_run_dir}")
    print(f"checkpoint: {result.best_checkpoint}")
    print(f"config: {config}")
