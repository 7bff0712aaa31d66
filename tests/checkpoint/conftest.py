"""Make ``legacy/scenario.py`` importable by name, here and in the ranks the FSDP legacy test spawns.

Spawned ranks unpickle the task class by module name; spawn gives them this process's
``sys.path``, so putting the folder on it is enough.
"""

from __future__ import annotations

import sys
from pathlib import Path

_LEGACY = str(Path(__file__).resolve().parent / "legacy")
if _LEGACY not in sys.path:
    sys.path.insert(0, _LEGACY)
