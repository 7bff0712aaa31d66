"""``CSVLogger``: metrics as ``metrics.csv`` and hyperparameters as ``hparams.json``, through fsspec."""

from __future__ import annotations

import csv
import io
from typing import Any

from tasktrain.loggers.base import FileLogger


class CSVLogger(FileLogger):
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
        super().__init__(root_dir, name, version, flush_every)
        self._columns: list[str] = []
        self._rows: list[dict[str, Any]] = []

    def write_rows(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        new = [{"step": step, **metrics} for step, metrics in rows]
        new_columns = [k for row in new for k in row if k not in self._columns]
        self._rows.extend(new)
        if new_columns:  # a wider header: rewrite everything written so far
            self._columns.extend(dict.fromkeys(new_columns))
            self.write("metrics.csv", _csv_text(self._columns, self._rows, header=True))
        else:
            self.append("metrics.csv", _csv_text(self._columns, new, header=False))


def _csv_text(columns: list[str], rows: list[dict[str, Any]], header: bool) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
