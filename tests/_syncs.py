"""``SyncCounter``: what a training step costs in host reads and collectives, batch by batch.

On a GPU, reading a device tensor back to the host (``.item()``, ``float(t)``, ``bool(t)``,
``.tolist()``, ``.cpu()``, ``.numpy()``) stalls the pipeline, and every collective the framework
adds to a step is latency the user pays for. On this CPU-only machine neither costs anything
measurable, so the suite counts them instead:

- host reads: ``aten._local_scalar_dense`` seen by a ``TorchDispatchMode`` (what ``item``,
  ``float``, ``int`` and ``bool`` of a tensor dispatch), plus Python-level calls of
  ``Tensor.tolist``, ``Tensor.cpu`` and ``Tensor.numpy`` (these do not dispatch an op);
- collectives: calls of ``torch.distributed``'s collectives and functional collectives
  (``_c10d_functional`` ops) made from anywhere but the strategy's own machinery (FSDP's
  all-gathers and reduce-scatters, DTensor redistribution, DDP's reducer, DeepSpeed's engine).

Attribution is by training micro-batch: a window opens at ``on_train_batch_start`` and runs to
the next one (or ``on_train_end``), so the logging, validation and checkpointing that close an
optimizer step count against its last micro-batch. Each window records whether it logged,
validated, saved or ended an epoch; :meth:`SyncCounter.quiet_batches` are the others, which the
contract (DESIGN §5.3) wants free of both.

The counter is a :class:`~tasktrain.callbacks.Callback` whose state is its record, so under
``devices=N`` rank 0's record comes back to the launching process with the other callback
states.

Example::

    counter = SyncCounter()
    Trainer(callbacks=[counter], log_every_n_steps=4, ...).fit(module, loader)
    assert all(b["host_reads"] == 0 for b in counter.quiet_batches()), counter.report()
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d
from torch.utils._python_dispatch import TorchDispatchMode

import tasktrain as tt

#: Python-level collectives of ``torch.distributed`` (the functional ones are seen as ops).
COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_object",
    "all_to_all",
    "all_to_all_single",
    "barrier",
    "broadcast",
    "broadcast_object_list",
    "gather",
    "gather_object",
    "monitored_barrier",
    "recv",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "scatter",
    "scatter_object_list",
    "send",
)

#: Reads that do not dispatch an op, so they are counted at the Python level.
UNDISPATCHED_READS = ("tolist", "cpu", "numpy")

#: Where the strategy's own communication lives: calls from inside these are not counted.
STRATEGY_INTERNALS = (
    "torch/distributed/fsdp/",
    "torch/distributed/_composable/",
    "torch/distributed/tensor/",
    "torch/distributed/algorithms/",
    "torch/nn/parallel/",
    "/deepspeed/",
)


def _caller() -> tuple[str, bool]:
    """The innermost frame outside torch and this file, and whether a strategy internal is on the stack."""
    frame = sys._getframe(2)
    where = "?"
    internal = False
    while frame is not None:
        name = frame.f_code.co_filename.replace("\\", "/")
        if any(part in name for part in STRATEGY_INTERNALS):
            internal = True
        if where == "?" and "/torch/" not in name and not name.endswith("_syncs.py"):
            where = f"{name.rsplit('/', 2)[-1]}:{frame.f_lineno} {frame.f_code.co_name}"
        frame = frame.f_back  # type: ignore[assignment]
    return where, internal


class _ReadMode(TorchDispatchMode):
    """Counts the ops that read a device value back to the host, and functional collectives."""

    def __init__(self, record: Callable[[str, str], None], cpu_reads: bool = True) -> None:
        super().__init__()
        self.record = record
        self.cpu_reads = cpu_reads

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is torch.ops.aten._local_scalar_dense.default:
            if self.cpu_reads or args[0].device.type != "cpu":
                self.record("host_reads", "item")
        elif func.namespace == "_c10d_functional" and not func.name().startswith("_c10d_functional::wait"):
            self.record("collectives", func.name())
        return func(*args, **(kwargs or {}))


class SyncCounter(tt.callbacks.Callback):
    """Counts host reads and framework collectives per training micro-batch (see the module docstring).

    ``batches`` holds one dict per micro-batch: ``step`` (global step when it started),
    ``batch_idx``, ``host_reads``, ``collectives``, ``events`` (what was counted, and where),
    and the flags ``logged``, ``validated``, ``saved``, ``epoch_end``.

    ``cpu_reads=False`` counts only reads of accelerator tensors, the ones that stall a GPU
    (e.g. not the CPU step counters of a non-capturable AdamW): for ``benchmarks/gpu_check.py``.
    """

    def __init__(self, cpu_reads: bool = True) -> None:
        self.cpu_reads = cpu_reads
        self.batches: list[dict[str, Any]] = []
        self._window: dict[str, Any] | None = None
        self._undo: list[Callable[[], None]] = []
        self._mode: _ReadMode | None = None

    # -- what the tests read --------------------------------------------------------------------
    def quiet_batches(self) -> list[dict[str, Any]]:
        """The micro-batches that neither logged, validated, saved nor ended an epoch."""
        flags = ("logged", "validated", "saved", "epoch_end")
        return [b for b in self.batches if not any(b[f] for f in flags)]

    def report(self, batches: list[dict[str, Any]] | None = None) -> str:
        """A readable account of the counted events, for assertion messages."""
        rows = []
        for b in self.batches if batches is None else batches:
            if b["host_reads"] or b["collectives"]:
                rows.append(f"step {b['step']} batch {b['batch_idx']}: {b['events']}")
        return "\n".join(rows) or "nothing counted"

    # -- counting -------------------------------------------------------------------------------
    def _record(self, kind: str, what: str) -> None:
        window = self._window
        if window is None:
            return
        where, internal = _caller()
        if kind == "collectives" and internal:
            return
        window[kind] += 1
        window["events"].append(f"{kind[:-1]}:{what} at {where}")

    def _install(self) -> None:
        for name in COLLECTIVES:
            for owner in (dist, c10d):
                original = getattr(owner, name, None)
                if original is not None:
                    self._patch(owner, name, self._counting(original, "collectives", name))
        for name in UNDISPATCHED_READS:
            self._patch(torch.Tensor, name, self._counting(getattr(torch.Tensor, name), "host_reads", name))
        self._mode = _ReadMode(self._record, self.cpu_reads)
        self._mode.__enter__()

    def _uninstall(self) -> None:
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self._mode = None
        while self._undo:
            self._undo.pop()()

    def _patch(self, owner: Any, name: str, replacement: Callable[..., Any]) -> None:
        original = owner.__dict__.get(name)
        setattr(owner, name, replacement)
        if original is None:
            self._undo.append(lambda: delattr(owner, name))
        else:
            self._undo.append(lambda: setattr(owner, name, original))

    def _counting(self, original: Callable[..., Any], kind: str, name: str) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            on_cpu = (
                kind == "host_reads" and isinstance(args[0], torch.Tensor) and args[0].device.type == "cpu"
            )
            if self.cpu_reads or not on_cpu:
                self._record(kind, name)
            return original(*args, **kwargs)

        return counted

    def _close_window(self) -> None:
        if self._window is not None:
            self.batches.append(self._window)
            self._window = None

    def _mark(self, flag: str) -> None:
        if self._window is not None:
            self._window[flag] = True

    # -- hooks ----------------------------------------------------------------------------------
    def on_train_start(self, trainer: Any, module: Any) -> None:
        self.batches = []
        self._install()

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        self._close_window()
        self._window = {
            "step": trainer.state.global_step,
            "batch_idx": batch_idx,
            "host_reads": 0,
            "collectives": 0,
            "events": [],
            "logged": False,
            "validated": False,
            "saved": False,
            "epoch_end": False,
        }

    def on_train_step_end(self, trainer: Any, module: Any) -> None:
        if trainer.state.global_step % trainer.log_every_n_steps == 0:
            self._mark("logged")

    def on_validation_start(self, trainer: Any, module: Any) -> None:
        self._mark("validated")

    def on_save_checkpoint(self, trainer: Any, module: Any, checkpoint: dict[str, Any]) -> None:
        self._mark("saved")

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        self._mark("epoch_end")

    def on_train_end(self, trainer: Any, module: Any) -> None:
        self._close_window()
        self._uninstall()

    def on_exception(self, trainer: Any, module: Any, error: BaseException) -> None:
        self._close_window()
        self._uninstall()

    # -- state: rank 0's record comes back from spawned ranks --------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches = list(state["batches"])
