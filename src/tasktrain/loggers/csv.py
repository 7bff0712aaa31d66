"""``CSVLogger``: metrics as ``metrics.csv`` and hyperparameters as ``hparams.json``, through fsspec."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import fsspec
from fsspec.core import url_to_fs
from lightning_utilities.core.rank_zero import rank_zero_only

from tasktrain.loggers.base import Logger


class CSVLogger(Logger):
    """Write metrics under ``{root_dir}/{name}/version_{n}/metrics.csv`` (local path or any fsspec URL).

    Rows are buffered and written every ``flush_every`` rows and at the end; a new column
    rewrites the file with the wider header, so no value is ever dropped.

    Example:
        >>> logger = CSVLogger("memory://runs")
        >>> logger.log_metrics({"train/loss": 0.5}, step=10); logger.finalize()
    """

    def __init__(
        self, root_dir: str = "runs", name: str = "csv", version: int | None = None, flush_every: int = 100
    ) -> None:
        if flush_every < 1:
            raise ValueError(f"CSVLogger(flush_every={flush_every!r}): must be an integer >= 1")
        self.root_dir = str(root_dir).rstrip("/")
        self.name = name
        self.flush_every = flush_every
        self._fs, base = url_to_fs(f"{self.root_dir}/{name}")
        self._version = version if version is not None else _next_version(self._fs, base)
        self._dir_path = f"{base}/version_{self._version}"
        self._columns: list[str] = []
        self._pending: list[dict[str, Any]] = []
        self._rows: list[dict[str, Any]] = []

    @property
    def version(self) -> int:
        return self._version

    @property
    def log_dir(self) -> str:
        return f"{self.root_dir}/{self.name}/version_{self._version}"

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any]) -> None:
        self._fs.makedirs(self._dir_path, exist_ok=True)
        with self._fs.open(f"{self._dir_path}/hparams.json", "w") as f:
            json.dump(params, f, indent=2, default=repr)

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._pending.append({"step": step, **metrics})
        if len(self._pending) >= self.flush_every:
            self._flush()

    @rank_zero_only
    def finalize(self) -> None:
        self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        self._fs.makedirs(self._dir_path, exist_ok=True)
        path = f"{self._dir_path}/metrics.csv"
        new_columns = [k for row in self._pending for k in row if k not in self._columns]
        self._rows.extend(self._pending)
        if new_columns:  # a wider header: rewrite everything written so far
            self._columns.extend(dict.fromkeys(new_columns))
            _write_rows(self._fs, path, "w", self._columns, self._rows, header=True)
        else:
            _write_rows(self._fs, path, "a", self._columns, self._pending, header=False)
        self._pending = []


def _write_rows(
    fs: fsspec.AbstractFileSystem,
    path: str,
    mode: str,
    columns: list[str],
    rows: list[dict[str, Any]],
    header: bool,
) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    with fs.open(path, mode) as f:
        f.write(buffer.getvalue())


def _next_version(fs: fsspec.AbstractFileSystem, base: str) -> int:
    if not fs.exists(base):
        return 0
    versions = [
        int(name.rsplit("_", 1)[1])
        for name in (p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(base, detail=False))
        if name.startswith("version_") and name.rsplit("_", 1)[1].isdigit()
    ]
    return max(versions, default=-1) + 1
