"""The ``tasktrain`` command line, end to end in fresh interpreters.

Most tests run several command lines in one subprocess (``tests/cli/_harness.py``), so torch is
imported once per test rather than once per command line; what a command prints, its exit
status and whether a traceback escaped are the same as in a process of its own. The fixture
files in ``tests/cli/`` are copied to a temporary directory that is the working directory.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from subprocess import PIPE
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

import tasktrain as tt
from tasktrain.checkpoint import find_last, read_weights

CLI_DIR = Path(__file__).resolve().parent / "cli"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu"]
RUNTIME = ("train_runtime", "train_samples_per_second", "train_steps_per_second")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory holding copies of the fixture tasks, data and the harness."""
    root = tmp_path_factory.mktemp("cli")
    shutil.copytree(CLI_DIR, root, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def harness(
    cwd: Path, *argvs: list[str] | dict[str, Any], env: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Run ``tasktrain <argv>`` for each argv, in order, in one fresh interpreter; return the exit
    status, stdout and stderr of each (see ``tests/cli/_harness.py``)."""
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


# -- entry points and help ----------------------------------------------------------------------
def test_help_lists_commands_without_importing_jsonargparse() -> None:
    code = textwrap.dedent(
        """
        import sys
        import tasktrain.__main__  # runs nothing: spawned ranks import it
        from tasktrain.cli import main
        main(["--help"])
        print(sorted(m for m in ("jsonargparse", "yaml") if m in sys.modules))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[-1] == "[]"  # --help, like `import tasktrain.cli`, stays light
    for command in ("fit", "validate", "test", "predict", "export"):
        assert f"  {command} " in done.stdout


# -- one interpreter for most command lines ------------------------------------------------------
FORMS: dict[str, tuple[list[str], int]] = {  # --task/--data forms, and the optimizer steps of one epoch
    "file:Class": (["--task", "tiny_task.py:TinyTask"], 8),
    "file": (["--task", "tiny_task.py"], 8),  # the only TaskModule subclass of the file
    "pkg.module:Class": (["--task", "tiny_pkg.tasks:PkgTask", "--task.hidden", "5"], 8),
    "pkg.module.Class": (["--task", "tiny_pkg.tasks.PkgTask"], 8),
    "file in a package": (["--task", "tiny_pkg/tasks.py:PkgTask"], 8),  # its relative imports work
    "data class file": (["--task", "tiny_task.py", "--data", "tiny_data.py", "--data.n", "16"], 2),
    "data factory": (["--task", "tiny_task.py", "--data", "tiny_data.py:make_loader"], 4),
}
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
    (work / "bad_key.yaml").write_text("trainer:\n  max_step: 3\n")
    (work / "bad_yaml.yaml").write_text("trainer: [\n")
    runs = work / "runs"
    stage = ["--task", "tiny_task.py", "--trainer.default_root_dir", str(runs / "stages"), *QUIET]
    plan: dict[str, list[str] | dict[str, Any]] = {
        "help": ["fit", "--help"],
        "help with task": ["fit", "--task", "tiny_task.py", "--help"],
        **{
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
        },
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
        "stage fit": ["fit", *stage, "--trainer.max_steps", "4", "--trainer.seed", "1"],
        "stage validate": ["validate", *stage, "--ckpt_path", "last"],
        "stage test": ["test", *stage, "--ckpt_path", "last"],
        "stage predict": ["predict", *stage, "--ckpt_path", "last"],
        "export": ["export", "last", str(work / "model.safetensors"), "--root_dir", str(runs / "stages")],
    }
    plan.update({f"bad {case}": argv for case, (argv, _) in BAD_INPUT.items()})
    return plan


@pytest.fixture(scope="module")
def session(work: Path) -> dict[str, dict[str, Any]]:
    plan = session_plan(work)
    return dict(zip(plan, harness(work, *plan.values()), strict=True))


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


# -- the other commands -------------------------------------------------------------------------
def test_validate_test_predict_from_a_checkpoint_and_export(
    session: dict[str, dict[str, Any]], work: Path
) -> None:
    ok(session["stage fit"])
    validate = json.loads(line_after("validate metrics:", ok(session["stage validate"])["stdout"]))
    assert set(validate) == {"val/loss"}
    assert set(json.loads(line_after("test metrics:", ok(session["stage test"])["stdout"]))) == {"test/loss"}
    ok(session["export"])
    exported = load_file(work / "model.safetensors")
    trained = last_weights(work / "runs" / "stages")
    assert exported.keys() == trained.keys()
    assert all(torch.equal(exported[k], v) for k, v in trained.items())
    # predict used the checkpoint's weights: its outputs are the exported linear map of the inputs
    path = line_after("predictions:", ok(session["stage predict"])["stdout"]).split(" saved to ")[-1]
    outputs = torch.load(path, weights_only=True)
    x = _tiny_task(work).dataset(12).tensors[0]
    assert torch.allclose(torch.cat(outputs), x @ exported["net.weight"].T + exported["net.bias"], atol=1e-6)


# -- plugins ------------------------------------------------------------------------------------
PLUGIN = """
import json
from tasktrain.callbacks import Callback
from tasktrain.loggers import Logger
from tasktrain.strategies import SingleDevice


class Marker(Callback):
    def __init__(self, path: str = "marker.json", tag: str = "none"):
        self.path, self.tag = path, tag

    def on_fit_end(self, trainer, module):
        with open(self.path, "w") as f:
            json.dump({"tag": self.tag, "strategy": type(trainer.strategy).__name__,
                       "loggers": [type(lg).__name__ for lg in trainer.loggers]}, f)


class PrintLogger(Logger):
    def __init__(self, prefix: str = "log"):
        self.prefix = prefix

    def log_metrics(self, metrics, step):
        print(self.prefix, step, sorted(metrics))


class OnCPU(SingleDevice):
    def __init__(self):
        super().__init__("cpu")
"""
ENTRY_POINTS = """
[tasktrain.callbacks]
Marker = tt_plugin:Marker
marker = tt_plugin:Marker

[tasktrain.loggers]
printer = tt_plugin:PrintLogger

[tasktrain.strategies]
on_cpu = tt_plugin:OnCPU
broken = tt_plugin:DoesNotExist
"""


def test_plugins_are_found_by_entry_point(work: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"  # a package "installed" on PYTHONPATH: its code and its dist-info
    (site / "tt_plugin").mkdir(parents=True)
    (site / "tt_plugin" / "__init__.py").write_text(PLUGIN)
    (site / "tt_plugin-0.1.dist-info").mkdir()
    (site / "tt_plugin-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: tt-plugin\nVersion: 0.1\n"
    )
    (site / "tt_plugin-0.1.dist-info" / "entry_points.txt").write_text(ENTRY_POINTS)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
    }
    marker = tmp_path / "marker.json"
    base = ["--task", "tiny_task.py", "--trainer.max_steps", "2", "--trainer.default_root_dir", str(tmp_path)]
    base.append("--trainer.enable_progress_bar=false")  # no accelerator: a Strategy object decides
    by_name, by_class, help_ = harness(
        work,
        [
            *("fit", *base, "--trainer.callbacks+=marker", "--trainer.callbacks.tag", "hi"),
            *("--trainer.callbacks.path", str(marker), "--trainer.logger", "printer"),
            *(
                "--trainer.logger.prefix",
                "LOG",
                "--trainer.strategy",
                "on_cpu",
                "--trainer.log_every_n_steps",
                "1",
            ),
        ],
        ["fit", *base, "--trainer.callbacks+=Marker", "--trainer.callbacks.tag", "x", "--print_config"],
        ["fit", "--help"],
        env=env,
    )
    ok(by_name)
    assert json.loads(marker.read_text()) == {"tag": "hi", "strategy": "OnCPU", "loggers": ["PrintLogger"]}
    assert "LOG 2 ['train/loss']" in ok(by_name)["stdout"]
    assert "entry point broken = tt_plugin:DoesNotExist" in by_name["stderr"]  # reported, then skipped
    callbacks = yaml.safe_load(ok(by_class)["stdout"])["trainer"]["callbacks"]
    assert callbacks == [{"class_path": "tt_plugin.Marker", "init_args": {"path": "marker.json", "tag": "x"}}]
    assert "'on_cpu'" in ok(help_)["stdout"] and "tt_plugin.Marker" in help_["stdout"]


# -- bad input ----------------------------------------------------------------------------------
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
        ["--ckpt_path: ckpt_path='nowhere' is not a complete checkpoint"],
    ),
    "export without checkpoint": (
        ["export", "nowhere", "out.safetensors"],
        ["tasktrain export: error: CKPT:"],
    ),
}


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


