"""Several nodes on loopback: two torchrun agents of one process each, and SLURM ``srun``'s variables
given to two plain processes; both train exactly as one process on the global batch."""

from __future__ import annotations

import sys

import _dist_checks as checks
from _launch import JOB, Job, clean_env, torchrun_command, wait_all
from safetensors.torch import load_file

from tasktrain.strategies.launcher import free_port


def test_two_torchrun_agents_with_num_nodes_2_match_one_process_on_the_global_batch(tmp_path):
    weights, _ = checks.reference()
    port, out = free_port(), str(tmp_path / "weights.safetensors")
    agents = [
        Job.start(
            torchrun_command(node, port, str(tmp_path / "run"), out, "--num-nodes", "2"),
            tmp_path / f"agent{node}.log",
            clean_env(),
        )
        for node in (0, 1)
    ]
    codes = wait_all(agents, timeout=180)
    assert codes == [0, 0], "\n".join(a.output for a in agents)
    checks.assert_weights_close(load_file(out), weights, atol=1e-6)


def test_srun_variables_without_torchrun_form_one_world_and_match_one_process(tmp_path):
    weights, _ = checks.reference()
    port, out = str(free_port()), str(tmp_path / "weights.safetensors")
    slurm = {
        "SLURM_NTASKS": "2",
        "SLURM_LOCALID": "0",
        "SLURM_NNODES": "2",
        "SLURM_JOB_NODELIST": "127.0.0.1",
    }
    tasks = [
        Job.start(
            [sys.executable, JOB, str(tmp_path / "run"), out, "--num-nodes", "2"],
            tmp_path / f"task{rank}.log",
            clean_env(
                **slurm,
                SLURM_PROCID=str(rank),
                SLURM_NODEID=str(rank),
                SLURM_JOB_ID="4242",
                SLURM_JOB_NAME="job",
                MASTER_PORT=port,
            ),
        )
        for rank in (0, 1)
    ]
    codes = wait_all(tasks, timeout=180)
    assert codes == [0, 0], "\n".join(t.output for t in tasks)
    checks.assert_weights_close(load_file(out), weights, atol=1e-6)


def test_num_nodes_that_differs_from_the_launched_nodes_names_both(tmp_path):
    command = torchrun_command(
        0, free_port(), str(tmp_path / "run"), str(tmp_path / "w"), "--num-nodes", "2", nnodes=1
    )
    agent = Job.start(command, tmp_path / "agent.log", clean_env())
    assert wait_all([agent], timeout=120) != [0]
    assert "Trainer(num_nodes=2) but this job was launched on 1 node(s)" in agent.output
