"""Find the user's task class (and data factory) from a spec: ``pkg.module:Class``,
``path/to/file.py:Class``, ``path/to/file.py``, or ``pkg.module.Class``.

Files are imported by a module name derived from their path, with the directory that holds
them (or their top package) put on ``sys.path``: siblings import as usual, and processes that
``devices=N`` spawns find the same module by name when they unpickle the task.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from tasktrain.cli.errors import CLIError, describe_exception, did_you_mean
from tasktrain.module import TaskModule

#: The methods that make an object a data source for ``--data``.
DATA_HOOKS = ("train_dataloader", "val_dataloader", "test_dataloader", "predict_dataloader")


@dataclass(frozen=True)
class Target:
    """Where a spec points: a module by name or a file by path, and optionally an attribute in it."""

    spec: str
    module: str | None
    path: Path | None
    attr: str | None


def parse_spec(spec: str) -> Target:
    """Split ``spec`` into a module name or file path and an optional attribute name.

    Example:
        >>> parse_spec("examples/digits.py:DigitsClassifier").attr
        'DigitsClassifier'
    """
    head, sep, tail = spec.rpartition(":")
    if sep and head and tail and "/" not in tail and os.sep not in tail and not tail.endswith(".py"):
        source, attr = head, tail
    else:
        source, attr = spec, None
    if source.endswith(".py") or "/" in source or os.sep in source:
        return Target(spec, None, Path(source), attr)
    return Target(spec, source, None, attr)


def load_task_class(spec: str) -> type[TaskModule[Any]]:
    """The ``TaskModule`` subclass that ``spec`` names (or the only one its file or module defines)."""
    module, attr = _import_target(parse_spec(spec), "--task")
    candidates = {cls.__name__: cls for cls in _defined_classes(module) if _is_task_class(cls)}
    if attr is None:
        if len(candidates) == 1:
            return next(iter(candidates.values()))
        return _ambiguous(spec, "TaskModule subclass", candidates, example="MyTask")
    obj = _attribute(module, attr, spec, "--task", "TaskModule subclasses", candidates)
    if not _is_task_class(obj):
        raise CLIError(
            f"--task {spec}: {attr} is {_kind(obj)}, not a TaskModule subclass; "
            f"TaskModule subclasses defined there: {', '.join(candidates) or 'none'}"
        )
    return obj


def load_data_factory(spec: str) -> Callable[..., Any]:
    """The class or function that ``spec`` names for ``--data`` (or the only data class of a file)."""
    module, attr = _import_target(parse_spec(spec), "--data")
    candidates = {cls.__name__: cls for cls in _defined_classes(module) if _is_data_class(cls)}
    if attr is None:
        if len(candidates) == 1:
            return next(iter(candidates.values()))
        what = f"class with a {' / '.join(f'{h}()' for h in DATA_HOOKS[:2])} method"
        return _ambiguous(spec, what, candidates, example="make_data")
    obj = _attribute(module, attr, spec, "--data", "data classes", candidates)
    if not callable(obj):
        raise CLIError(
            f"--data {spec}: {attr} is {_kind(obj)}; --data takes a class or a function whose "
            "instance or return value has train_dataloader()/val_dataloader()/... or is a DataLoader"
        )
    return obj


def load_space(spec: str) -> Callable[..., Any]:
    """The search-space function that ``spec`` names for ``--space`` (default name: ``space``).

    Example:
        >>> load_space("examples/tune_space.py")  # doctest: +SKIP
        <function space at ...>
    """
    module, attr = _import_target(parse_spec(spec), "--space")
    functions = [
        name for name, obj in vars(module).items() if inspect.isfunction(obj) and not name.startswith("_")
    ]
    obj = _attribute(module, attr or "space", spec, "--space", "functions", dict.fromkeys(functions, object))
    if not callable(obj) or inspect.isclass(obj):
        raise CLIError(
            f"--space {spec}: {attr or 'space'} is {_kind(obj)}; --space takes a function space(trial) -> dict"
        )
    return obj


# -- importing ----------------------------------------------------------------------------------
def _import_target(target: Target, option: str) -> tuple[ModuleType, str | None]:
    if target.path is not None:
        return import_file(target.path, f"{option} {target.spec}"), target.attr
    assert target.module is not None
    name, attr = target.module, target.attr
    if attr is None and "." in name and not _module_exists(name):  # `pkg.mod.Class`
        name, _, attr = name.rpartition(".")
    return _import_module(name, target.spec, option), attr


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package is missing or broken
        return False


def _import_module(name: str, spec: str, option: str) -> ModuleType:
    if not all(part.isidentifier() for part in name.split(".")):
        raise CLIError(
            f"{option} {spec}: no such file, and {name!r} is not a module name; "
            "give pkg.module:Class, path/to/file.py:Class or path/to/file.py"
        )
    cwd = os.getcwd()
    if cwd not in sys.path and not _module_exists(name.split(".")[0]):
        sys.path.insert(0, cwd)  # like `python -m`: packages in the current directory import
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if name == missing or name.startswith(missing + "."):
            raise CLIError(
                f"{option} {spec}: no module named {missing!r} (looked on sys.path, the current "
                f"directory {cwd} included); for a file give its path, e.g. path/to/{name.split('.')[-1]}.py"
            ) from error
        raise CLIError(f"{option} {spec}: importing {name} failed: {describe_exception(error)}") from error
    except Exception as error:
        raise CLIError(f"{option} {spec}: importing {name} failed: {describe_exception(error)}") from error


def import_file(path: Path, what: str) -> ModuleType:
    """Import the Python file ``path`` under a name derived from it; its directory goes on ``sys.path``.

    A file inside packages (directories with ``__init__.py``) is imported as ``pkg.sub.file``
    from the directory above the top package, so its relative imports work.

    Example:
        >>> module = import_file(Path("examples/digits.py"), "--task")  # doctest: +SKIP
        >>> module.__name__                                              # doctest: +SKIP
        'digits'
    """
    resolved = path.expanduser().resolve()
    if not resolved.is_file():
        looked = f" (looked for {resolved})" if str(resolved) != str(path) else ""
        raise CLIError(f"{what}: no such file {str(path)!r}{looked}")
    name, root = module_name_for(resolved)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))  # siblings import; spawned ranks inherit sys.path
    existing = sys.modules.get(name)
    if existing is not None:
        if _same_file(existing, resolved):
            return existing
        raise CLIError(
            f"{what}: cannot import {path} as module {name!r}: a different module of that name is "
            f"already imported ({getattr(existing, '__file__', None) or 'built in'}); rename the file"
        )
    try:
        if all(part.isidentifier() for part in name.split(".")):
            module = importlib.import_module(name)
        else:  # not importable by name (e.g. `01-train.py`): load it directly; spawned ranks cannot
            module = _exec_file(name, resolved)
    except Exception as error:
        raise CLIError(f"{what}: importing {path} failed: {describe_exception(error)}") from error
    if not _same_file(module, resolved):
        raise CLIError(
            f"{what}: cannot import {path} as module {name!r}: that name is taken by "
            f"{getattr(module, '__file__', None) or 'a built-in module'}; rename the file"
        )
    return module


def module_name_for(path: Path) -> tuple[str, Path]:
    """``("pkg.sub.file", root)`` for ``root/pkg/sub/file.py`` where pkg and sub hold ``__init__.py``."""
    parts = [path.stem if path.stem.isidentifier() else re.sub(r"\W", "_", path.stem)]
    if not path.stem.isidentifier():
        return "_tasktrain_file_" + parts[0], path.parent
    root = path.parent
    while (root / "__init__.py").is_file() and root.name.isidentifier():
        parts.insert(0, root.name)
        root = root.parent
    return ".".join(parts), root


def _exec_file(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _same_file(module: ModuleType, path: Path) -> bool:
    file = getattr(module, "__file__", None)
    return file is not None and Path(file).resolve() == path


# -- finding the object -------------------------------------------------------------------------
def _defined_classes(module: ModuleType) -> list[type]:
    return [
        obj for obj in vars(module).values() if inspect.isclass(obj) and obj.__module__ == module.__name__
    ]


def _is_task_class(obj: object) -> bool:
    return inspect.isclass(obj) and issubclass(obj, TaskModule) and obj is not TaskModule


def _is_data_class(cls: type) -> bool:
    return not issubclass(cls, TaskModule) and any(callable(getattr(cls, hook, None)) for hook in DATA_HOOKS)


def _attribute(
    module: ModuleType, attr: str, spec: str, option: str, what: str, candidates: dict[str, type]
) -> Any:
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in vars(module) if not n.startswith("_")]
            listed = (
                f"; {what} defined there: {', '.join(candidates)}"
                if candidates
                else f"; it defines no {what}"
            )
            raise CLIError(
                f"{option} {spec}: {_where(module)} has no attribute {attr!r}"
                f"{did_you_mean(attr, [*candidates, *names])}{listed}"
            )
        obj = getattr(obj, part)
    return obj


def _ambiguous(spec: str, what: str, candidates: dict[str, type], example: str) -> Any:
    option = "--task" if "TaskModule" in what else "--data"
    if not candidates:
        raise CLIError(f"{option} {spec}: defines no {what}; name the object to use, e.g. {spec}:{example}")
    names = sorted(candidates)
    raise CLIError(
        f"{option} {spec}: defines {len(names)} candidates ({what}): {', '.join(names)}; "
        f"name the one to use, e.g. {option} {spec}:{names[0]}"
    )


def _where(module: ModuleType) -> str:
    file = getattr(module, "__file__", None)
    return f"{module.__name__} ({file})" if file else module.__name__


def _kind(obj: object) -> str:
    if inspect.isclass(obj):
        return f"the class {obj.__module__}.{obj.__qualname__}"
    if inspect.isfunction(obj):
        return "a function"
    if isinstance(obj, TaskModule):
        return "a TaskModule instance (give its class)"
    return f"a {type(obj).__name__} object"
