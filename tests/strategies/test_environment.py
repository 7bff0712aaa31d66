"""Where a process sits in the job, from torchrun's or SLURM's variables, and ``num_nodes`` checked against it."""

from __future__ import annotations

import pytest

import tasktrain as tt
from tasktrain.strategies import DDP
from tasktrain.strategies.environment import check_num_nodes, detect_environment, expand_hostlist

TORCHRUN_2x2 = {
    "RANK": "3",
    "WORLD_SIZE": "4",
    "LOCAL_RANK": "1",
    "LOCAL_WORLD_SIZE": "2",
    "GROUP_RANK": "1",
    "GROUP_WORLD_SIZE": "2",
    "MASTER_ADDR": "node01",
    "MASTER_PORT": "29500",
}
SLURM_2x2 = {
    "SLURM_PROCID": "2",
    "SLURM_NTASKS": "4",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "1",
    "SLURM_NNODES": "2",
    "SLURM_JOB_NODELIST": "gpu[07-08]",
    "SLURM_JOB_ID": "123456",
    "SLURM_JOB_NAME": "train",
}
LAUNCH_VARS = (*TORCHRUN_2x2, *SLURM_2x2, "SLURM_NODELIST")


@pytest.fixture
def clean_env(monkeypatch):
    for key in LAUNCH_VARS:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_torchrun_variables_give_rank_world_local_rank_and_node():
    env = detect_environment(TORCHRUN_2x2)
    assert (env.launcher, env.rank, env.world_size, env.local_rank) == ("torchrun", 3, 4, 1)
    assert (env.node_rank, env.num_nodes, env.master_addr, env.master_port) == (1, 2, "node01", 29500)


def test_slurm_variables_give_rank_world_node_and_the_first_host_as_master():
    env = detect_environment(SLURM_2x2)
    assert (env.launcher, env.rank, env.world_size, env.local_rank) == ("slurm", 2, 4, 0)
    assert (env.node_rank, env.num_nodes, env.master_addr) == (1, 2, "gpu07")
    assert (
        env.master_port == detect_environment({**SLURM_2x2, "SLURM_PROCID": "0"}).master_port
    )  # same job, same port


def test_slurm_keeps_a_given_master_addr_and_torchrun_wins_over_slurm():
    assert detect_environment({**SLURM_2x2, "MASTER_ADDR": "10.0.0.1"}).master_addr == "10.0.0.1"
    assert detect_environment({**SLURM_2x2, **TORCHRUN_2x2}).launcher == "torchrun"  # srun ... torchrun


@pytest.mark.parametrize(
    "extra",
    [{"SLURM_NTASKS": "1"}, {"SLURM_JOB_NAME": "bash"}, {"SLURM_JOB_NAME": "interactive"}],
    ids=["one-task", "salloc-shell", "interactive"],
)
def test_one_slurm_task_or_an_interactive_shell_is_not_a_launched_job(extra):
    assert not detect_environment({**SLURM_2x2, **extra}).launched


@pytest.mark.parametrize(
    ("hostlist", "hosts"),
    [
        ("node01", ["node01"]),
        ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
        ("a[8-10],b2,c[1,3]-ib", ["a8", "a9", "a10", "b2", "c1-ib", "c3-ib"]),
        ("gpu[007-008]", ["gpu007", "gpu008"]),
    ],
)
def test_slurm_host_lists_expand(hostlist, hosts):
    assert expand_hostlist(hostlist) == hosts


def test_num_nodes_must_equal_the_launched_number_of_nodes():
    check_num_nodes(2, detect_environment(TORCHRUN_2x2))
    with pytest.raises(ValueError, match=r"num_nodes=1.*launched on 2 node\(s\).*torchrun"):
        check_num_nodes(1, detect_environment(TORCHRUN_2x2))
    with pytest.raises(ValueError, match=r"num_nodes=4.*launched on 2 node\(s\).*SLURM"):
        check_num_nodes(4, detect_environment(SLURM_2x2))


def test_trainer_under_slurm_is_ddp_over_the_slurm_world(clean_env):
    for key, value in SLURM_2x2.items():
        clean_env.setenv(key, value)
    trainer = tt.Trainer(num_nodes=2, logger=False, enable_progress_bar=False, enable_checkpointing=False)
    assert isinstance(trainer.strategy, DDP)
    assert (trainer.strategy.world_size, trainer.strategy.global_rank, trainer.strategy.local_rank) == (
        4,
        2,
        0,
    )
    assert not trainer.strategy.processes_to_launch


def test_num_nodes_with_devices_spawn_is_refused_before_anything_starts(clean_env):
    with pytest.raises(ValueError, match=r"num_nodes=2.*devices=N starts processes on this machine only"):
        tt.Trainer(num_nodes=2, devices=2, strategy="ddp", accelerator="cpu")
    with pytest.raises(ValueError, match=r"num_nodes=2"):
        tt.Trainer(num_nodes=2, strategy=DDP(2, accelerator="cpu"))
