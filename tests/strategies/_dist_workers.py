"""Code shared by the distributed tests and the ranks they spawn.

Spawned ranks unpickle functions and classes by module name, so everything a rank runs lives
here, in a module the children can import (``conftest.py`` puts this directory on ``sys.path``,
and spawn hands ``sys.path`` to the children).

Starting two ranks costs seconds (each imports torch), so a test module starts them once:
:func:`run_scenarios` runs every scenario of that module one after the other in the same process
group, with strategy *objects* (a process that has ``RANK``/``WORLD_SIZE`` does not spawn), and
returns plain data from rank 0 for the tests to check against single-process references.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import tasktrain as tt
from tasktrain.callbacks import Callback
from tasktrain.checkpoint import find_last
from tasktrain.loggers import Logger
from tasktrain.strategies import DDP, FSDP, SingleDevice, Strategy

WORLD_SIZE = 2
#: 36 samples, 2 per rank and micro-batch: 9 micro-batches per rank and epoch, so accumulating 2
#: gives 4 full groups and a remainder group of one micro-batch.
CONFORMANCE_SAMPLES = 36
PER_RANK_BATCH = 2
ACCUMULATE = 2
CONFORMANCE_EPOCHS = 2
RESUME_SAMPLES = 20  # 5 micro-batches per rank: groups of 2, 2, 1 = 3 optimizer steps per epoch
RESUME_STOP = 4  # one step into the second epoch
RESUME_STEPS = 8  # two steps into the third epoch


# -- data and modules --------------------------------------------------------------------------------
def item_data(n: int = CONFORMANCE_SAMPLES) -> TensorDataset:
    """Regression samples ``(x, y, items)``; ``items`` (1..5) is how many loss items a sample holds."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = torch.randn(n, 1, generator=g)
    items = torch.randint(1, 6, (n,), generator=g)
    return TensorDataset(x, y, items)


def index_data(n: int = 24) -> TensorDataset:
    """``(index, x)`` samples, so a module can record which samples it was given."""
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.arange(n), torch.randn(n, 4, generator=g))


def log_data(n: int = 16) -> TensorDataset:
    """``(index, x, weight, label)``: logged values are functions of the data, not of the weights."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, 4, generator=g)
    weight = torch.randint(1, 6, (n,), generator=g)
    label = torch.randint(0, 3, (n,), generator=g)
    return TensorDataset(torch.arange(n), x, weight, label)


def item_loss(net: nn.Module, x: Tensor, y: Tensor, items: Tensor) -> Tensor:
    """Mean squared error per loss item: sample i counts ``items[i]`` times."""
    err = (net(x) - y).pow(2).squeeze(1)
    return (err * items).sum() / items.sum()


class ItemNet(tt.TaskModule):
    """A small regressor whose loss is a mean over loss items, counted by ``count_items``."""

    def __init__(self, optimizer: str = "sgd", lr: float = 0.1, dropout: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Dropout(dropout), nn.Linear(8, 1))

    def compute_loss(self, batch):
        x, y, items = batch
        return item_loss(self.net, x, y, items)

    def count_items(self, batch):
        return batch[2].sum()

    def configure_optimizers(self):
        if self.hparams.optimizer == "adamw":
            return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class TPItemNet(ItemNet):
    """ItemNet with a tensor-parallel plan: the first Linear split by columns, the last by rows."""

    def parallelize(self, mesh):
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        parallelize_module(self.net, mesh, {"0": ColwiseParallel(), "3": RowwiseParallel()})


class RaisingNet(ItemNet):
    """Fails in ``training_step`` on rank 1; rank 0 sleeps meanwhile (the launcher must stop it)."""

    def training_step(self, batch, batch_idx):
        if self.trainer.strategy.global_rank == 1:
            raise ValueError("boom on rank 1")
        time.sleep(60)
        return super().training_step(batch, batch_idx)


class IndexNet(tt.TaskModule):
    """Records, per epoch, the sample indices of every training batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 1)
        self.seen: dict[int, list[int]] = {}

    def training_step(self, batch, batch_idx):
        index, x = batch
        self.seen.setdefault(self.current_epoch, []).extend(index.tolist())
        return self.net(x).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def weighted_value(x: Tensor, weight: Tensor) -> Tensor:
    """What :class:`LogNet` logs for a batch: the weight-weighted mean of ``x.sum(1)``."""
    return (x.sum(1) * weight).sum() / weight.sum()


