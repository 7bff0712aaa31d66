"""Logging during ``fit`` reads values back from the device only on the steps where it writes.

A ``TorchDispatchMode`` sees every ``aten._local_scalar_dense`` (what ``.item()``, ``float()`` and
``bool()`` of a tensor run) and a ``TorchFunctionMode`` every ``Tensor.tolist``/``numpy`` (CPU
read-backs that skip the dispatcher). On an accelerator each of these is a host sync; on CPU they
are the same calls, so counting them here proves where the syncs would be. Each read-back is
attributed to the innermost tasktrain source line (or to the test's own module code).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
from tasktrain.callbacks import Callback
from tasktrain.loggers import CSVLogger, JSONLLogger, TensorBoardLogger

SRC = str(Path(tt.__file__).resolve().parent)
_READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.equal.default}
_OWN_FRAMES = {"__torch_dispatch__", "__torch_function__", "_record", "_where"}


def _where() -> str:
    """``loops/accumulation.py:run`` for tasktrain code, ``module`` for this file's TaskModule."""
    frame = sys._getframe(1)
    while frame is not None:
        file, name = frame.f_code.co_filename, frame.f_code.co_name
        if file == __file__ and name not in _OWN_FRAMES:
            return "module"
        if file.startswith(SRC):
            return f"{Path(file).relative_to(SRC).as_posix()}:{name}"
        frame = frame.f_back
    return "elsewhere"


class ReadBacks:
    """Both modes together; ``events`` lists where each read-back came from."""

    def __init__(self) -> None:
        self.events: list[str] = []
        outer = self

        class Dispatch(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func in _READS:
                    outer.events.append(_where())
                return func(*args, **(kwargs or {}))

        class Function(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                if func in (torch.Tensor.tolist, torch.Tensor.numpy):
                    outer.events.append(_where())
                return func(*args, **(kwargs or {}))

        self._modes = (Dispatch(), Function())

    def __enter__(self) -> ReadBacks:
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)


class PerStep(Callback):
    """Cuts ``ReadBacks.events`` into one list per optimizer step (the step's flush included)."""

    def __init__(self, reads: ReadBacks) -> None:
        self.reads = reads
        self.steps: list[list[str]] = []
        self._first_batch = False

    def on_train_epoch_start(self, trainer, module):
        self._first_batch = True

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self._first_batch:  # what came before (setup, the epoch's RNG snapshot) is not a step
            self.reads.events.clear()
            self._first_batch = False

    def on_train_step_end(self, trainer, module):
        self.steps.append(list(self.reads.events))
        self.reads.events.clear()


class LoggingTask(tt.TaskModule):
    """Logs tensors every micro-batch: on_step, on_epoch, sync_dist and a torchmetrics metric."""

    def __init__(self) -> None:
        from torchmetrics import MeanMetric

        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Linear(4, 1)
        self.mean_loss = MeanMetric(nan_strategy="disable")

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        self.log("train/mine", loss, prog_bar=True)
        self.log("train/synced", loss * 2, sync_dist=True)
        self.log("train/epoch_only", loss, on_step=False, on_epoch=True)
        self.mean_loss.update(loss)
        self.log("train/metric", self.mean_loss, on_step=True, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(
        TensorDataset(torch.randn(32, 4, generator=g), torch.randn(32, 1, generator=g)), batch_size=2
    )


def test_logging_reads_values_back_only_on_the_steps_it_writes(tmp_path):
    every, accumulate = 3, 2  # 16 micro-batches: 8 optimizer steps, written at steps 3 and 6
    reads = ReadBacks()
    per_step = PerStep(reads)
    trainer = tt.Trainer(
        max_epochs=1,
        accumulate_grad_batches=accumulate,
        log_every_n_steps=every,
        callbacks=[per_step],
        # Every logger writes at once (flush_every=1): they get floats and never read tensors.
        logger=[cls(str(tmp_path), flush_every=1) for cls in (CSVLogger, JSONLLogger, TensorBoardLogger)],
        default_root_dir=tmp_path,
        enable_checkpointing=False,
        accelerator="cpu",
    )
    with reads:
        trainer.fit(LoggingTask(), _loader())
    assert len(per_step.steps) == 8
    assert (tmp_path / "tensorboard" / "version_0").is_dir()  # the loggers did write
    # A writing step: the non-finite loss check of the interval's losses, their mean, then every
    # logged value in one read. The other steps read nothing.
    flush = Counter({"totals.py:raise_if_any": 1, "totals.py:_fold": 1, "log_buffer.py:_read": 1})
    for step, events in enumerate(per_step.steps, start=1):
        expected = Counter() if step % every else flush
        assert Counter(events) == expected, f"step {step}"
