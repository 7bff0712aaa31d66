"""Third-party strategies, callbacks and loggers, found through entry points.

A package makes its classes available to ``tasktrain`` by name by declaring them in its
metadata, e.g. in its ``pyproject.toml``::

    [project.entry-points."tasktrain.callbacks"]
    WandbSync = "my_package.callbacks:WandbSync"

    [project.entry-points."tasktrain.strategies"]
    horovod = "my_package.strategies:Horovod"

Callbacks and loggers are then named like the built-in ones (``--trainer.callbacks+=WandbSync``);
a strategy's entry-point name becomes a value of ``--trainer.strategy`` next to ``ddp`` and
``fsdp``.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from tasktrain.callbacks.base import Callback
from tasktrain.cli.errors import describe_exception
from tasktrain.loggers.base import Logger
from tasktrain.strategies.base import Strategy

#: Entry-point group → the base class its objects must subclass.
GROUPS: dict[str, type] = {
    "tasktrain.strategies": Strategy,
    "tasktrain.callbacks": Callback,
    "tasktrain.loggers": Logger,
}


@dataclass
class Plugins:
    """The classes that installed packages registered, by entry-point name."""

    strategies: dict[str, type[Strategy]] = field(default_factory=dict)
    callbacks: dict[str, type[Callback]] = field(default_factory=dict)
    loggers: dict[str, type[Logger]] = field(default_factory=dict)

    def aliases(self, key: str) -> dict[str, str]:
        """``{entry-point name: import path}`` for the names of ``key`` (``trainer.callbacks`` or
        ``trainer.logger``) that differ from their class name; the class name works as it is."""
        found = self.callbacks if key == "trainer.callbacks" else self.loggers
        return {
            name: f"{cls.__module__}.{cls.__qualname__}"
            for name, cls in found.items()
            if name != cls.__name__
        }


def discover() -> Plugins:
    """Load every entry point of the ``tasktrain.*`` groups; a broken one is reported and skipped.

    Example:
        >>> sorted(discover().strategies)  # doctest: +SKIP
        ['horovod']
    """
    plugins = Plugins()
    found: dict[str, dict[str, Any]] = {
        "tasktrain.strategies": plugins.strategies,
        "tasktrain.callbacks": plugins.callbacks,
        "tasktrain.loggers": plugins.loggers,
    }
    for group, base in GROUPS.items():
        for entry in entry_points(group=group):
            try:
                obj = entry.load()
            except Exception as error:  # a broken third-party package must not break the CLI
                _warn(
                    f"entry point {entry.name} = {entry.value} ({group}) failed to load: {describe_exception(error)}"
                )
                continue
            if not (inspect.isclass(obj) and issubclass(obj, base)):
                _warn(f"entry point {entry.name} = {entry.value} ({group}) is not a {base.__name__} subclass")
                continue
            found[group][entry.name] = obj
    return plugins


def _warn(message: str) -> None:
    print(f"tasktrain: warning: {message}; skipped", file=sys.stderr)
