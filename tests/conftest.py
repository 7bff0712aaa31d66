"""Shared fixtures for the tasktrain tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


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
