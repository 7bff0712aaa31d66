"""Command-line preprocessing before jsonargparse sees the arguments.

- ``--config`` files are moved to the front, in their order: files apply first (later files
  win), then every other argument, so the command line always wins over files.
- ``--task SPEC`` is ``--task.class_path SPEC`` and ``--task.NAME`` is ``--task.init_args.NAME``
  (the same for ``--data``): the short forms of the ``class_path``/``init_args`` layout.
- A callback or logger named by an entry point whose name differs from its class name is
  replaced by the class's import path.
- ``--debug`` is taken out: it changes how errors are shown, not what runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tasktrain.cli.errors import CLIError

SPEC_KEYS = ("task", "data")
_SPEC_PARTS = ("class_path", "init_args", "help")


def normalize(argv: list[str], aliases: Mapping[str, Mapping[str, str]]) -> tuple[list[str], bool]:
    """Return the arguments in the form the parser takes, and whether ``--debug`` was given.

    ``aliases`` maps an option (``trainer.callbacks``) to ``{name: import path}``.

    Example:
        >>> normalize(["--task", "t.py", "--task.lr", "0.1", "--config", "c.yaml"], {})[0]
        ['--config', 'c.yaml', '--task.class_path', 't.py', '--task.init_args.lr', '0.1']
    """
    configs: list[str] = []
    rest: list[str] = []
    debug = False
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--debug":
            debug = True
        elif token == "--config" and i + 1 < len(argv):
            configs += [token, argv[i + 1]]
            i += 1
        elif token.startswith("--config="):
            configs.append(token)
        elif token.startswith("--"):
            name, eq, value = token.partition("=")
            name = _expand(name)
            names = aliases.get(name[2:].rstrip("+"), {})
            if eq:
                rest.append(f"{name}={names.get(value, value)}")
            else:
                rest.append(name)
                if names and i + 1 < len(argv):
                    i += 1
                    rest.append(names.get(argv[i], argv[i]))
        else:
            rest.append(token)
        i += 1
    return configs + rest, debug


def _expand(name: str) -> str:
    for key in SPEC_KEYS:
        if name == f"--{key}":
            return f"--{key}.class_path"
        prefix = f"--{key}."
        if name.startswith(prefix) and name[len(prefix) :].split(".")[0] not in _SPEC_PARTS:
            return f"--{key}.init_args.{name[len(prefix) :]}"
    return name


def read_configs(argv: list[str]) -> dict[str, Any]:
    """The content of every ``--config`` in ``argv`` (a file, or YAML given inline), by value.

    Raises:
        CLIError: a file that does not exist or is not valid YAML, named with the problem's line.
    """
    import yaml  # jsonargparse's own dependency; read only when a config is given

    configs: dict[str, Any] = {}
    for i, token in enumerate(argv):
        if token == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
        elif token.startswith("--config="):
            value = token.partition("=")[2]
        else:
            continue
        path = Path(value)
        try:
            is_file = path.is_file()
            content = yaml.safe_load(path.read_text(encoding="utf-8") if is_file else value)
        except OSError as error:
            raise CLIError(f"--config {value}: cannot read it: {error.strerror}") from error
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise CLIError(f"--config {value}: not valid YAML: {problem}{where}") from error
        if not is_file and not isinstance(content, dict):
            raise CLIError(f"--config {value}: no such file (looked for {path.resolve()})")
        if content is not None and not isinstance(content, dict):
            raise CLIError(f"--config {value}: expected a mapping of options, got a {type(content).__name__}")
        configs[value] = content or {}
    return configs


def find_spec(argv: list[str], key: str, configs: dict[str, Any]) -> str | None:
    """The ``class_path`` that parsing ``argv`` (already normalized) will give ``key``.

    Mirrors the parser's precedence: config files in order (``configs`` from
    :func:`read_configs`), then the command line; the last value wins.
    """
    option = f"--{key}.class_path"
    spec: str | None = None
    for i, token in enumerate(argv):
        if token in ("--config", option) and i + 1 < len(argv):
            value = argv[i + 1]
        elif token.startswith(("--config=", f"{option}=")):
            value = token.partition("=")[2]
        else:
            continue
        if token.startswith("--config"):
            section = configs.get(value, {}).get(key, _UNSET)
            if section is None:
                spec = None
            elif isinstance(section, dict) and "class_path" in section:
                spec = section["class_path"]
        else:
            spec = None if value in ("null", "None", "") else value
    return spec


_UNSET: Any = object()
