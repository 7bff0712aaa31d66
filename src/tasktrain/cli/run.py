"""``tasktrain fit|validate|test|predict``: parse, load, build, save the config, run, report.

Everything up to the start of the run is checked first and reported as a :class:`CLIError`
(bad input); once the Trainer runs, errors in the user's code keep their traceback.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jsonargparse import ArgumentParser, Namespace
from lightning_utilities.core.overrides import is_overridden
from torch.utils.data import DataLoader

from tasktrain.cli.argv import find_spec, normalize, read_configs
from tasktrain.cli.errors import CLIError, describe_exception
from tasktrain.cli.loading import DATA_HOOKS, load_data_factory, load_task_class
from tasktrain.cli.parser import build_parser, explain
from tasktrain.cli.plugins import Plugins, discover
from tasktrain.module import TaskModule
from tasktrain.seed import seed_everything
from tasktrain.trainer import Trainer

if TYPE_CHECKING:
    from tasktrain.trainer import FitResult

#: The dataloader hooks each command reads: the main one, then the optional validation one of fit.
STAGE_HOOKS = {
    "fit": ("train_dataloader", "val_dataloader"),
    "validate": ("val_dataloader",),
    "test": ("test_dataloader",),
    "predict": ("predict_dataloader",),
}


@dataclass
class Run:
    """What a command runs: the built objects and the config that reproduces them."""

    command: str
    trainer: Trainer
    task: TaskModule[Any]
    data: Any
    ckpt_path: str | None
    config: str  # the resolved config as YAML


def run_command(command: str, argv: list[str]) -> int:
    """Run ``tasktrain <command> <argv>``; return the exit status.

    Example:
        >>> run_command("fit", ["--task", "examples/digits.py", "--trainer.max_steps", "10"])  # doctest: +SKIP
    """
    run = prepare(command, argv)
    # Under torchrun every rank runs this command: rank 0 alone writes and prints.
    rank_zero = int(os.environ.get("RANK", "0")) == 0
    path = save_config(run) if rank_zero else ""
    if path and "://" not in path:  # trackers (MLflow, W&B) keep the config with their run
        for logger in run.trainer.loggers:
            logger.log_artifact(path)
    outcome = execute(run)
    if rank_zero:
        report(run, outcome, path)
    return 0


def prepare(command: str, argv: list[str]) -> Run:
    """Parse ``argv``, load the task (and data), build everything; raise :class:`CLIError` on bad input."""
    parsed = parse_command(command, argv)
    parser, cfg, task_cls = parsed.parser, parsed.cfg, parsed.task_cls
    built = instantiate(parser, cfg)
    data = parsed.build_data(built)
    task = build_object("--task", task_cls, built.task.init_args)
    trainer = _build_trainer(built.trainer, parsed.plugins)
    ckpt_path = _check_ckpt_path(cfg.ckpt_path, trainer)
    check_data(command, task, data, parsed.data_spec)
    config = parser.dump(cfg, skip_none=False)
    return Run(command, trainer, task, data, ckpt_path, config)


@dataclass
class Parsed:
    """A parsed command line: the parser, its config, the loaded task class and data factory."""

    parser: ArgumentParser
    cfg: Namespace
    task_cls: type[TaskModule[Any]]
    data_factory: Callable[..., Any] | None
    data_spec: str | None
    plugins: Plugins

    def build_data(self, built: Namespace) -> Any:
        """The ``--data`` object (None without ``--data``), from the instantiated config."""
        if self.data_factory is None:
            return None
        return build_object("--data", self.data_factory, built.data.init_args)


def parse_command(
    command: str, argv: list[str], add_arguments: Callable[[ArgumentParser], None] | None = None
) -> Parsed:
    """Load the task class (and data factory) that ``argv`` names, parse ``argv`` with their options
    (and those ``add_arguments`` adds), and seed; raise :class:`CLIError` on bad input."""
    plugins = discover()
    args, _ = normalize(argv, {key: plugins.aliases(key) for key in ("trainer.callbacks", "trainer.logger")})
    wants_help = any(a in ("-h", "--help") or a.endswith(".help") for a in args)
    configs = read_configs(args)
    task_spec, data_spec = find_spec(args, "task", configs), find_spec(args, "data", configs)
    if task_spec is None and not wants_help:
        raise CLIError(
            "no task given: add --task pkg.module:Class, --task path/to/file.py:Class or --task path/to/file.py "
            "(or task.class_path in a --config file)"
        )
    task_cls = load_task_class(task_spec) if task_spec else None
    data_factory = load_data_factory(data_spec) if data_spec else None
    parser = build_parser(command, task_cls, data_factory, plugins)
    if add_arguments is not None:
        add_arguments(parser)
    cfg = _parse(parser, args, plugins)  # --help and --print_config exit here
    if (cfg.task.class_path, cfg.data.class_path) != (task_spec, data_spec) or task_cls is None:
        raise CLIError(  # the specs are read before parsing, to know which options to add
            f"could not tell which task and data to load: found --task {task_spec} --data {data_spec}, "
            f"parsed --task {cfg.task.class_path} --data {cfg.data.class_path}; give both on the command line"
        )
    _choose_seed(cfg)
    return Parsed(parser, cfg, task_cls, data_factory, data_spec, plugins)


def _choose_seed(cfg: Namespace) -> None:
    """Seed before the task is built (its initial weights are then reproducible); with no seed
    given, draw one and record it in the config, so ``config.yaml`` reruns the run exactly."""
    if cfg.trainer.seed is None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            return  # torchrun: each rank would draw its own seed; stay unseeded, as Python is
        cfg.trainer.seed = random.randrange(2**32)
    seed_everything(cfg.trainer.seed)


def _parse(parser: ArgumentParser, args: list[str], plugins: Plugins) -> Namespace:
    from jsonargparse import ArgumentError

    try:
        return parser.parse_args(args)
    except ArgumentError as error:
        raise CLIError(explain(str(error), parser, plugins)) from error


def instantiate(parser: ArgumentParser, cfg: Namespace) -> Namespace:
    """Build the objects nested in the config (callbacks, loggers, strategy classes); not task/trainer."""
    try:
        return parser.instantiate(cfg)
    except Exception as error:  # jsonargparse wraps the class's own error in its type checks: unwrap
        reasons = re.findall(r"^\s*- (.+)$", str(error), flags=re.MULTILINE)
        reason = next((r for r in reasons if "NoneType" not in r), None) or describe_exception(error)
        raise CLIError(f"building a callback, logger or strategy failed: {reason}") from error


def build_object(option: str, factory: Callable[..., Any], args: Namespace | None) -> Any:
    kwargs = dict(vars(args)) if args is not None else {}
    try:
        return factory(**kwargs)
    except Exception as error:
        call = f"{getattr(factory, '__name__', factory)}({_call_args(kwargs)})"
        raise CLIError(f"{option}: {call} failed: {describe_exception(error)}") from error


def _build_trainer(args: Namespace, plugins: Plugins) -> Trainer:
    return build_trainer(trainer_kwargs(args, plugins))


def trainer_kwargs(args: Namespace, plugins: Plugins) -> dict[str, Any]:
    """The Trainer's keyword arguments from the parsed ``--trainer.*`` (a plugin strategy built)."""
    kwargs = dict(vars(args))
    strategy = kwargs.get("strategy")
    if isinstance(strategy, str) and strategy in plugins.strategies:  # a plugin named by its entry point
        kwargs["strategy"] = build_object("--trainer.strategy", plugins.strategies[strategy], None)
    return kwargs


