"""``seed_everything``: one seed for Python, NumPy and torch (CPU and every CUDA device)."""

from __future__ import annotations

import os
import random

import torch


def seed_everything(seed: int) -> int:
    """Seed ``random``, ``numpy`` (if installed) and ``torch``; also sets ``PYTHONHASHSEED`` for subprocesses.

    Example:
        >>> seed_everything(0)
        0
    """
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed_everything(seed={seed!r}): must be in [0, 2**32)")
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass
    torch.manual_seed(seed)
    return seed
