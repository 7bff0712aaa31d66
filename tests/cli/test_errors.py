"""Bad input gives one clear line on stderr and exit status 2, no traceback (unless ``--debug``):
every case in one fresh interpreter (see ``_cli_helpers.py``), and one in a process of its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from subprocess import PIPE
from typing import Any

import pytest

BAD_INPUT: dict[str, tuple[list[str], list[str]]] = {
    "unknown command": (["fti"], ["unknown command 'fti'", "did you mean 'fit'"]),
    "no task": (["fit"], ["no task given", "--task path/to/file.py"]),
    "wrong path": (["fit", "--task", "missing.py"], ["--task missing.py: no such file", "missing.py"]),
    "wrong module": (["fit", "--task", "no_such_pkg.mod:Task"], ["no module named 'no_such_pkg'"]),
    "missing class": (
        ["fit", "--task", "tiny_task.py:TinyTsk"],
        ["has no attribute 'TinyTsk'", "did you mean 'TinyTask'", "defined there: TinyTask"],
    ),
    "not a TaskModule": (
        ["fit", "--task", "two_tasks.py:Helper"],
        ["Helper is the class two_tasks.Helper, not a TaskModule subclass", "TaskA, TaskB"],
    ),
    "several candidates": (
        ["fit", "--task", "two_tasks.py"],
        ["2 candidates", "TaskA, TaskB", "--task two_tasks.py:TaskA"],
    ),
    "no candidate": (["fit", "--task", "tiny_data.py"], ["defines no TaskModule subclass"]),
    "import fails": (
        ["fit", "--task", "broken_task.py"],
        [
            "importing broken_task.py failed: ModuleNotFoundError",
            "not_installed_dependency_xyz",
            "broken_task.py:3",
        ],
    ),
    "unknown option": (
        ["fit", "--task", "tiny_task.py", "--trainer.max_step", "3"],
        ["unknown option --trainer.max_step", "did you mean '--trainer.max_steps'?"],
    ),
    "mistyped task option": (
        ["fit", "--task", "tiny_task.py", "--task.lrr", "0.1"],
        ["unknown option --task.lrr", "did you mean '--task.lr'?"],
    ),
    "bad value": (
        ["fit", "--task", "tiny_task.py", "--trainer.max_steps", "many"],
        ["--trainer.max_steps: 'many' is not valid; expected int or null"],
    ),
    "bad choice": (
        ["fit", "--task", "tiny_task.py", "--trainer.precision", "32true"],
        ["--trainer.precision: '32true' is not accepted", "did you mean '32-true'?", "bf16-mixed"],
    ),
    "bad devices": (
        ["fit", "--task", "tiny_task.py", "--trainer.devices", "two"],
        ["accepted: auto or an int"],
    ),
    "unknown strategy": (
        ["fit", "--task", "tiny_task.py", "--trainer.strategy", "dpp"],
        ["unknown strategy 'dpp'", "did you mean 'ddp'?", "fsdp"],
    ),
    "unknown callback": (
        ["fit", "--task", "tiny_task.py", "--trainer.callbacks+=EarlyStoping"],
        ["unknown callback 'EarlyStoping'", "did you mean 'EarlyStopping'?"],
    ),
    "mistyped callback argument": (
        [
            "fit",
            "--task",
            "tiny_task.py",
            "--trainer.callbacks+=EarlyStopping",
            "--trainer.callbacks.patiense",
            "2",
        ],
        ["EarlyStopping has no argument 'patiense'", "did you mean 'patience'?"],
    ),
    "value the Trainer rejects": (
        ["fit", "--task", "tiny_task.py", "--trainer.max_steps", "-5"],
        ["Trainer(max_steps=-5): accepted values are an int >= 0 or None"],
    ),
    "value the task rejects": (
        ["fit", "--task", "tiny_task.py", "--task.lr", "-1"],
        [
            "--task: TinyTask(lr=-1.0, batch_size=4, marker_dir=None) failed: ValueError: lr must be > 0",
            "tiny_task.py:",
        ],
    ),
    "value a callback rejects": (
        ["fit", "--task", "tiny_task.py", "--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.mode=x"],
        ["building a callback, logger or strategy failed: EarlyStopping(mode='x'): accepted values are"],
    ),
    "data that is no data": (
        ["fit", "--task", "tiny_task.py", "--data", "tiny_data.py:dataset"],
        ["--data tiny_data.py:dataset: gave a TensorDataset, which is neither a DataLoader nor"],
    ),
    "unknown config key": (
        ["fit", "--task", "tiny_task.py", "--config", "bad_key.yaml"],
        ["unknown key 'trainer.max_step'", "did you mean 'trainer.max_steps'?"],
    ),
    "missing config file": (
        ["fit", "--task", "tiny_task.py", "--config", "nowhere.yaml"],
        ["--config nowhere.yaml: no such file"],
    ),
    "config not YAML": (
        ["fit", "--task", "tiny_task.py", "--config", "bad_yaml.yaml"],
        ["--config bad_yaml.yaml: not valid YAML", "(line 2, column 1)"],
    ),
    "no data": (
        ["fit", "--task", "two_tasks.py:TaskA"],
        ["TaskA does not implement train_dataloader()", "--data"],
    ),
    "missing data factory": (
        ["fit", "--task", "tiny_task.py", "--data", "tiny_data.py:make_loaders"],
        ["has no attribute 'make_loaders'", "did you mean 'make_loader'?"],
    ),
    "missing checkpoint": (
        ["validate", "--task", "tiny_task.py", "--ckpt_path", "nowhere"],
        ["--ckpt_path: ckpt_path='nowhere' does not exist"],
    ),
    "export without checkpoint": (
        ["export", "nowhere", "out.safetensors"],
        ["tasktrain export: error: CKPT:"],
    ),
}


def session_plan(work: Path) -> dict[str, list[str] | dict[str, Any]]:
    """Every command line the tests below check, run in order in one interpreter."""
    (work / "bad_key.yaml").write_text("trainer:\n  max_step: 3\n")
    (work / "bad_yaml.yaml").write_text("trainer: [\n")
    return {f"bad {case}": argv for case, (argv, _) in BAD_INPUT.items()}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_gives_one_clear_message(session: dict[str, dict[str, Any]], case: str) -> None:
    result = session[f"bad {case}"]
    lines = result["stderr"].strip().splitlines()
    assert result["code"] == 2, result
    assert "Traceback" not in result["stderr"]
    assert len(lines) == 1 and lines[0].startswith("tasktrain"), result["stderr"]
    for fragment in BAD_INPUT[case][1]:
        assert fragment in lines[0]


def test_bad_input_in_its_own_process_and_debug_shows_the_traceback(work: Path) -> None:
    script = Path(sys.executable).with_name("tasktrain")  # the console script that pip installed
    plain, debug = [
        subprocess.Popen(
            [str(script), "fit", "--task", "missing.py", *extra],
            cwd=work,
            stdout=PIPE,
            stderr=PIPE,
            text=True,
        )
        for extra in ([], ["--debug"])
    ]
    out, err = plain.communicate(timeout=60)
    assert plain.returncode == 2 and out == ""
    assert (
        err
        == f"tasktrain fit: error: --task missing.py: no such file 'missing.py' (looked for {work / 'missing.py'})\n"
    )
    _, err = debug.communicate(timeout=60)
    assert debug.returncode == 2 and "Traceback (most recent call last)" in err and "no such file" in err
