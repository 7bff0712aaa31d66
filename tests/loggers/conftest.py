"""Make ``_tensorboard_reader`` importable by name from the tests here (pytest runs in importlib mode)."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
