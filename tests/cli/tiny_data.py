"""Data sources for ``--data``: a class with dataloader hooks and a factory returning a DataLoader."""

from __future__ import annotations

from tiny_task import dataset
from torch.utils.data import DataLoader


class TinyData:
    """The tiny regression data.

    Args:
        n: how many samples.
        batch_size: samples per batch.
    """

    def __init__(self, n: int = 32, batch_size: int = 8) -> None:
        self.n, self.batch_size = n, batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(dataset(self.n), batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(dataset(8), batch_size=8)


def make_loader(n: int = 16, batch_size: int = 4) -> DataLoader:
    """A factory: its return value is a DataLoader, used for whatever the command runs."""
    return DataLoader(dataset(n), batch_size=batch_size)
