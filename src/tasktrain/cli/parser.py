"""The jsonargparse parser of ``fit``/``validate``/``test``/``predict``, and its error messages.

Options come from signatures: the task's constructor (``--task.<name>``), the data factory's
(``--data.<name>``) and the Trainer's (``--trainer.<name>``). Importing this module imports
jsonargparse, so only a command that runs does.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal, Union

from jsonargparse import ActionConfigFile, ArgumentParser, DefaultHelpFormatter

from tasktrain.callbacks.base import Callback
from tasktrain.cli.errors import did_you_mean
from tasktrain.cli.plugins import Plugins
from tasktrain.loggers.base import Logger
from tasktrain.precision import PRECISIONS
from tasktrain.strategies.base import Strategy
from tasktrain.trainer import Trainer
from tasktrain.trainer_args import ACCELERATORS, CLIP_ALGORITHMS, NONFINITE_POLICIES, STRATEGY_NAMES

DESCRIPTIONS = {
    "fit": "Train a task.",
    "validate": "Run the validation loop once (add --ckpt_path PATH or last to evaluate a checkpoint).",
    "test": "Run the test loop once (add --ckpt_path PATH or last to evaluate a checkpoint).",
    "predict": "Run predict_step over the predict data; the outputs are saved as predictions.pt next to config.yaml.",
    "tune": "Search hyperparameters with optuna: each trial fits the task with the values --space suggests.",
}

TASK_HELP = (
    "The TaskModule to run: pkg.module:Class, path/to/file.py:Class, or path/to/file.py when the file "
    "defines exactly one TaskModule subclass. Its constructor arguments become --task.<name> "
    "(give --task with --help to list them)."
)
DATA_HELP = (
    "Optional data source (same forms as --task; a file alone when it defines one class with "
    "*_dataloader() methods): a class or function whose instance or return value has "
    "train_dataloader()/val_dataloader()/test_dataloader()/predict_dataloader(), or is a DataLoader. "
    "Its arguments become --data.<name>. Without it, the task's own dataloader hooks are used."
)
EPILOG = (
    "Config files: --config run.yaml (several allowed; later files win, the command line wins over "
    "files). --print_config prints the resolved config and exits; every run saves it as config.yaml "
    "next to its logs. --debug shows Python tracebacks for errors."
)


def trainer_choices(plugins: Plugins) -> dict[str, tuple[str, ...]]:
    """The accepted strings of the Trainer's name-valued arguments, from the Trainer's own lists."""
    strategies = tuple(dict.fromkeys([*STRATEGY_NAMES, *_named_strategies(plugins)]))
    return {
        "trainer.strategy": strategies,
        "trainer.precision": tuple(PRECISIONS),
        "trainer.accelerator": ACCELERATORS,
        "trainer.gradient_clip_algorithm": CLIP_ALGORITHMS,
        "trainer.on_nonfinite_loss": NONFINITE_POLICIES,
        "trainer.devices": ("auto",),
    }


def _named_strategies(plugins: Plugins) -> list[str]:
    """Plugin strategies whose entry-point name is not their class name (the class name resolves as is)."""
    return [name for name, cls in plugins.strategies.items() if name != cls.__name__]


def build_parser(
    command: str,
    task_cls: type | None,
    data_factory: Callable[..., Any] | None,
    plugins: Plugins,
) -> ArgumentParser:
    """The parser of one subcommand; ``task_cls``/``data_factory`` add their constructor's options."""
    parser = ArgumentParser(
        prog=f"tasktrain {command}",
        description=DESCRIPTIONS[command],
        epilog=EPILOG,
        exit_on_error=False,
        allow_abbrev=False,  # a mistyped option is an error with a suggestion, never a guess
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--config", action=ActionConfigFile, help="A YAML config file (several allowed).")
    parser.add_argument("--task.class_path", type=str | None, metavar="SPEC", help=TASK_HELP)
    if task_cls is not None:
        parser.add_class_arguments(task_cls, "task.init_args", instantiate=False, fail_untyped=False)
    parser.add_argument("--data.class_path", type=str | None, metavar="SPEC", help=DATA_HELP)
    if data_factory is not None:
        if inspect.isclass(data_factory):
            parser.add_class_arguments(data_factory, "data.init_args", instantiate=False, fail_untyped=False)
        else:
            parser.add_function_arguments(data_factory, "data.init_args", fail_untyped=False)
    _add_trainer_arguments(parser, plugins, skip=("default_root_dir",) if command == "tune" else ())
    if command == "tune":  # its own options are added by tasktrain.cli.tune; trials start from scratch
        return parser
    parser.add_argument(
        "--ckpt_path",
        type=str | None,
        help="Start from this checkpoint (a directory or URL, or 'last': the newest complete one "
        "under trainer.default_root_dir). fit resumes exactly; the others load its weights.",
    )
    return parser


_RETYPED = ("strategy", "precision", "accelerator", "gradient_clip_algorithm", "on_nonfinite_loss", "devices")


def _add_trainer_arguments(parser: ArgumentParser, plugins: Plugins, skip: Sequence[str] = ()) -> None:
    """Every Trainer argument as ``--trainer.<name>``; name-valued ones list their accepted names."""
    parser.add_class_arguments(Trainer, "trainer", instantiate=False, skip={*_RETYPED, *skip})
    group = parser.groups["trainer"]  # type: ignore[index]
    defaults = inspect.signature(Trainer).parameters
    choices = trainer_choices(plugins)
    helps = {
        "strategy": "A name (plugins included) or a Strategy class, by name or import path, with its own "
        "arguments as --trainer.strategy.<name>.",
        "devices": "Processes on this machine (fit spawns them), or auto.",
    }
    for name in _RETYPED:
        key = f"trainer.{name}"
        accepted: Any = _literal(choices[key])
        if name == "strategy":
            accepted = accepted | Strategy
        elif name == "devices":
            accepted = int | accepted
        group.add_argument(f"--{key}", type=accepted, default=defaults[name].default, help=helps.get(name))


def _literal(names: Sequence[str]) -> Any:
    return Literal.__getitem__(tuple(names))


class _HelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help, with ``--task.<name>`` shown in its short form and docstring markup removed."""

    def format_help(self) -> str:
        return shorten(super().format_help())


def shorten(text: str) -> str:
    """``--task.init_args.lr`` → ``--task.lr``, ``--task.class_path`` → ``--task``; drop reST roles."""
    for key in ("task", "data"):
        text = text.replace(f"{key}.init_args.", f"{key}.").replace(f"--{key}.class_path", f"--{key}")
        text = text.replace(f"{key}.class_path", key)
    text = re.sub(r":\w+:`~?(?:[\w.]+\.)?([\w]+)`", r"\1", text)
    return text.replace("``", "")


# -- error messages -----------------------------------------------------------------------------
_BASES: dict[str, tuple[str, type]] = {
    "trainer.callbacks": ("callback", Callback),
    "trainer.logger": ("logger", Logger),
    "trainer.strategy": ("strategy", Strategy),
}


def explain(message: str, parser: ArgumentParser, plugins: Plugins) -> str:
    """Turn a jsonargparse error into one message: what was wrong and the closest valid names."""
    text = message.strip()
    for pattern, handler in (
        (r"^unrecognized arguments: (.*)$", _unknown_options),
        (r'^Parser key "([^"]+)":', _bad_value),
        (r"^Group '([^']+)' does not accept option '([^']+)'", _unknown_config_key),
        (r"^Option '([^']+)' is not accepted", _unknown_config_key),
        (r'^Key "([^"]+)" is required', _missing),
    ):
        match = re.match(pattern, text, flags=re.DOTALL)
        if match:
            return shorten(handler(match, text, parser, plugins))
    return shorten(_first_lines(text))


def _unknown_options(match: re.Match[str], text: str, parser: ArgumentParser, plugins: Plugins) -> str:
    known = [shorten(o) for o in parser._option_string_actions]  # argparse keeps them here
    problems = []
    for token in match.group(1).split():
        if token.startswith("-"):
            name = shorten(token.split("=", 1)[0])
            problems.append(f"unknown option {name}{did_you_mean(name, known)}")
    if not problems:
        return f"unexpected argument(s): {match.group(1)} (options take the form --name value)"
    return "; ".join(problems) + f" (see {parser.prog} --help)"


def _bad_value(match: re.Match[str], text: str, parser: ArgumentParser, plugins: Plugins) -> str:
    key = match.group(1)
    given = _given(text)
    option = f"--{key}"
    if key == "config":
        return f"--config: {_first_lines(text.split(':', 1)[1])}"
    problem = re.search(r"Problem with given class_path '([^']+)':\s*\n\s*(.+)", text)
    not_accepted = re.search(r"Option '([^']+)' is not accepted", text)
    if problem and not_accepted:
        return _unknown_init_arg(option, problem.group(1), not_accepted.group(1))
    choices = trainer_choices(plugins).get(key)
    kind = _BASES.get(key)
    class_failed = re.search(
        r"Expected a dot import path string: (\S+)|Import path does not correspond to a subclass|"
        r"Problem with given class_path '([^']+)'",
        text,
    )
    if kind is not None and class_failed and given is not None and not given.startswith(("[", "{")):
        return _unknown_class(option, given, kind[0], kind[1], choices, plugins)
    if choices is not None and given is not None:
        accepted = ", ".join(choices)
        extra = " or an int" if key == "trainer.devices" else ""
        extra = " or a Strategy class" if key == "trainer.strategy" else extra
        return (
            f"{option}: {given!r} is not accepted{did_you_mean(given, choices)}; accepted: {accepted}{extra}"
        )
    if problem:
        return f"{option}: {problem.group(1)}: {problem.group(2).strip()}"
    expected = _expected_types(text, parser, key)
    shown = repr(given) if given is not None else "the given value"
    return f"{option}: {shown} is not valid" + (f"; expected {expected}" if expected else "")


def _unknown_init_arg(option: str, class_path: str, name: str) -> str:
    params: list[str] = []
    try:
        module, _, attr = class_path.rpartition(".")
        cls = getattr(__import__(module, fromlist=[attr]), attr)
        params = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    except Exception:  # the names are only a hint
        pass
    short = class_path.rsplit(".", 1)[-1]
    listed = f"; its arguments: {', '.join(params)}" if params else ""
    return f"{option}: {short} has no argument {name!r}{did_you_mean(name, params)}{listed}"


def _unknown_class(
    option: str, given: str, kind: str, base: type, choices: tuple[str, ...] | None, plugins: Plugins
) -> str:
    classes = [cls.__name__ for cls in _subclasses(base) if not cls.__name__.startswith("_")]
    names = [*(choices or ()), *classes]
    listed = choices if choices else classes  # strategies: the names; others: the known classes
    hint = f"; accepted: {', '.join(dict.fromkeys(listed))}" if listed else ""
    return (
        f"{option}: unknown {kind} {given!r}{did_you_mean(given, names)}{hint}, "
        f"or a {base.__name__} subclass by class name or import path (e.g. my_package.module.MyClass)"
    )


def _subclasses(base: type) -> list[type]:
    found: list[type] = []
    sub: type
    for sub in base.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return list(dict.fromkeys(found))


def _unknown_config_key(match: re.Match[str], text: str, parser: ArgumentParser, plugins: Plugins) -> str:
    key = ".".join(match.groups())
    keys = [shorten(action.dest) for action in parser._actions if action.dest not in ("help",)]
    return f"config: unknown key {shorten(key)!r}{did_you_mean(shorten(key), keys)}"


def _missing(match: re.Match[str], text: str, parser: ArgumentParser, plugins: Plugins) -> str:
    return f"missing a value for --{match.group(1)} (it has no default)"


def _given(text: str) -> str | None:
    found = re.findall(r"Given value: (.*)$", text, flags=re.MULTILINE)
    if found:
        return str(found[-1]).strip()
    found = re.findall(r"Got value: (.*)$", text, flags=re.MULTILINE)
    return str(found[-1]).strip() if found else None


def _expected_types(text: str, parser: ArgumentParser, key: str) -> str:
    action = parser._option_string_actions.get(f"--{key}")
    hint = getattr(action, "_typehint", None)
    if hint is not None:
        return _type_name(hint)
    names = re.findall(r"Expected a <class '(\w+)'>", text)
    return " or ".join(dict.fromkeys("null" if n == "NoneType" else n for n in names))


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Union or type(hint).__name__ == "UnionType":
        return " or ".join(_type_name(arg) for arg in typing.get_args(hint))
    if origin is Literal:
        return " or ".join(repr(arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return "null"
    name = getattr(hint, "__name__", None)
    return str(name) if name and origin is None else str(hint).replace("typing.", "")


def _first_lines(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " ".join(lines[:3])
