"""What the ranks of the distributed search tests run; importable by name in spawned processes
(``tests/test_tune.py`` puts this directory on ``sys.path``, and spawn hands it to the children)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import torch
import torch.distributed as dist

from tasktrain.cli.loading import import_file
from tasktrain.tune import search

TinyTask = import_file(Path(__file__).resolve().parent / "cli" / "tiny_task.py", "tests").TinyTask

#: lr 0.1 learns; lr 1e-6 does not move, and the threshold prunes it at its first validation.
LRS = [0.1, 1e-6]
PRUNE_ABOVE = 3.0


def lr_space(trial: optuna.Trial) -> dict[str, Any]:
    return {"lr": trial.suggest_categorical("lr", LRS)}


def grid_search(root: str, storage: str | None = None, **trainer_kwargs: Any) -> Any:
    """Two trials (good lr, bad lr) over a pruner that stops the bad one at its first validation."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kwargs = {
        "max_epochs": 2,
        "val_check_interval": 4,
        "enable_progress_bar": False,
        "accelerator": "cpu",
        "seed": 0,
        **trainer_kwargs,
    }
    return search(
        TinyTask,
        lr_space,
        n_trials=len(LRS),
        trainer_kwargs=kwargs,
        root_dir=root,
        sampler=optuna.samplers.GridSampler({"lr": LRS}, seed=0),
        pruner=optuna.pruners.ThresholdPruner(upper=PRUNE_ABOVE),
        storage=storage,
        study_name="grid" if storage is not None else None,
    )


def torchrun_rank(root: str) -> dict[str, Any]:
    """One rank of a job launched with RANK/WORLD_SIZE set (as torchrun does): every rank calls search."""
    torch.set_num_threads(1)
    result = grid_search(root, strategy="ddp")
    plain = {k: v for k, v in vars(result).items() if k != "study"}
    ranks = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, plain)
    states = [t.state.name for t in result.study.trials] if result.study is not None else None
    values = [t.value for t in result.study.trials] if result.study is not None else None
    on_rank_1_study = dist.get_rank() == 1 and result.study is None
    flags = [None] * dist.get_world_size()
    dist.all_gather_object(flags, on_rank_1_study)
    dist.destroy_process_group()
    return {"ranks": ranks, "states": states, "values": values, "rank1_has_no_study": flags[1]}
