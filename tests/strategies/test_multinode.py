"""Several nodes on loopback: two torchrun agents of one process each, and SLURM ``srun``'s variables
given to two plain processes; both train exactly as one process on the global batch."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import _dist_checks as checks
import torch
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


def test_two_torchrun_agents_of_two_processes_match_one_process_on_the_global_batch(tmp_path):
    """A world of 4: each optimizer step covers 2 per rank x 2 micro-batches x 4 ranks = 16 samples."""
    from _dist_workers import (
        ACCUMULATE,
        CONFORMANCE_EPOCHS,
        PER_RANK_BATCH,
        initial_weights,
        item_data,
        reference_fit,
    )

    weights, _ = reference_fit(
        initial_weights(0), item_data(), PER_RANK_BATCH * ACCUMULATE * 4, CONFORMANCE_EPOCHS
    )
    port, out = free_port(), str(tmp_path / "weights.safetensors")
    agents = [
        Job.start(
            torchrun_command(node, port, str(tmp_path / "run"), out, "--num-nodes", "2", nproc=2),
            tmp_path / f"agent{node}.log",
            clean_env(),
        )
        for node in (0, 1)
    ]
    codes = wait_all(agents, timeout=240)
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


def test_torchrun_restarts_a_job_whose_rank_died_and_auto_resumes_it_exactly(tmp_path):
    """Rank 1 is SIGKILLed after step 4 of the first attempt; torchrun restarts both ranks and
    ``ckpt_path="auto"`` (the same command line) resumes from step 4 to the end of the run."""

    def job(name: str, *extra: str) -> tuple[Job, str]:
        out = str(tmp_path / f"{name}.safetensors")
        args = (
            str(tmp_path / name),
            out,
            "--every",
            "1",
            "--ckpt-path",
            "auto",
            "--optimizer",
            "adamw",
            *extra,
        )
        # The c10d rendezvous (as --standalone uses): every restart forms a fresh round.
        port = free_port()
        options = (
            "--max-restarts=2",
            "--monitor-interval=0.5",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}",
            f"--rdzv-id={name}",
        )
        command = torchrun_command(0, port, *args, nnodes=1, nproc=2, options=options)
        return Job.start(command, tmp_path / f"{name}.log", clean_env()), out

    straight, straight_out = job("straight")
    assert wait_all([straight], timeout=240) == [0], straight.output
    restarted, restarted_out = job("restarted", "--kill-at", "4")
    assert wait_all([restarted], timeout=300) == [0], restarted.output
    assert "resuming from" in restarted.output and "step=00000004" in restarted.output
    expected, actual = load_file(straight_out), load_file(restarted_out)
    assert sorted(actual) == sorted(expected)
    assert all(torch.equal(actual[k], expected[k]) for k in expected), (
        "weights differ from the uninterrupted run"
    )


def _job_processes(marker: str) -> list[int]:
    """Processes whose command line mentions ``marker`` (this test's run directory), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_under_torchrun_a_hung_rank_is_named_by_the_rank_whose_collective_timed_out(tmp_path):
    run = str(tmp_path / "hung")
    args = (run, str(tmp_path / "w"), "--hang-at", "2", "--timeout", "10")
    command = torchrun_command(0, free_port(), *args, nnodes=1, nproc=2)
    start = time.monotonic()
    agent = Job.start(command, tmp_path / "agent.log", clean_env())
    (code,) = wait_all([agent], timeout=120)
    elapsed = time.monotonic() - start
    assert code not in (0, None), agent.output
    assert elapsed < 40, f"torchrun ended after {elapsed:.0f} s"
    assert (
        "CollectiveError: rank 0's collective failed because another rank did not take part: rank 1 ("
        in agent.output
    )
    assert "was not in a collective but in on_train_step_end (_launched_job.py:" in agent.output
    assert _job_processes(run) == []