class LogNet(tt.TaskModule):
    """Logs data-dependent values with and without ``sync_dist``, and two torchmetrics metrics."""

    def __init__(self) -> None:
        from torchmetrics import MeanMetric  # imported here: it costs a second in every rank
        from torchmetrics.classification import MulticlassAccuracy

        super().__init__()
        self.net = nn.Linear(4, 1)
        self.val_mean = MeanMetric()
        self.val_acc = MulticlassAccuracy(num_classes=3, average="micro")
        self.val_seen: list[int] = []

    def _log_values(self, prefix: str, batch: Any) -> None:
        _, x, weight, _ = batch
        value, size = weighted_value(x, weight), int(weight.sum())
        self.log(f"{prefix}/sync", value, on_step=False, on_epoch=True, sync_dist=True, batch_size=size)
        self.log(f"{prefix}/local", value, on_step=False, on_epoch=True, batch_size=size)

    def training_step(self, batch, batch_idx):
        self._log_values("train", batch)
        return self.net(batch[1]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        index, x, weight, label = batch
        self.val_seen.extend(index.tolist())
        self._log_values("val", batch)
        self.val_mean.update(x.sum(1), weight)
        self.val_acc.update(x[:, :3].argmax(1), label)
        self.log("val/mean_metric", self.val_mean)
        self.log("val/acc", self.val_acc)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


#: TrainMetricNet's run: 16 samples, 2 per rank and step, so 4 steps per epoch; logs every 2 steps.
METRIC_EPOCHS = 2
METRIC_LOG_EVERY = 2


class TrainMetricNet(tt.TaskModule):
    """Logs torchmetrics metrics and ``sync_dist`` step values from ``training_step``."""

    def __init__(self) -> None:
        from torchmetrics.classification import MulticlassAccuracy

        super().__init__()
        self.net = nn.Linear(4, 1)
        self.acc = MulticlassAccuracy(num_classes=3, average="micro")  # on_step and on_epoch
        self.interval_acc = MulticlassAccuracy(num_classes=3, average="micro")  # on_step only

    def training_step(self, batch, batch_idx):
        _, x, weight, label = batch
        preds = x[:, :3].argmax(1)
        self.acc.update(preds, label)
        self.interval_acc.update(preds, label)
        self.log("train/acc", self.acc, on_step=True, on_epoch=True)
        self.log("train/interval_acc", self.interval_acc, on_step=True, on_epoch=False)
        value = weighted_value(x, weight)
        self.log("train/synced", value, sync_dist=True)
        self.log("train/synced_twice", 2 * value, sync_dist=True)
        self.log("train/local", value)
        return self.net(x).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class RecordingLogger(Logger):
    """Keeps every ``(step, metrics)`` it receives (loggers are called on every rank)."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.rows.append((step, dict(metrics)))


class CountingDDP(DDP):
    """A user's strategy: DDP that counts its backward passes, optimizer steps and reductions."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.backward_calls = 0
        self.optimizer_steps = 0
        self.reduce_calls = 0

    def reduce(self, tensor: Tensor, op: str = "mean", data_parallel: bool = False) -> Tensor:
        self.reduce_calls += 1
        return super().reduce(tensor, op, data_parallel)

    def backward(self, loss: Tensor) -> None:
        self.backward_calls += 1
        super().backward(loss)

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> bool:
        self.optimizer_steps += 1
        return super().optimizer_step(optimizer)


class CountingSingleDevice(SingleDevice):
    """A user's strategy: one device, counting backward passes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.backward_calls = 0

    def backward(self, loss: Tensor) -> None:
        self.backward_calls += 1
        super().backward(loss)


# -- single-process references ---------------------------------------------------------------------
def reference_fit(
    init: dict[str, Tensor],
    data: TensorDataset,
    global_batch: int,
    epochs: int,
    lr: float = 0.1,
    micro_batch: int | None = None,
) -> tuple[dict[str, Tensor], list[float]]:
    """Plain-PyTorch SGD over ``data`` in order, ``global_batch`` consecutive samples per step.

    The loss of a step is the mean over all loss items of the step (what ``count_items`` asks
    for). With ``micro_batch``, it is instead the plain mean of per-micro-batch item means (what
    an unweighted accumulation would give): a contrast, to show the weighting matters.
    """
    model = ItemNet()
    model.load_state_dict(init)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for _ in range(epochs):
        for start in range(0, len(data), global_batch):
            x, y, items = data[start : start + global_batch]
            if micro_batch is None:
                loss = item_loss(model.net, x, y, items)
            else:
                parts = [
                    item_loss(
                        model.net, x[i : i + micro_batch], y[i : i + micro_batch], items[i : i + micro_batch]
                    )
                    for i in range(0, len(x), micro_batch)
                ]
                loss = torch.stack(parts).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, losses


def initial_weights(seed: int = 0) -> dict[str, Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in ItemNet().state_dict().items()}


# -- what ranks run ----------------------------------------------------------------------------------
class StepLosses(Callback):
    """The global ``train/loss`` of every optimizer step (logged every step)."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_step_end(self, trainer, module):
        self.losses.append(trainer.callback_metrics["train/loss"])


class ReducesPerStep(Callback):
    """How many ``strategy.reduce`` calls each optimizer step made (its log flush included)."""

    def __init__(self) -> None:
        self.counts: list[int] = []
        self._seen = 0

    def on_train_step_end(self, trainer, module):
        self.counts.append(trainer.strategy.reduce_calls - self._seen)
        self._seen = trainer.strategy.reduce_calls


class GradSyncProbe(Callback):
    """After every backward: are the gradients equal on all ranks (i.e. already synchronised)?"""

    def __init__(self) -> None:
        self.in_sync: list[bool] = []

    def on_after_backward(self, trainer, module):
        grads = torch.cat([p.grad.reshape(-1) for p in module.parameters()])
        gathered = _gather(grads)
        self.in_sync.append(all(torch.equal(gathered[0], g) for g in gathered[1:]))


def _quiet(root: str, **kwargs: Any) -> dict[str, Any]:
    return {"logger": False, "enable_progress_bar": False, "default_root_dir": root, **kwargs}


def _strategy(kind: str, **kwargs: Any) -> Strategy:
    from tasktrain.strategies import DeepSpeed, TensorParallel

    classes: dict[str, Callable[..., Strategy]] = {
        "ddp": DDP,
        "fsdp": FSDP,
        "counting_ddp": CountingDDP,
        "tp": TensorParallel,
        **{f"deepspeed_{stage}": partial(DeepSpeed, stage=stage) for stage in (1, 2, 3)},
    }
    return classes[kind](**kwargs)


def _full_weights(trainer: tt.Trainer, module: nn.Module) -> dict[str, Tensor]:
    """Full weights on rank 0 (a collective under FSDP: every rank must call it)."""
    state = trainer.strategy.get_state(module, sharded=False)
    assert state is not None
    return {k: v.detach().cpu().clone() for k, v in state.model.items()}


def _gather(obj: Any) -> list[Any]:
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def conformance(
    kind: str,
    root: str,
    module_cls: type[ItemNet] = ItemNet,
    batch_size: int = PER_RANK_BATCH,
    trainer_kwargs: dict[str, Any] | None = None,
    **strategy_kwargs: Any,
) -> dict[str, Any]:
    """Fit ItemNet on :func:`item_data` (count_items, accumulation 2, SGD) from the seed-0 weights."""
    from torch._dynamo.utils import counters

    counters.clear()
    torch.manual_seed(0)
    module = module_cls()
    strategy = _strategy(kind, **strategy_kwargs)
    steps = StepLosses()
    trainer = tt.Trainer(
        strategy=strategy,
        max_epochs=CONFORMANCE_EPOCHS,
        accumulate_grad_batches=ACCUMULATE,
        log_every_n_steps=1,
        callbacks=[steps],
        **_quiet(root, enable_checkpointing=False),
        **(trainer_kwargs or {}),
    )
    result = trainer.fit(module, DataLoader(item_data(), batch_size=batch_size))
    out: dict[str, Any] = {
        "weights": _full_weights(trainer, module),
        "train_loss": result.train_loss,
        "global_step": result.global_step,
        "step_losses": steps.losses,
        "items_seen": _gather(trainer.items_seen),
        "graphs_captured": counters["stats"]["calls_captured"],  # torch.compile at work (0 when off)
    }
    if isinstance(strategy, CountingDDP):
        out["backward_calls"] = strategy.backward_calls
        out["optimizer_steps"] = strategy.optimizer_steps
    return out


def no_sync(kind: str, root: str) -> dict[str, Any]:
    """Whether gradients agree across ranks after each micro-batch, for accumulation 1, 2 and 3."""
    out = {}
    for accumulate in (1, 2, 3):
        torch.manual_seed(0)
        probe = GradSyncProbe()
        trainer = tt.Trainer(
            strategy=_strategy(kind),
            max_epochs=1,
            accumulate_grad_batches=accumulate,
            callbacks=[probe],
            **_quiet(root, enable_checkpointing=False),
        )
        trainer.fit(ItemNet(), DataLoader(item_data(), batch_size=PER_RANK_BATCH))
        out[f"accumulate_{accumulate}"] = probe.in_sync
    return out


def sampler(kind: str, root: str) -> dict[str, Any]:
    """Which samples each rank trains on, for shuffled, ordered and already-distributed loaders."""
    data = index_data()
    rank = dist.get_rank()

    def fit(loader: DataLoader, epochs: int) -> dict[int, list[int]]:
        module = IndexNet()
        trainer = tt.Trainer(
            strategy=_strategy(kind), max_epochs=epochs, **_quiet(root, enable_checkpointing=False)
        )
        trainer.fit(module, loader)
        return module.seen

    shuffled = fit(DataLoader(data, batch_size=3, shuffle=True), epochs=2)
    ordered = fit(DataLoader(data, batch_size=3), epochs=1)
    # The user's own DistributedSampler, with the ranks swapped: left alone, rank 0 reads rank 1's shard.
    own = DistributedSampler(data, num_replicas=WORLD_SIZE, rank=WORLD_SIZE - 1 - rank, shuffle=False)
    own_loader = DataLoader(data, batch_size=3, sampler=own)
    presharded = fit(own_loader, epochs=1)

    strategy = _strategy(kind)
    injected = strategy.process_dataloader(DataLoader(data, batch_size=3, shuffle=True, drop_last=True))
    inner = injected.batch_sampler.sampler
    return {
        "shuffled": _gather(shuffled),
        "ordered": _gather(ordered),
        "presharded": _gather(presharded),
        "presharded_left_alone": strategy.process_dataloader(own_loader) is own_loader,
        "injected": {
            "sampler": type(inner).__name__,
            "num_replicas": getattr(inner, "num_replicas", None),
            "rank": getattr(inner, "rank", None),
            "shuffle": getattr(inner, "shuffle", None),
            "batch_size": injected.batch_sampler.batch_size,
            "drop_last": injected.batch_sampler.drop_last,
        },
    }


def logging(kind: str, root: str) -> dict[str, Any]:
    """Epoch values logged with/without sync_dist, and torchmetrics metrics, in fit and validate."""
    data = log_data()
    torch.manual_seed(0)
    module = LogNet()
    trainer = tt.Trainer(strategy=_strategy(kind), max_epochs=1, **_quiet(root, enable_checkpointing=False))
    trainer.fit(module, DataLoader(data, batch_size=3), DataLoader(data, batch_size=3))
    fit_metrics = dict(trainer.callback_metrics)
    fit_val_seen = _gather(module.val_seen)
    module.val_seen = []
    validated = trainer.validate(module, DataLoader(data, batch_size=3))
    return {
        "fit": fit_metrics,
        "fit_val_seen": fit_val_seen,
        "validate": validated[0],
        "validate_seen": _gather(module.val_seen),
    }


def train_metrics(kind: str, root: str) -> dict[str, Any]:
    """Metrics and sync_dist values logged in training_step: what each rank's logger receives."""
    torch.manual_seed(0)
    recorder, reduces = RecordingLogger(), ReducesPerStep()
    trainer = tt.Trainer(
        strategy=_strategy("counting_ddp"),
        max_epochs=METRIC_EPOCHS,
        log_every_n_steps=METRIC_LOG_EVERY,
        callbacks=[reduces],
        **_quiet(root, enable_checkpointing=False, logger=[recorder]),
    )
    trainer.fit(TrainMetricNet(), DataLoader(log_data(), batch_size=PER_RANK_BATCH))
    return {"rows": _gather(recorder.rows), "reduces_per_step": reduces.counts}


def resume(
    kind: str,
    root: str,
    module_cls: type[ItemNet] = ItemNet,
    batch_size: int = PER_RANK_BATCH,
    resume_kind: str | None = None,
    **strategy_kwargs: Any,
) -> dict[str, Any]:
    """An uninterrupted run vs. one stopped mid-epoch and resumed from ``ckpt_path="last"``
    (under the strategy ``resume_kind``, if given).

    AdamW, dropout, shuffled data, accumulation with a remainder group; the default
    ModelCheckpoint saves into a directory shared by the ranks.
    """

    def run(name: str, max_steps: int, seed: int, ckpt_path: str | None = None) -> dict[str, Any]:
        torch.manual_seed(seed)  # initial weights and dropout: a resumed run must not depend on them
        module = module_cls(optimizer="adamw", lr=1e-2, dropout=0.2)
        strategy_kind = resume_kind if ckpt_path is not None and resume_kind else kind
        trainer = tt.Trainer(
            strategy=_strategy(strategy_kind, **strategy_kwargs),
            max_steps=max_steps,
            accumulate_grad_batches=ACCUMULATE,
            **_quiet(os.path.join(root, name)),
        )
        loader = DataLoader(item_data(RESUME_SAMPLES), batch_size=batch_size, shuffle=True)
        trainer.fit(module, loader, ckpt_path=ckpt_path)
        assert trainer.optimizer is not None
        return {
            "weights": _full_weights(trainer, module),
            "optimizer": trainer.strategy.get_state(module, trainer.optimizers, sharded=False).optimizers[0],
            "global_step": trainer.state.global_step,
            "epoch": trainer.state.epoch,
        }

    full = run("full", RESUME_STEPS, seed=0)
    stopped = run("split", RESUME_STOP, seed=0)
    resumed = run("split", RESUME_STEPS, seed=1234, ckpt_path="last")
    return {
        "full": full,
        "stopped": stopped,
        "resumed": resumed,
        "last_checkpoint": find_last(os.path.join(root, "split")),
    }


PREDICT_SAMPLES = 11  # not a multiple of 2 ranks x 3 per batch: the last rank's slice is padded


class PredictNet(TPItemNet):
    """Predicts ``net(x)`` with the sample indices (a tensor-parallel plan for ``tp``)."""

    def predict_step(self, batch, batch_idx):
        index, x = batch
        return {"index": index, "y": self.net(x)}


def predict(kind: str, root: str) -> dict[str, Any]:
    """``predict`` over a dataset that does not split evenly, from the seed-0 initial weights."""
    torch.manual_seed(0)
    trainer = tt.Trainer(strategy=_strategy(kind), **_quiet(root, enable_checkpointing=False))
    outputs = trainer.predict(PredictNet(), DataLoader(index_data(PREDICT_SAMPLES), batch_size=3))
    return {"outputs": [{k: v.detach().clone() for k, v in out.items()} for out in outputs]}


SCENARIOS: dict[str, dict[str, Callable[[str, str], dict[str, Any]]]] = {
    "ddp": {
        "conformance": conformance,
        "counting_strategy": lambda kind, root: conformance("counting_ddp", root),
        "compiled": lambda kind, root: conformance(
            kind, root, trainer_kwargs={"compile": {"backend": "eager"}}
        ),
        "no_sync": no_sync,
        "sampler": sampler,
        "logging": logging,
        "train_metrics": train_metrics,
        "resume": resume,
        "predict": predict,
    },
    "fsdp": {
        "conformance": conformance,
        "conformance_nested": lambda kind, root: conformance(kind, root, shard_modules=(nn.Linear,)),
        "compiled_nested": lambda kind, root: conformance(
            kind, root, trainer_kwargs={"compile": {"backend": "eager"}}, shard_modules=(nn.Linear,)
        ),
        "resume": resume,
        "resume_full": lambda kind, root: resume(kind, root, checkpoint="full"),
        "predict": predict,
    },
}


SCENARIOS["deepspeed"] = {
    **{
        f"stage{stage}": partial(
            lambda kind, root, stage: conformance(f"deepspeed_{stage}", root), stage=stage
        )
        for stage in (1, 2, 3)
    },
    **{
        f"resume_stage{stage}": partial(
            lambda kind, root, stage: resume(f"deepspeed_{stage}", root), stage=stage
        )
        for stage in (1, 2, 3)
    },
    "ddp_to_stage2": lambda kind, root: resume("ddp", root, resume_kind="deepspeed_2"),
    "stage3_to_ddp": lambda kind, root: resume("deepspeed_3", root, resume_kind="ddp"),
}
SCENARIOS["tp"] = {
    # Ranks of one TP group read the same batches: each reads the whole global micro-batch.
    "conformance": lambda kind, root: conformance(
        "tp", root, module_cls=TPItemNet, batch_size=PER_RANK_BATCH * WORLD_SIZE
    ),
    "resume": lambda kind, root: resume(
        kind, root, module_cls=TPItemNet, batch_size=PER_RANK_BATCH * WORLD_SIZE
    ),
    "predict": predict,
}
SCENARIOS["fsdp_tp"] = {  # 4 ranks: dp 2 x tp 2, each dp rank reading PER_RANK_BATCH samples
    "conformance": lambda kind, root: conformance("tp", root, module_cls=TPItemNet, tp_size=2),
}


def run_scenarios(kind: str, root: str) -> dict[str, Any]:
    """Run every scenario of ``kind`` in this rank; rank 0's return value goes back to the test.

    A scenario that fails on any rank becomes ``{"error": tracebacks}`` so the other scenarios
    still report. A short collective timeout makes a rank that fails alone fail the run quickly
    instead of leaving its peer waiting.
    """
    torch.set_num_threads(1)
    group_owner = DDP()
    group_owner.timeout = timedelta(seconds=60)
    group_owner.setup_environment()  # creates the process group every scenario then reuses
    results: dict[str, Any] = {}
    for name, scenario in SCENARIOS[kind].items():
        try:
            value, error = scenario(kind, os.path.join(root, name)), None
        except Exception:
            value, error = None, traceback.format_exc()
        errors = _gather(error)
        if any(errors):
            value = {"error": "\n".join(f"rank {r}:\n{e}" for r, e in enumerate(errors) if e)}
        results[name] = value
        dist.barrier()
    group_owner.teardown()
    return results


class HangingNet(ItemNet):
    """Rank 1 stops responding at its third micro-batch (it sleeps, outside any collective)."""

    def training_step(self, batch, batch_idx):
        if self.trainer.strategy.global_rank == 1 and batch_idx == 2:
            time.sleep(10**6)
        return super().training_step(batch, batch_idx)


class DyingNet(ItemNet):
    """Rank 1 dies (SIGKILL, no cleanup) at its third micro-batch."""

    def training_step(self, batch, batch_idx):
        if self.trainer.strategy.global_rank == 1 and batch_idx == 2:
            os.kill(os.getpid(), 9)
        return super().training_step(batch, batch_idx)
