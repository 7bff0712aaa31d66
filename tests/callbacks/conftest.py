"""Make ``_ema`` (and other helpers here) importable by name, here and in the ranks the tests spawn.

Spawned ranks unpickle the functions they run by module name; spawn gives them this process's
``sys.path``, so putting this directory on it is enough.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
