"""The search space of the ``tasktrain tune`` tests: the learning rate of ``tiny_task.py``."""

from __future__ import annotations

from typing import Any


def space(trial: Any) -> dict[str, Any]:
    return {"lr": trial.suggest_float("lr", 1e-3, 0.3, log=True)}


def helper() -> None:
    """A second function: ``--space tune_space.py`` still picks ``space`` by its name."""
