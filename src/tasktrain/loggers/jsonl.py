"""``JSONLLogger``: metrics as JSON lines in ``metrics.jsonl``, hyperparameters as ``hparams.json``."""

from __future__ import annotations

import json
import math

from tasktrain.loggers.base import FileLogger


class JSONLLogger(FileLogger):
    """Write one JSON object per row, ``{"step": 10, "train/loss": 0.5}``, through fsspec.

    Files: ``{root_dir}/{name}/version_{n}/metrics.jsonl`` and ``hparams.json`` (a local path or
    any fsspec URL whose filesystem can append). Each line holds only the metrics of that write,
    so rows never need rewriting. The lines are strict JSON: NaN and infinities are written as
    ``null``. Read them back with ``pandas.read_json(path, lines=True)`` or line by line.

    Example:
        >>> logger = JSONLLogger("memory://runs")
        >>> logger.log_metrics({"train/loss": 0.5}, step=10); logger.finalize()
    """

    def __init__(
        self, root_dir: str = "runs", name: str = "jsonl", version: int | None = None, flush_every: int = 100
    ) -> None:
        super().__init__(root_dir, name, version, flush_every)

    def write_rows(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        lines = (
            json.dumps({"step": step, **_finite_or_null(metrics)}, allow_nan=False) for step, metrics in rows
        )
        self.append("metrics.jsonl", "".join(f"{line}\n" for line in lines))


def _finite_or_null(metrics: dict[str, float]) -> dict[str, float | None]:
    return {name: value if math.isfinite(value) else None for name, value in metrics.items()}
