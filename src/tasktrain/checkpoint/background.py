"""Writing checkpoints in the background: the training loop waits only while tensors are copied.

A save with ``async_save=True`` copies every tensor it will write off the training path (a
copy on the CPU; a device-to-host copy for device tensors), hands the writing to one background
thread, and returns. The thread writes the files into the checkpoint's temporary directory,
the manifest last, and renames it into place: a process killed meanwhile leaves no directory
that resume would pick, and ``"last"`` is still the previous complete checkpoint. At most one
save is in flight: the next one (and ``wait``) first waits for it, and re-raises its error.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor


def detached_copy(value: Any) -> Any:
    """``value`` with every tensor replaced by a CPU copy that the next optimizer step cannot change.

    Example:
        >>> import torch
        >>> weights = {"w": torch.ones(2)}
        >>> copy = detached_copy(weights)
        >>> weights["w"].add_(1); copy["w"]
        tensor([2., 2.])
        tensor([1., 1.])
    """
    return apply_to_collection(value, Tensor, lambda t: t.detach().to("cpu", copy=True))


class BackgroundWriter:
    """One thread at a time writes a checkpoint; ``submit`` waits for the previous one first.

    Example:
        >>> writer = BackgroundWriter()
        >>> writer.submit("runs/checkpoints/step=00000010", lambda: None)
        >>> writer.wait()
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._path: str | None = None
        self._error: BaseException | None = None
        self._buffers: list[Tensor] = []  # host copies of the last save, reused by the next one

    def stage(self, value: Any) -> Any:
        """Wait for the save in flight, then copy every tensor of ``value`` into host buffers.

        The buffers of the previous save are reused when shapes and dtypes match: a fresh
        allocation is paid again in page faults on every save (about 1 GB/s), a reused one
        is a plain copy. The buffers stay allocated for the next save (host memory for one
        checkpoint).
        """
        self.wait()
        buffers, index = self._buffers, 0

        def copy(tensor: Tensor) -> Tensor:
            nonlocal index
            source = tensor.detach()
            reusable = index < len(buffers) and buffers[index].shape == source.shape
            if reusable and buffers[index].dtype == source.dtype and buffers[index] is not source:
                buffers[index].copy_(source)
            else:
                staged = source.to("cpu", copy=True)
                buffers[index : index + 1] = [staged]
            index += 1
            return buffers[index - 1]

        staged = apply_to_collection(value, Tensor, copy)
        del buffers[index:]
        return staged

    @property
    def in_flight(self) -> str | None:
        """The path being written, or None."""
        return self._path if self._thread is not None and self._thread.is_alive() else None

    def submit(self, path: str, write: Callable[[], None]) -> None:
        """Wait for the save in flight (raising its error), then run ``write`` in a new thread."""
        self.wait()
        self._path = path

        def run() -> None:
            try:
                write()
            except BaseException as error:  # re-raised in the training thread by the next wait()
                self._error = error

        # Not a daemon: an interpreter that exits after fit still finishes (and commits) the write.
        self._thread = threading.Thread(target=run, name=f"tasktrain-save {path}", daemon=False)
        self._thread.start()

    def wait(self) -> None:
        """Block until the save in flight is committed; raise its error, if it failed."""
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        error, self._error = self._error, None
        if error is not None:
            raise RuntimeError(f"the background save of {self._path} failed: {error}") from error

    def __getstate__(self) -> dict[str, Any]:
        self.wait()  # a Trainer sent to spawned ranks: nothing of this process's thread travels
        return {"_thread": None, "_path": None, "_error": None, "_buffers": []}