# -- several processes --------------------------------------------------------------------------
def test_ddp_from_the_cli_matches_one_process(work: Path, tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    done = subprocess.run(
        [
            *(sys.executable, "-m", "tasktrain", "fit", "--task", "tiny_task.py", "--task.batch_size", "4"),
            *("--task.marker_dir", str(markers), "--trainer.strategy", "ddp", "--trainer.devices", "2"),
            *(
                "--trainer.max_steps",
                "2",
                "--trainer.seed",
                "5",
                "--trainer.default_root_dir",
                str(tmp_path),
                *QUIET,
            ),
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert {p.name: p.read_text() for p in markers.iterdir()} == {"rank0.txt": "2", "rank1.txt": "2"}
    # 2 ranks x 4 samples per step = 1 process x 8 samples: the same SGD steps
    tiny = _tiny_task(work)
    tt.seed_everything(5)
    reference = tiny.TinyTask(batch_size=8)
    tt.Trainer(max_steps=2, seed=5, logger=False, enable_checkpointing=False, enable_progress_bar=False).fit(
        reference
    )
    weights = last_weights(tmp_path)
    for name, value in reference.state_dict().items():
        assert torch.allclose(weights[name], value, atol=1e-6), name


def _tiny_task(work: Path) -> Any:
    spec = importlib.util.spec_from_file_location("cli_tiny_task_reference", work / "tiny_task.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