def build_trainer(kwargs: dict[str, Any]) -> Trainer:
    try:
        return Trainer(**kwargs)
    except (ValueError, TypeError, NotImplementedError) as error:
        raise CLIError(str(error)) from error  # it names the argument, the value and what is accepted


def _call_args(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if not isinstance(v, (TaskModule, DataLoader)))


def _check_ckpt_path(ckpt_path: str | None, trainer: Trainer) -> str | None:
    if ckpt_path is None:
        return None
    if ckpt_path in ("last", "auto") and trainer.strategy.world_size > 1:
        return ckpt_path  # resolved once by rank 0 in fit, and agreed by every rank (not per rank here)
    from tasktrain.checkpoint.manager import resolve_ckpt_path

    try:
        return resolve_ckpt_path(ckpt_path, trainer.default_root_dir) or ckpt_path  # "auto", nothing found
    except (OSError, ValueError) as error:
        raise CLIError(f"--ckpt_path: {error}") from error


def check_data(
    command: str, task: TaskModule[Any] | type[TaskModule[Any]], data: Any, data_spec: str | None
) -> None:
    hook = STAGE_HOOKS[command][0]
    name = task.__name__ if isinstance(task, type) else type(task).__name__
    if data is None:
        if not is_overridden(hook, task, TaskModule):
            raise CLIError(
                f"no data for {command}: {name} does not implement {hook}(); "
                "add --data pkg.module:make_data (or path/to/file.py:DataClass) that provides it"
            )
        return
    if not isinstance(data, DataLoader) and not any(callable(getattr(data, h, None)) for h in DATA_HOOKS):
        raise CLIError(
            f"--data {data_spec}: gave a {type(data).__name__}, which is neither a DataLoader nor an "
            f"object with {' / '.join(f'{h}()' for h in DATA_HOOKS)}"
        )
    if (
        isinstance(data, DataLoader)
        or callable(getattr(data, hook, None))
        or is_overridden(hook, task, TaskModule)
    ):
        return
    raise CLIError(
        f"--data {data_spec}: gives a {type(data).__name__} without {hook}(), and "
        f"{name} does not implement {hook}() either"
    )


