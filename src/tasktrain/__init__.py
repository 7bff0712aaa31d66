"""tasktrain: a structured training framework for PyTorch.

Write *what* to train in a :class:`TaskModule`; the :class:`Trainer` decides *how*.

Example:
    >>> import tasktrain as tt
    >>> trainer = tt.Trainer(max_steps=100, logger=False)
"""

__version__ = "0.1.0.dev0"

from tasktrain.module import TaskModule
from tasktrain.seed import seed_everything
from tasktrain.trainer import FitResult, Trainer

__all__ = ["FitResult", "TaskModule", "Trainer", "__version__", "seed_everything"]
