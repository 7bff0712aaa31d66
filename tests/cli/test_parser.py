"""The options of ``tasktrain fit``, ``--config`` files and ``--print_config``, end to end in one
fresh interpreter (see ``_cli_helpers.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from _cli_helpers import CLI_DIR, QUIET, fit_metrics, last_weights, ok, saved_config

ROUND_TRIP = [
    *("--task", "tiny_task.py", "--task.lr", "0.05", "--trainer.max_steps", "6"),
    *("--trainer.val_check_interval", "3", "--trainer.seed", "3"),
    *("--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.every_n_train_steps", "3"),
    *QUIET,
]


def session_plan(work: Path) -> dict[str, list[str] | dict[str, Any]]:
    """Every command line the tests below check, run in order in one interpreter."""
    (work / "a.yaml").write_text(
        "task:\n  class_path: tiny_task.py\n  init_args: {lr: 0.2}\ntrainer: {max_steps: 5, log_every_n_steps: 7}\n"
    )
    (work / "b.yaml").write_text("trainer: {max_steps: 6}\n")
    runs = work / "runs"
    return {
        "help": ["fit", "--help"],
        "help with task": ["fit", "--task", "tiny_task.py", "--help"],
        "configs a": ["fit", "--config", "a.yaml", "--print_config"],
        "configs a b": ["fit", "--config", "a.yaml", "--config", "b.yaml", "--print_config"],
        "configs b a": ["fit", "--config", "b.yaml", "--config", "a.yaml", "--print_config"],
        # the command line wins wherever it stands, also before the files
        "configs and command line": [
            *("fit", "--trainer.max_steps", "9", "--config", "a.yaml", "--config", "b.yaml"),
            *("--task.lr", "0.3", "--print_config"),
        ],
        "configs and another task": [
            "fit",
            "--config",
            "a.yaml",
            "--task",
            "tiny_pkg.tasks:PkgTask",
            "--print_config",
        ],
        "first run": ["fit", *ROUND_TRIP, "--trainer.default_root_dir", str(runs / "first")],
        "printed": {
            "argv": ["fit", *ROUND_TRIP, "--trainer.default_root_dir", str(runs / "first"), "--print_config"],
            "stdout_to": str(work / "printed.yaml"),
        },
        "rerun printed": [
            "fit",
            "--config",
            "printed.yaml",
            "--trainer.default_root_dir",
            str(runs / "printed"),
        ],
        "rerun saved": [
            *("fit", "--config", str(runs / "first" / "csv" / "version_0" / "config.yaml")),
            *("--trainer.default_root_dir", str(runs / "saved")),
        ],
    }


def test_fit_help_shows_trainer_and_task_options(session: dict[str, dict[str, Any]]) -> None:
    bare, with_task = ok(session["help"])["stdout"], ok(session["help with task"])["stdout"]
    assert "--trainer.max_steps" in bare and "--task SPEC" in bare and "--data SPEC" in bare
    assert "{32-true,bf16-mixed,16-mixed,bf16-true}" in bare  # the names from the Trainer's own lists
    assert "--task.lr LR" in with_task and "SGD learning rate" in with_task  # from the task's docstring
    assert "init_args" not in with_task.replace("--task.init_args CONFIG", "")


def test_cli_surface_is_frozen() -> None:
    """Adding, renaming or removing an option of `tasktrain fit` is a reviewed decision: update
    tests/cli/fit_options.txt (and the CHANGELOG) with it."""
    from tasktrain.cli.parser import build_parser
    from tasktrain.cli.plugins import Plugins

    parser = build_parser("fit", None, None, Plugins())
    options = sorted(o for o in parser._option_string_actions if o.startswith("--"))
    assert options == (CLI_DIR / "fit_options.txt").read_text().split()


# -- configs ------------------------------------------------------------------------------------
def test_config_precedence_later_files_win_and_the_command_line_wins_over_files(
    session: dict[str, dict[str, Any]],
) -> None:
    names = ["configs a", "configs a b", "configs b a", "configs and command line"]
    printed = [yaml.safe_load(ok(session[name])["stdout"]) for name in names]
    trainer = [(p["trainer"]["max_steps"], p["trainer"]["log_every_n_steps"]) for p in printed]
    assert trainer == [(5, 7), (6, 7), (5, 7), (9, 7)]
    assert [p["task"]["init_args"]["lr"] for p in printed] == [0.2, 0.2, 0.2, 0.3]
    other = yaml.safe_load(ok(session["configs and another task"])["stdout"])
    assert other["task"] == {
        "class_path": "tiny_pkg.tasks:PkgTask",
        "init_args": {"lr": 0.2, "batch_size": 4, "hidden": 3},
    }


def test_print_config_round_trip_and_saved_config_reproduce_the_run(
    session: dict[str, dict[str, Any]], work: Path
) -> None:
    first = session["first run"]
    assert saved_config(first) == yaml.safe_load(
        ok(session["printed"])["stdout"]
    )  # what ran is what was printed
    expected = last_weights(work / "runs" / "first")
    for name, root in (("rerun printed", "printed"), ("rerun saved", "saved")):
        assert fit_metrics(session[name]) == fit_metrics(first), name
        assert "val/loss" in fit_metrics(first)
        weights = last_weights(work / "runs" / root)
        assert weights.keys() == expected.keys()
        assert all(torch.equal(weights[k], expected[k]) for k in expected), name
