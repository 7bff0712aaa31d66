"""Write the legacy checkpoint fixtures (run once, with the release whose format they pin).

The v1 fixtures were written by tasktrain before the state rework (checkpoint format_version 1):
``python tests/checkpoint/legacy/make_fixtures.py`` at that commit. Kept for the record; running it
with a newer tasktrain writes the newer format.
"""

from __future__ import annotations

import shutil
import tempfile

from scenario import FIXTURES, V1, fit

from tasktrain.checkpoint import find_last

for name, step in V1.items():
    with tempfile.TemporaryDirectory() as root:
        fit(root, step)
        target = FIXTURES / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(find_last(root), target)
        print(name, "<-", step)