# -- saving the config --------------------------------------------------------------------------
def save_config(run: Run) -> str:
    """Write the resolved config as ``config.yaml`` in the first logger's directory (else in
    ``default_root_dir``); rerunning it with ``--config`` reproduces the run."""
    from fsspec.core import url_to_fs

    directory = next((lg.log_dir for lg in run.trainer.loggers if lg.log_dir), run.trainer.default_root_dir)
    fs, path = url_to_fs(str(directory))
    fs.makedirs(path, exist_ok=True)
    target = f"{str(directory).rstrip('/')}/config.yaml"
    with fs.open(f"{path.rstrip('/')}/config.yaml", "w") as f:
        f.write(run.config)
    return target


# -- running ------------------------------------------------------------------------------------
def execute(run: Run) -> Any:
    """Call the Trainer for the run's command with the data the task or ``--data`` provides."""
    loaders = _loaders(run)
    if run.command == "fit":
        return run.trainer.fit(run.task, **loaders, ckpt_path=run.ckpt_path)
    method = getattr(run.trainer, run.command)
    return method(run.task, **loaders, ckpt_path=run.ckpt_path)


def _loaders(run: Run) -> dict[str, Any]:
    return stage_loaders(run.command, run.data)


def stage_loaders(command: str, data: Any) -> dict[str, Any]:
    """The dataloader arguments of ``command``'s Trainer method, from ``--data``'s object."""
    if data is None:
        return {}  # the task's own hooks
    main, *extra = STAGE_HOOKS[command]
    key = "train_dataloaders" if command == "fit" else "dataloaders"
    if isinstance(data, DataLoader):
        return {key: data}
    loaders: dict[str, Any] = {}
    if callable(getattr(data, main, None)):
        loaders[key] = getattr(data, main)()
    if extra and callable(getattr(data, extra[0], None)):
        loaders["val_dataloaders"] = getattr(data, extra[0])()
    return loaders


def report(run: Run, outcome: Any, config_path: str) -> None:
    """Print what the run produced (metrics as JSON) and where its files are."""
    if run.command == "fit":
        _report_fit(run, outcome)
    elif run.command == "predict":
        path = _save_predictions(outcome, config_path.rsplit("/", 1)[0])
        print(f"predictions: {len(outcome)} batches saved to {path}")
    else:
        for metrics in outcome:
            print(f"{run.command} metrics: {json.dumps(_finite(metrics), sort_keys=True)}")
    print(f"config: {config_path}")
    sys.stdout.flush()


def _report_fit(run: Run, result: FitResult) -> None:
    from tasktrain.checkpoint import find_last

    print(f"fit: {result.global_step} optimizer steps, train_loss {result.train_loss:.6g}")
    print(f"metrics: {json.dumps(_finite(result.metrics), sort_keys=True)}")
    last = find_last(run.trainer.default_root_dir) if run.trainer.args.enable_checkpointing else None
    if last is not None:
        print(f"checkpoint: {last}")


def _finite(metrics: Mapping[str, float]) -> dict[str, float | None]:
    return {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}


def _save_predictions(outputs: list[Any], directory: str) -> str:
    import torch
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(directory)
    with fs.open(f"{path}/predictions.pt", "wb") as f:
        torch.save(outputs, f)
    return f"{directory}/predictions.pt"
