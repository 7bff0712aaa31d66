"""Finders: short trial runs that pick a learning rate or a batch size before the real fit.

Each runs the real :class:`~tasktrain.Trainer` (same loops, precision, accumulation) in this
process, on the module itself, and restores the module's weights afterwards.
"""

from tasktrain.finders.batch_size import BatchSizeResult, BatchSizeTrial, find_batch_size
from tasktrain.finders.lr import LRFinderResult, find_lr

__all__ = ["BatchSizeResult", "BatchSizeTrial", "LRFinderResult", "find_batch_size", "find_lr"]
