"""``Profiler``: a Chrome trace of exactly the asked steps, with the module's ops, through fsspec."""

from __future__ import annotations

import json
import re
from typing import Any

import fsspec
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
from tasktrain.callbacks import Profiler


class Regressor(tt.TaskModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))

    def compute_loss(self, batch):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(quiet: dict[str, Any], profiler: Profiler, max_steps: int = 8) -> None:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 4, generator=g), torch.randn(64, 1, generator=g))
    tt.Trainer(max_steps=max_steps, callbacks=[profiler], **quiet).fit(
        Regressor(), DataLoader(data, batch_size=4)
    )


def _steps(trace: dict[str, Any]) -> list[int]:
    names = {e["name"] for e in trace["traceEvents"] if re.fullmatch(r"ProfilerStep#\d+", e.get("name", ""))}
    return sorted(int(name.split("#")[1]) for name in names)


def test_trace_holds_the_active_steps_and_the_modules_ops(quiet):
    profiler = Profiler(wait=2, warmup=1, active=3)
    _fit(quiet, profiler)
    root = quiet["default_root_dir"] / "profiler"
    assert profiler.written == [
        f"{quiet['default_root_dir']}/profiler/trace.json",
        f"{quiet['default_root_dir']}/profiler/trace.txt",
    ]
    trace = json.loads((root / "trace.json").read_text())
    assert _steps(trace) == [3, 4, 5], "steps 0-1 skipped, 2 warm-up, 3 active steps recorded"
    names = {e.get("name") for e in trace["traceEvents"]}
    assert "aten::addmm" in names and "aten::mse_loss" in names
    assert "aten::addmm" in (root / "trace.txt").read_text()


def test_a_remote_dirpath_and_a_run_that_ends_mid_window(quiet):
    profiler = Profiler(
        wait=0, warmup=1, active=10, dirpath="memory://profiles/run", filename="t", table=False
    )
    _fit(quiet, profiler, max_steps=4)
    with fsspec.open("memory://profiles/run/t.json") as f:
        trace = json.load(f)
    # Steps 1-3 trained; #4 was opened by the last step and holds the end of fit.
    assert _steps(trace) == [1, 2, 3, 4]
    assert profiler.written == ["memory://profiles/run/t.json"]


@pytest.mark.parametrize(("name", "value"), [("active", 0), ("wait", -1), ("warmup", 1.5)])
def test_bad_schedule_is_named(name: str, value: Any):
    with pytest.raises(ValueError, match=rf"Profiler\({name}={value!r}\): accepted values are an int >= "):
        Profiler(**{name: value})
