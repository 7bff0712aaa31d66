"""Two TaskModule subclasses (so the file alone is ambiguous) and a class that is not a task."""

from __future__ import annotations

import torch

import tasktrain as tt


class TaskA(tt.TaskModule):
    def __init__(self, width: int = 2) -> None:
        super().__init__()
        self.net = torch.nn.Linear(width, 1)


class TaskB(TaskA):
    pass


class Helper:
    """Not a task."""
