"""Shared fixtures for the tasktrain tests."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

# Test utilities shared across folders (``_syncs``) import by name, here and in spawned ranks.
_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)


@pytest.fixture
def quiet(tmp_path: Path) -> dict[str, Any]:
    """Trainer arguments for a silent CPU run that writes nothing outside ``tmp_path``."""
    return {
        "logger": False,
        "enable_progress_bar": False,
        "enable_checkpointing": False,
        "default_root_dir": tmp_path,
        "accelerator": "cpu",
    }
