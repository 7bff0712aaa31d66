"""Starting training scripts as torchrun or srun would, from a test, and waiting for them (bounded)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

JOB = str(Path(__file__).with_name("_launched_job.py"))
SRC = str(Path(__file__).resolve().parents[2] / "src")
#: Variables a launcher sets; the tests' own processes start without any of them.
LAUNCH_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RESTART_COUNT",
)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without launcher variables, with our sources importable."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith("SLURM_")}
    env["PYTHONPATH"] = os.pathsep.join([SRC, env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return {**env, **extra}


def torchrun_command(
    node_rank: int, port: int, *args: str, nnodes: int = 2, nproc: int = 1, options: tuple[str, ...] = ()
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={nnodes}",
        f"--nproc-per-node={nproc}",
        f"--node-rank={node_rank}",
        "--master-addr=127.0.0.1",
        f"--master-port={port}",
        *options,
        JOB,
        *args,
    ]


@dataclass
class Job:
    """One started process (in its own session, so it and its children can be killed together)."""

    process: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, command: list[str], log: Path, env: dict[str, str]) -> Job:
        with open(log, "wb") as out:  # a file, not a pipe nobody reads: a full pipe would block it
            process = subprocess.Popen(
                command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return cls(process, log)

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


def wait_all(jobs: list[Job], timeout: float) -> list[int | None]:
    """Each job's exit status; None for a job still running at the deadline (it is then killed)."""
    deadline = time.monotonic() + timeout
    codes: list[int | None] = []
    for job in jobs:
        try:
            codes.append(job.process.wait(timeout=max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            codes.append(None)
    for job in jobs:
        if job.process.poll() is None:
            os.killpg(job.process.pid, signal.SIGKILL)
            job.process.wait()
    return codes
