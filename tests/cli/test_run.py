"""``tasktrain fit|validate|test|predict`` end to end: the stages from one checkpoint, in one fresh
interpreter (see ``_cli_helpers.py``), and a DDP fit in processes of its own."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from _cli_helpers import QUIET, last_weights, line_after, ok
from safetensors.torch import load_file

import tasktrain as tt


def session_plan(work: Path) -> dict[str, list[str] | dict[str, Any]]:
    """Every command line the tests below check, run in order in one interpreter."""
    runs = work / "runs"
    stage = ["--task", "tiny_task.py", "--trainer.default_root_dir", str(runs / "stages"), *QUIET]
    return {
        "stage fit": ["fit", *stage, "--trainer.max_steps", "4", "--trainer.seed", "1"],
        "stage validate": ["validate", *stage, "--ckpt_path", "last"],
        "stage test": ["test", *stage, "--ckpt_path", "last"],
        "stage predict": ["predict", *stage, "--ckpt_path", "last"],
        "export": ["export", "last", str(work / "model.safetensors"), "--root_dir", str(runs / "stages")],
    }


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


def test_a_strategy_timeout_from_the_command_line_reaches_the_process_group(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import timedelta

    from tasktrain.cli.run import prepare

    monkeypatch.setattr(sys, "path", list(sys.path))  # loading the task puts its folder first

    # A copy under its own name: importing it here must not take the name of the fixture module
    # other tests (and the processes they spawn) import as ``tiny_task``.
    task = work / "timeout_task.py"
    task.write_text((work / "tiny_task.py").read_text())
    argv = [
        "--task",
        str(task),
        "--trainer.strategy",
        "DDP",
        "--trainer.strategy.timeout",
        "45",
    ]
    run = prepare(
        "fit", [*argv, "--trainer.strategy.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]
    )
    assert isinstance(run.trainer.strategy, tt.strategies.DDP)
    assert run.trainer.strategy.timeout == timedelta(seconds=45)
