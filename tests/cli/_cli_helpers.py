"""What the ``tasktrain`` command-line tests share: the fixture files, the harness that runs command
lines, and readers of what a command printed. ``conftest.py`` puts this directory on ``sys.path``
(pytest runs in importlib mode), so the tests here import this module by name.

Most tests run several command lines in one subprocess (``_harness.py``), so torch is imported once
per test module rather than once per command line; what a command prints, its exit status and
whether a traceback escaped are the same as in a process of its own. The fixture files in this
directory are copied to a temporary directory that is the working directory.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from tasktrain.checkpoint import find_last, read_weights

CLI_DIR = Path(__file__).resolve().parent
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu"]
RUNTIME = ("train_runtime", "train_samples_per_second", "train_steps_per_second")
#: the test code of this directory, left out of the copies: only the fixture files are copied
NOT_FIXTURES = ("__pycache__", "conftest.py", "test_*.py", "_cli_helpers.py")


def copy_fixtures(root: Path) -> Path:
    """Copy the fixture tasks, data and the harness into ``root``; return ``root``."""
    shutil.copytree(CLI_DIR, root, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*NOT_FIXTURES))
    return root


def harness(
    cwd: Path, *argvs: list[str] | dict[str, Any], env: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Run ``tasktrain <argv>`` for each argv, in order, in one fresh interpreter; return the exit
    status, stdout and stderr of each (see ``_harness.py``)."""
    done = subprocess.run(
        [sys.executable, str(cwd / "_harness.py"), json.dumps(argvs)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout.splitlines()[-1]))


def ok(result: dict[str, Any]) -> dict[str, Any]:
    assert result["code"] == 0, f"{result['argv']}\n{result['stdout']}\n{result['stderr']}"
    return result


def line_after(label: str, text: str) -> str:
    found = [line[len(label) :].strip() for line in text.splitlines() if line.startswith(label)]
    assert found, f"no line starting with {label!r} in:\n{text}"
    return found[-1]


def fit_metrics(result: dict[str, Any]) -> dict[str, Any]:
    metrics = json.loads(line_after("metrics:", ok(result)["stdout"]))
    return {k: v for k, v in metrics.items() if k not in RUNTIME}


def saved_config(result: dict[str, Any]) -> dict[str, Any]:
    return dict(yaml.safe_load(Path(line_after("config:", ok(result)["stdout"])).read_text()))


def last_weights(root: Path) -> dict[str, torch.Tensor]:
    last = find_last(str(root))
    assert last is not None, f"no checkpoint under {root}"
    return read_weights(last)
