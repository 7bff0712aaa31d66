"""``Profiler``: a ``torch.profiler`` trace of a few training steps, written through fsspec."""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING, Any

import torch
from fsspec.core import url_to_fs
from typing_extensions import override

from tasktrain.callbacks.base import Callback

if TYPE_CHECKING:
    from tasktrain.module import TaskModule
    from tasktrain.trainer import Trainer


class Profiler(Callback):
    """Profile ``active`` optimizer steps after ``wait`` skipped and ``warmup`` warm-up steps.

    Writes a Chrome trace (open it in ``chrome://tracing`` or https://ui.perfetto.dev) as
    ``{dirpath}/{filename}.json`` and, with ``table=True``, the ``key_averages`` table as
    ``{filename}.txt``. ``dirpath`` defaults to ``{default_root_dir}/profiler`` and may be any
    fsspec URL: torch writes the trace to a local temporary file, which is then copied there.
    Each profiled step is marked ``ProfilerStep#N`` in the trace. Only rank 0 profiles, unless
    ``all_ranks=True`` (files then end in ``-rank{N}``). A run that ends before the last active
    step still writes what was recorded (its last ``ProfilerStep`` then holds the end of the run).

    Args:
        wait: steps skipped before profiling starts.
        warmup: steps profiled but discarded (the profiler's own warm-up).
        active: steps recorded.
        record_shapes: passed to ``torch.profiler.profile``, as are ``profile_memory`` and ``with_stack``.
        table: also write the operator table, sorted by ``sort_by``, ``row_limit`` rows.

    Example:
        >>> import tasktrain as tt
        >>> trainer = tt.Trainer(max_steps=10, callbacks=[Profiler(wait=2, active=3)])
    """

    def __init__(
        self,
        wait: int = 1,
        warmup: int = 1,
        active: int = 3,
        dirpath: str | None = None,
        filename: str = "trace",
        all_ranks: bool = False,
        record_shapes: bool = False,
        profile_memory: bool = False,
        with_stack: bool = False,
        table: bool = True,
        sort_by: str = "self_cpu_time_total",
        row_limit: int = 30,
    ) -> None:
        for name, value, minimum in (("wait", wait, 0), ("warmup", warmup, 0), ("active", active, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"Profiler({name}={value!r}): accepted values are an int >= {minimum}")
        self.wait, self.warmup, self.active = wait, warmup, active
        self.dirpath, self.filename, self.all_ranks = dirpath, filename, all_ranks
        self.record_shapes, self.profile_memory, self.with_stack = record_shapes, profile_memory, with_stack
        self.table, self.sort_by, self.row_limit = table, sort_by, row_limit
        self.written: list[str] = []  # URLs of the files written, for the user
        self._profiler: torch.profiler.profile | None = None
        self._target = ""

    @override
    def on_train_start(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        if not (self.all_ranks or trainer.is_global_zero):
            return
        rank = f"-rank{trainer.strategy.global_rank}" if self.all_ranks else ""
        dirpath = self.dirpath or f"{str(trainer.default_root_dir).rstrip('/')}/profiler"
        self._target = f"{dirpath.rstrip('/')}/{self.filename}{rank}"
        activities = [torch.profiler.ProfilerActivity.CPU]
        if trainer.strategy.root_device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._profiler = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(
                wait=self.wait, warmup=self.warmup, active=self.active, repeat=1
            ),
            on_trace_ready=self._export,
            record_shapes=self.record_shapes,
            profile_memory=self.profile_memory,
            with_stack=self.with_stack,
        )
        self._profiler.start()

    @override
    def on_train_step_end(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        if self._profiler is not None:
            self._profiler.step()

    @override
    def on_train_end(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        self._stop()

    @override
    def on_exception(self, trainer: Trainer, module: TaskModule[Any], error: BaseException) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._profiler is not None:
            profiler, self._profiler = self._profiler, None
            profiler.stop()  # exports what was recorded if the active steps were not all reached

    def _export(self, profiler: torch.profiler.profile) -> None:
        fs, path = url_to_fs(self._target)
        fs.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, "trace.json")
            profiler.export_chrome_trace(local)  # torch writes local files only
            fs.put_file(local, f"{path}.json")
        self.written.append(f"{self._target}.json")
        if self.table:
            text = profiler.key_averages().table(sort_by=self.sort_by, row_limit=self.row_limit)
            with fs.open(f"{path}.txt", "w") as f:
                f.write(text)
            self.written.append(f"{self._target}.txt")
