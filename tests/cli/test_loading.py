"""Every ``--task``/``--data`` form loads its class or factory and trains, end to end in one fresh
interpreter (see ``_cli_helpers.py``); what was given is saved as given."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _cli_helpers import QUIET, line_after, ok, saved_config

FORMS: dict[str, tuple[list[str], int]] = {  # --task/--data forms, and the optimizer steps of one epoch
    "file:Class": (["--task", "tiny_task.py:TinyTask"], 8),
    "file": (["--task", "tiny_task.py"], 8),  # the only TaskModule subclass of the file
    "pkg.module:Class": (["--task", "tiny_pkg.tasks:PkgTask", "--task.hidden", "5"], 8),
    "pkg.module.Class": (["--task", "tiny_pkg.tasks.PkgTask"], 8),
    "file in a package": (["--task", "tiny_pkg/tasks.py:PkgTask"], 8),  # its relative imports work
    "data class file": (["--task", "tiny_task.py", "--data", "tiny_data.py", "--data.n", "16"], 2),
    "data factory": (["--task", "tiny_task.py", "--data", "tiny_data.py:make_loader"], 4),
}


def session_plan(work: Path) -> dict[str, list[str] | dict[str, Any]]:
    """Every command line the tests below check, run in order in one interpreter."""
    runs = work / "runs"
    return {
        f"form {name}": [
            "fit",
            *args,
            "--trainer.max_epochs",
            "1",
            "--trainer.default_root_dir",
            str(runs / name),
            *QUIET,
        ]
        for name, (args, _) in FORMS.items()
    }


@pytest.mark.parametrize("form", list(FORMS))
def test_each_loading_form_trains(session: dict[str, dict[str, Any]], form: str) -> None:
    args, steps = FORMS[form]
    result = session[f"form {form}"]
    assert line_after("fit:", ok(result)["stdout"]).startswith(f"{steps} optimizer steps")
    config = saved_config(result)
    assert config["task"]["class_path"] == args[1]  # saved as given: a rerun resolves it again
    assert isinstance(config["trainer"]["seed"], int)  # none given: one is drawn, and saved


def test_loaded_constructor_arguments_are_saved(session: dict[str, dict[str, Any]]) -> None:
    assert saved_config(session["form pkg.module:Class"])["task"]["init_args"] == {
        "lr": 0.05,
        "batch_size": 4,
        "hidden": 5,
    }
    assert saved_config(session["form data class file"])["data"] == {
        "class_path": "tiny_data.py",
        "init_args": {"n": 16, "batch_size": 8},
    }
