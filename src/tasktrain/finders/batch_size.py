"""``find_batch_size``: double the batch size until a training step no longer fits."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from typing_extensions import override

from tasktrain.callbacks.base import Callback
from tasktrain.finders._trial import restored_weights, trial_trainer
from tasktrain.log_buffer import batch_size_of
from tasktrain.module import TaskModule

if TYPE_CHECKING:
    from tasktrain.trainer import Trainer


@dataclass
class BatchSizeTrial:
    """One tried batch size: whether it fit, the peak memory measured (bytes), and why it stopped."""

    batch_size: int
    fits: bool
    peak_bytes: int | None = None
    reason: str = ""


@dataclass
class BatchSizeResult:
    """The largest batch size that fit, and every trial in order."""

    batch_size: int
    trials: list[BatchSizeTrial] = field(default_factory=list)


def find_batch_size(
    module: TaskModule[Any],
    make_dataloader: Callable[[int], DataLoader[Any]] | None = None,
    *,
    init_batch_size: int = 2,
    max_batch_size: int | None = None,
    max_memory_bytes: int | None = None,
    steps_per_trial: int = 1,
    trainer_kwargs: Mapping[str, Any] | None = None,
) -> BatchSizeResult:
    """Train ``steps_per_trial`` steps at batch sizes ``init, 2*init, 4*init, ...`` until one fails.

    A batch size fails when its step runs out of memory (``torch.OutOfMemoryError`` or a
    ``RuntimeError`` saying "out of memory"), when its peak memory exceeds ``max_memory_bytes``,
    or when the dataloader cannot fill it. ``max_batch_size`` caps the search (it is tried
    itself). The peak is measured honestly for the device:

    - CUDA: ``torch.cuda.max_memory_allocated`` over the trial (weights, gradients, optimizer
      state and activations: everything the caching allocator handed out).
    - CPU and others: the bytes of the distinct tensor storages saved for backward during one
      micro-batch (the activations, plus any weights an op saves), through
      ``torch.autograd.graph.saved_tensors_hooks``. Weights, gradients and optimizer state are
      not counted, and activations that activation checkpointing frees are rightly left out.
      Without CUDA an out-of-memory error cannot be relied on, so give ``max_memory_bytes`` or
      ``max_batch_size``.

    Batches come from ``make_dataloader(batch_size)``, or, when it is None, from the module's
    ``train_dataloader()`` after setting ``hparams["batch_size"]`` (or ``module.batch_size``);
    that attribute is left at the batch size found. The module's weights are restored after
    every trial.

    Example:
        >>> result = find_batch_size(model, lambda b: DataLoader(data, batch_size=b), max_batch_size=1024)  # doctest: +SKIP
        >>> result.batch_size  # doctest: +SKIP
    """
    _check(init_batch_size, max_batch_size, max_memory_bytes, steps_per_trial)
    make, set_batch_size = _dataloader_source(module, make_dataloader)
    wants_cuda = _runs_on_cuda(trainer_kwargs)
    if not wants_cuda and max_batch_size is None and max_memory_bytes is None:
        raise ValueError(
            "find_batch_size(max_batch_size=None, max_memory_bytes=None): off CUDA an out-of-memory error is "
            "not a reliable stop; give max_batch_size or max_memory_bytes"
        )
    trials: list[BatchSizeTrial] = []
    size = init_batch_size if max_batch_size is None else min(init_batch_size, max_batch_size)
    while True:
        trial = _try(module, make, size, steps_per_trial, max_memory_bytes, trainer_kwargs)
        trials.append(trial)
        if not trial.fits or size == max_batch_size:
            break
        size = size * 2 if max_batch_size is None else min(size * 2, max_batch_size)
    fitting = [t.batch_size for t in trials if t.fits]
    if not fitting:
        raise RuntimeError(
            f"find_batch_size: even batch_size={trials[0].batch_size} fails: {trials[0].reason}"
        )
    if set_batch_size is not None:
        set_batch_size(fitting[-1])
    return BatchSizeResult(fitting[-1], trials)


def _try(
    module: TaskModule[Any],
    make: Callable[[int], DataLoader[Any]],
    size: int,
    steps: int,
    max_memory_bytes: int | None,
    trainer_kwargs: Mapping[str, Any] | None,
) -> BatchSizeTrial:
    meter = _PeakMemory()
    trainer = trial_trainer("find_batch_size", trainer_kwargs, steps, [meter])
    with restored_weights(module):
        try:
            trainer.fit(module, make(size))
        except RuntimeError as error:  # torch.OutOfMemoryError is a RuntimeError
            if not isinstance(error, torch.OutOfMemoryError) and "out of memory" not in str(error):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return BatchSizeTrial(size, fits=False, reason=f"out of memory: {str(error).splitlines()[0]}")
    if meter.smallest_batch < size:
        reason = f"the dataloader gives batches of only {meter.smallest_batch} samples"
        return BatchSizeTrial(size, fits=False, peak_bytes=meter.peak, reason=reason)
    if max_memory_bytes is not None and meter.peak > max_memory_bytes:
        reason = f"peak memory {meter.peak} B > max_memory_bytes={max_memory_bytes}"
        return BatchSizeTrial(size, fits=False, peak_bytes=meter.peak, reason=reason)
    return BatchSizeTrial(size, fits=True, peak_bytes=meter.peak)


class _PeakMemory(Callback):
    """The trial's peak memory: CUDA allocator peak, or saved-for-backward bytes per micro-batch."""

    def __init__(self) -> None:
        self.peak = 0
        self.smallest_batch = 2**62
        self._device = torch.device("cpu")
        self._saved: dict[int, int] = {}
        self._hooks = ExitStack()

    @override
    def on_train_start(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        self._device = trainer.strategy.root_device
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
            torch.cuda.reset_peak_memory_stats(self._device)

    @override
    def on_train_batch_start(
        self, trainer: Trainer, module: TaskModule[Any], batch: Any, batch_idx: int
    ) -> None:
        self.smallest_batch = min(self.smallest_batch, batch_size_of(batch))
        if self._device.type != "cuda":
            self._saved = {}
            self._hooks.enter_context(torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack))

    @override
    def on_after_backward(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        if self._device.type != "cuda":
            self._hooks.close()
            self.peak = max(self.peak, sum(self._saved.values()))

    @override
    def on_train_end(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        if self._device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self._device)

    @override
    def on_exception(self, trainer: Trainer, module: TaskModule[Any], error: BaseException) -> None:
        self._hooks.close()

    def _pack(self, tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        self._saved[storage.data_ptr()] = storage.nbytes()  # views of one storage count once
        return tensor


def _unpack(tensor: Tensor) -> Tensor:
    return tensor


def _dataloader_source(
    module: TaskModule[Any], make_dataloader: Callable[[int], DataLoader[Any]] | None
) -> tuple[Callable[[int], DataLoader[Any]], Callable[[int], None] | None]:
    if make_dataloader is not None:
        return make_dataloader, None
    if "batch_size" in module.hparams:

        def set_batch_size(size: int) -> None:
            module.hparams["batch_size"] = size

    elif hasattr(module, "batch_size"):

        def set_batch_size(size: int) -> None:
            setattr(module, "batch_size", size)  # noqa: B010  # a plain attribute the user declared

    else:
        raise ValueError(
            f"find_batch_size(make_dataloader=None): {type(module).__name__} has neither hparams['batch_size'] "
            "nor a batch_size attribute for train_dataloader() to read; pass make_dataloader=lambda b: DataLoader(..., batch_size=b)"
        )

    def make(size: int) -> DataLoader[Any]:
        set_batch_size(size)
        return module.train_dataloader()

    return make, set_batch_size


def _runs_on_cuda(trainer_kwargs: Mapping[str, Any] | None) -> bool:
    accelerator = (trainer_kwargs or {}).get("accelerator", "auto")
    return accelerator == "cuda" or (accelerator == "auto" and torch.cuda.is_available())


def _check(init: int, max_batch_size: int | None, max_memory_bytes: int | None, steps: int) -> None:
    for name, value, optional in (
        ("init_batch_size", init, False),
        ("max_batch_size", max_batch_size, True),
        ("max_memory_bytes", max_memory_bytes, True),
        ("steps_per_trial", steps, False),
    ):
        if value is None and optional:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            accepted = "an int >= 1" + (" or None" if optional else "")
            raise ValueError(f"find_batch_size({name}={value!r}): accepted values are {accepted}")
