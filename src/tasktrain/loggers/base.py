"""The ``Logger`` interface, and ``FileLogger``: the shared skeleton of loggers that write files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import fsspec
from fsspec.core import url_to_fs
from lightning_utilities.core.rank_zero import rank_zero_only

from tasktrain.checkpoint.storage import write_probe
from tasktrain.state import Stateful


class Logger:
    """Receives metrics at the logging interval. Subclass it to send them anywhere.

    Loggers are called on every rank; file-writing loggers write on rank 0 only.

    Example:
        >>> class PrintLogger(Logger):
        ...     def log_metrics(self, metrics, step):
        ...         print(step, metrics)
    """

    @property
    def log_dir(self) -> str | None:
        """Where this logger writes, if anywhere."""
        return None

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        """Record the run's hyperparameters (called once at the start of fit)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Record ``metrics`` (already floats) at optimizer step ``step``."""
        raise NotImplementedError

    def finalize(self) -> None:
        """Flush and close (called at the end of every run, also after an error)."""

    def set_default_root_dir(self, root_dir: str) -> None:
        """The Trainer's ``default_root_dir``, given when the Trainer is built; a logger that was
        given no place of its own may keep its files there (MLFlowLogger's sqlite store)."""

    def log_artifact(self, path: str) -> None:
        """Keep the local file ``path`` with the run (the CLI's ``config.yaml``); a no-op for file loggers,
        whose directory already holds it."""

    def after_save_checkpoint(self, path: str) -> None:
        """A checkpoint was saved at ``path`` (the last call of a run names its final checkpoint)."""


class FileLogger(Logger):
    """Writes files under ``{root_dir}/{name}/version_{n}`` through fsspec, on rank 0 only.

    ``n`` is the next free version unless given; it is chosen when the logger is built (in the
    launching process, before ranks are spawned), so all ranks and later runs of the same logger
    agree on it. Rows are buffered and handed to :meth:`write_rows` every ``flush_every`` rows
    and at :meth:`finalize`. Subclasses implement ``write_rows``, and may override
    ``write_hyperparams`` (default: ``hparams.json``); both run on rank 0 only. At the start of
    fit, before the first training step, :meth:`log_hyperparams` checks that the directory can
    be written (:meth:`check_writable`).

    Example:
        >>> class LinesLogger(FileLogger):
        ...     def write_rows(self, rows):
        ...         self.append("log.txt", "".join(f"{step} {metrics}\\n" for step, metrics in rows))
    """

    def __init__(self, root_dir: str, name: str, version: int | None, flush_every: int) -> None:
        if isinstance(flush_every, bool) or not isinstance(flush_every, int) or flush_every < 1:
            raise ValueError(f"{type(self).__name__}(flush_every={flush_every!r}): must be an integer >= 1")
        self.root_dir = str(root_dir).rstrip("/")
        self.name = name
        self.flush_every = flush_every
        self._fs, base = url_to_fs(f"{self.root_dir}/{name}")
        self._version = version if version is not None else _next_version(self._fs, base)
        self._dir_path = f"{base}/version_{self._version}"  # the filesystem's own path
        self._pending: list[tuple[int, dict[str, float]]] = []

    @property
    def version(self) -> int:
        return self._version

    @property
    def log_dir(self) -> str:
        """The run's directory as the user named it (a local path or a URL)."""
        return f"{self.root_dir}/{self.name}/version_{self._version}"

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any]) -> None:
        """Check that the run's directory can be written, then record ``params`` (rank 0 only).

        Raises:
            OSError: the directory cannot be created or written, naming it.
        """
        self.check_writable()
        self.write_hyperparams(params)

    def check_writable(self) -> None:
        """Create the run's directory and write and remove a probe file in it, through fsspec.

        Called by :meth:`log_hyperparams` at the start of fit, so an unwritable directory is found
        before the first training step rather than at the first flush of metrics.

        Raises:
            OSError: the directory cannot be created or written; the message names it.

        Example:
            >>> CSVLogger("memory://runs").check_writable()  # doctest: +SKIP
        """
        try:
            write_probe(self._fs, self._dir_path)
        except Exception as error:  # fsspec backends raise their own types, not only OSError
            raise OSError(
                f"{type(self).__name__}: cannot write to the log directory {self.log_dir!r} "
                f"({type(error).__name__}: {error}); pass a writable root_dir or make it writable"
            ) from error

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._pending.append((step, dict(metrics)))
        if len(self._pending) >= self.flush_every:
            self._flush()

    @rank_zero_only
    def finalize(self) -> None:
        self._flush()

    def write_rows(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        """Write ``(step, metrics)`` rows, oldest first."""
        raise NotImplementedError

    def write_hyperparams(self, params: dict[str, Any]) -> None:
        """Write the hyperparameters; by default as ``hparams.json`` (``repr`` for non-JSON values)."""
        self.write("hparams.json", json.dumps(params, indent=2, default=repr))

    def append(self, filename: str, data: str | bytes) -> None:
        """Append ``data`` to ``filename`` in the run's directory, creating both when missing."""
        self._fs.makedirs(self._dir_path, exist_ok=True)
        with self._fs.open(f"{self._dir_path}/{filename}", "ab" if isinstance(data, bytes) else "a") as f:
            f.write(data)

    def write(self, filename: str, text: str) -> None:
        """Write ``text`` to ``filename`` in the run's directory, replacing it."""
        self._fs.makedirs(self._dir_path, exist_ok=True)
        with self._fs.open(f"{self._dir_path}/{filename}", "w") as f:
            f.write(text)

    def _flush(self) -> None:
        if self._pending:
            self.write_rows(self._pending)
            self._pending = []


def logger_states(loggers: Sequence[Logger]) -> dict[str, Stateful]:
    """The loggers that carry a run identity (they are Stateful), by their name in checkpoints:
    ``loggers.<ClassName>``, with ``.1``, ``.2``... for further loggers of one class.

    Example:
        >>> logger_states([CSVLogger("memory://runs")])  # doctest: +SKIP
        {}
    """
    states: dict[str, Stateful] = {}
    for logger in loggers:
        if isinstance(logger, Stateful):
            base = f"loggers.{type(logger).__name__}"
            name, n = base, 0
            while name in states:
                n += 1
                name = f"{base}.{n}"
            states[name] = logger
    return states


def _next_version(fs: fsspec.AbstractFileSystem, base: str) -> int:
    if not fs.exists(base):
        return 0
    versions = [
        int(name.rsplit("_", 1)[1])
        for name in (p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(base, detail=False))
        if name.startswith("version_") and name.rsplit("_", 1)[1].isdigit()
    ]
    return max(versions, default=-1) + 1
