"""Fixtures of the ``tasktrain`` command-line tests; this directory goes on ``sys.path`` so that
they import ``_cli_helpers`` by name (pytest runs in importlib mode)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from _cli_helpers import copy_fixtures, harness  # noqa: E402


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory holding copies of the fixture tasks, data and the harness."""
    return copy_fixtures(tmp_path_factory.mktemp("cli"))


@pytest.fixture(scope="module")
def session(request: pytest.FixtureRequest, work: Path) -> dict[str, dict[str, Any]]:
    """Every command line of the test module's ``session_plan(work)``, run in order in one
    interpreter: what each printed, by its name in the plan."""
    plan = request.module.session_plan(work)
    return dict(zip(plan, harness(work, *plan.values()), strict=True))
