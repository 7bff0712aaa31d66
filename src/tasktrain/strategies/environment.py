"""Where this process sits in the job: rank, world size, local rank, node, and how to reach rank 0.

The environment decides when a launcher started the processes: ``torchrun`` (and tasktrain's
own ``devices=N`` launcher) set ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``LOCAL_WORLD_SIZE``;
SLURM ``srun`` without torchrun sets ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``,
``SLURM_NODEID`` and ``SLURM_JOB_NODELIST`` (the first host of the list is rank 0's, the
``MASTER_ADDR`` when none is set). Nothing here opens a connection.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

#: ``MASTER_PORT`` under SLURM when none is set: derived from the job id, so every task of a job agrees.
_SLURM_PORT_BASE = 15000
#: Interactive allocations (``salloc`` then ``python train.py``) set SLURM variables for a shell, not tasks.
_INTERACTIVE_JOB_NAMES = ("bash", "interactive")


@dataclass(frozen=True)
class ClusterEnvironment:
    """This process's place in a launched job (see :func:`detect_environment`).

    ``launcher`` is ``"torchrun"`` (``RANK``/``WORLD_SIZE`` set: torchrun, or tasktrain's own
    launcher for ``devices=N``), ``"slurm"`` (``srun`` without torchrun) or ``None`` (nothing
    launched this process: one process, or ``devices=N`` still to spawn).

    Example:
        >>> env = detect_environment({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
        >>> env.launcher, env.rank, env.world_size, env.num_nodes, env.node_rank
        ('torchrun', 1, 4, 2, 0)
    """

    launcher: str | None
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    node_rank: int = 0
    num_nodes: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int | None = None

    @property
    def launched(self) -> bool:
        return self.launcher is not None

    def describe(self) -> str:
        """How the environment said what it said (for error messages)."""
        if self.launcher == "slurm":
            return f"SLURM: {self.world_size} task(s) on {self.num_nodes} node(s)"
        if self.launcher == "torchrun":
            return f"torchrun: WORLD_SIZE={self.world_size} on {self.num_nodes} node(s)"
        return "not launched by torchrun or SLURM srun"


def detect_environment(environ: Mapping[str, str] | None = None) -> ClusterEnvironment:
    """Read the launcher's variables from ``environ`` (default ``os.environ``); torchrun's win over SLURM's.

    Example:
        >>> detect_environment({}).launched
        False
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return _torchrun(env)
    if _is_slurm_task(env):
        return _slurm(env)
    return ClusterEnvironment(launcher=None)


def _torchrun(env: Mapping[str, str]) -> ClusterEnvironment:
    world = int(env["WORLD_SIZE"])
    local_world = int(env.get("LOCAL_WORLD_SIZE", world))
    # torchrun sets GROUP_WORLD_SIZE (agents = nodes) and GROUP_RANK (this agent's index).
    nodes = (
        int(env["GROUP_WORLD_SIZE"]) if "GROUP_WORLD_SIZE" in env else max(1, world // max(1, local_world))
    )
    return ClusterEnvironment(
        launcher="torchrun",
        rank=int(env["RANK"]),
        world_size=world,
        local_rank=int(env.get("LOCAL_RANK", 0)),
        node_rank=int(env.get("GROUP_RANK", 0)),
        num_nodes=nodes,
        master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
        master_port=int(env["MASTER_PORT"]) if "MASTER_PORT" in env else None,
    )


def _is_slurm_task(env: Mapping[str, str]) -> bool:
    # One task (``srun -n1``, a batch script's own step) is no job of several ranks: devices=N may spawn.
    if "SLURM_PROCID" not in env or not env.get("SLURM_NTASKS", "").isdigit() or int(env["SLURM_NTASKS"]) < 2:
        return False
    return env.get("SLURM_JOB_NAME") not in _INTERACTIVE_JOB_NAMES


def _slurm(env: Mapping[str, str]) -> ClusterEnvironment:
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "127.0.0.1"
    hosts = expand_hostlist(nodelist)
    nodes = int(env["SLURM_NNODES"]) if "SLURM_NNODES" in env else len(hosts)
    if "MASTER_PORT" in env:
        port = int(env["MASTER_PORT"])
    else:
        job = env.get("SLURM_JOB_ID", "0")
        port = _SLURM_PORT_BASE + int(job[-4:]) if job[-4:].isdigit() else _SLURM_PORT_BASE
    return ClusterEnvironment(
        launcher="slurm",
        rank=int(env["SLURM_PROCID"]),
        world_size=int(env["SLURM_NTASKS"]),
        local_rank=int(env.get("SLURM_LOCALID", 0)),
        node_rank=int(env.get("SLURM_NODEID", 0)),
        num_nodes=nodes,
        master_addr=env.get("MASTER_ADDR") or hosts[0],
        master_port=port,
    )


def expand_hostlist(hostlist: str) -> list[str]:
    """The hosts of a SLURM host list: ``"node[01-03,07],gpu5"`` → node01, node02, node03, node07, gpu5.

    Example:
        >>> expand_hostlist("node[01-03,07],login")
        ['node01', 'node02', 'node03', 'node07', 'login']
    """
    hosts: list[str] = []
    for prefix, ranges, suffix in re.findall(r"([^,\[]*)(?:\[([^\]]*)\])?([^,\[]*)", hostlist):
        if not prefix and not ranges:
            continue
        if not ranges:
            hosts.append(prefix + suffix)
            continue
        for part in ranges.split(","):
            first, _, last = part.partition("-")
            if not last:
                hosts.append(f"{prefix}{first}{suffix}")
                continue
            width = len(first)
            hosts.extend(f"{prefix}{n:0{width}d}{suffix}" for n in range(int(first), int(last) + 1))
    if not hosts:
        raise ValueError(f"SLURM_JOB_NODELIST={hostlist!r}: no host in it")
    return hosts


def export_environment(env: ClusterEnvironment) -> None:
    """Set the ``RANK``/``WORLD_SIZE``/... variables torch and libraries read, from a SLURM task's.

    Variables already set are kept; under torchrun everything is set already.
    """
    if env.launcher != "slurm":
        return
    values = {
        "RANK": env.rank,
        "WORLD_SIZE": env.world_size,
        "LOCAL_RANK": env.local_rank,
        "GROUP_RANK": env.node_rank,
        "MASTER_ADDR": env.master_addr,
        "MASTER_PORT": env.master_port,
    }
    for key, value in values.items():
        os.environ.setdefault(key, str(value))


def check_num_nodes(num_nodes: int, env: ClusterEnvironment) -> None:
    """``Trainer(num_nodes=N)`` must match the launched job; ``N > 1`` needs a launcher.

    Raises:
        ValueError: naming both numbers, or the command that launches ``num_nodes`` nodes.
    """
    if env.launched and env.num_nodes != num_nodes:
        raise ValueError(
            f"Trainer(num_nodes={num_nodes}) but this job was launched on {env.num_nodes} node(s) "
            f"({env.describe()}); set num_nodes={env.num_nodes} or launch on {num_nodes} node(s)"
        )
    if not env.launched and num_nodes > 1:
        raise ValueError(
            f"Trainer(num_nodes={num_nodes}): this process was not started by torchrun or SLURM srun, and "
            "devices=N starts processes on this machine only. Start one copy of the script on each node, e.g. "
            f"`torchrun --nnodes={num_nodes} --nproc-per-node=<devices> --node-rank=<0..{num_nodes - 1}> "
            "--master-addr=<host of node 0> --master-port=29500 train.py` on every node, or under SLURM "
            f"`srun --nodes={num_nodes} --ntasks-per-node=<devices> python train.py`"
        )
