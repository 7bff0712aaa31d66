"""A task inside a package, imported relative to its package."""

from __future__ import annotations

from ._base import TinyBase


class PkgTask(TinyBase):
    """The tiny task, defined in a package.

    Args:
        lr: SGD learning rate.
        batch_size: samples per micro-batch.
        hidden: unused width, to show a package task's own option.
    """

    def __init__(self, lr: float = 0.05, batch_size: int = 4, hidden: int = 3) -> None:
        super().__init__(lr=lr, batch_size=batch_size)
        self.save_hyperparameters()
