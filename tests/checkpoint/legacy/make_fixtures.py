"""Write the legacy checkpoint fixtures (run once, with the release whose format they pin).

The v1 fixtures were written by tasktrain before the state rework (checkpoint format_version 1):
``python tests/checkpoint/legacy/make_fixtures.py`` at that commit. Kept for the record; running it
with a newer tasktrain writes the newer format.
"""

from __future__ import annotations

import shutil
import tempfile

from scenario import FIXTURES, V1, V1_FSDP, fit

from tasktrain.checkpoint import find_last


def save(name: str, step: int, **trainer_kwargs: object) -> None:
    with tempfile.TemporaryDirectory() as root:
        fit(root, step, **trainer_kwargs)
        target = FIXTURES / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(find_last(root), target)
        print(name, "<-", step)


if __name__ == "__main__":  # the FSDP fixture spawns processes that import this file
    for name, step in V1.items():
        save(name, step)
    for name, step in V1_FSDP.items():
        save(name, step, strategy="fsdp", devices=2, trainer_seed=0)
