"""benchmarks/gpu_check.py runs end to end (its CPU smoke mode), so it is ready for a GPU machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_the_gpu_check_passes_its_cpu_smoke_run(tmp_path):
    out = tmp_path / "table.json"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--steps", "8", "--rounds", "1", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "| exact resume after 7 steps | torch.equal | yes |" in run.stdout
    assert "**NO**" not in run.stdout and out.exists()


def test_without_cuda_it_says_so_and_exits_2():
    run = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "no CUDA device here" in run.stdout
