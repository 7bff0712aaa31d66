"""Callbacks, loggers and strategies of an installed package, found by entry point and used by name
or by class from the command line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml
from _cli_helpers import harness, ok

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
