"""``TensorBoardLogger``: scalars and hyperparameters as TensorBoard event files, through fsspec."""

from __future__ import annotations

import io
import os
import socket
import time
from typing import Any

from lightning_utilities.core.imports import RequirementCache
from lightning_utilities.core.rank_zero import rank_zero_only

from tasktrain.loggers.base import FileLogger

_TENSORBOARD = RequirementCache("tensorboard>=2.16")


class TensorBoardLogger(FileLogger):
    """Write metrics as TensorBoard scalars and hyperparameters for its HParams dashboard.

    Files: one ``events.out.tfevents.*`` file per logger under ``{root_dir}/{name}/version_{n}``.
    Records are encoded with tensorboard's own protos and record writer and appended through
    fsspec, so the directory can be a local path or a URL whose filesystem can append
    (``memory://``, ``s3://``, ...). Rows are written every ``flush_every`` rows and at the end
    of every run. Needs the ``tensorboard`` package (``pip install "tasktrain[tensorboard]"``),
    imported only when something is written.

    Example:
        >>> logger = TensorBoardLogger("memory://runs")
        >>> logger.log_metrics({"train/loss": 0.5}, step=10); logger.finalize()
    """

    def __init__(
        self,
        root_dir: str = "runs",
        name: str = "tensorboard",
        version: int | None = None,
        flush_every: int = 10,
    ) -> None:
        if not _TENSORBOARD:
            raise ModuleNotFoundError(
                f'TensorBoardLogger needs tensorboard: pip install "tasktrain[tensorboard]" ({_TENSORBOARD.message})'
            )
        super().__init__(root_dir, name, version, flush_every)
        self._filename: str | None = None  # chosen at the first write, by the process that writes
        self._wall_times: list[float] = []  # of the rows not yet written

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._wall_times.append(time.time())  # when the values were logged, not when they are written
        super().log_metrics(metrics, step)

    def write_hyperparams(self, params: dict[str, Any]) -> None:
        if not params:
            return
        from tensorboard.plugins.hparams.summary_v2 import hparams_pb

        summary = hparams_pb({k: _hparam_value(v) for k, v in params.items()}, start_time_secs=time.time())
        self._append_events([_event(summary=summary)])

    def write_rows(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        times, self._wall_times = self._wall_times[: len(rows)], self._wall_times[len(rows) :]
        self._append_events(
            [
                _event(
                    wall_time=wall_time,
                    step=step,
                    summary=Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in metrics.items()]),
                )
                for (step, metrics), wall_time in zip(rows, times, strict=True)
            ]
        )

    def _append_events(self, events: list[Any]) -> None:
        from tensorboard.summary.writer.record_writer import RecordWriter

        buffer = io.BytesIO()
        records = RecordWriter(buffer)
        if self._filename is None:  # a new file starts with its format version
            self._filename = f"events.out.tfevents.{time.time():.0f}.{socket.gethostname()}.{os.getpid()}"
            records.write(_event(file_version="brain.Event:2").SerializeToString())
        for event in events:
            records.write(event.SerializeToString())
        self.append(self._filename, buffer.getvalue())


def _event(**fields: Any) -> Any:
    from tensorboard.compat.proto.event_pb2 import Event

    return Event(**{"wall_time": time.time(), **fields})


def _hparam_value(value: Any) -> bool | int | float | str:
    """TensorBoard takes bools, numbers and strings; anything else is shown as its ``repr``."""
    return value if isinstance(value, (bool, int, float, str)) else repr(value)
