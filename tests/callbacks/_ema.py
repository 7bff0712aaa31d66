"""The EMA tests' module, data and plain-PyTorch reference, and the scenarios that
``test_ema.py`` runs in two spawned gloo ranks (DDP and FSDP).

The reference trains the same network by hand (SGD with momentum, the same batches in the same
order) and keeps ``AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay))`` updated after
the same optimizer steps. DistributedSampler without shuffling gives rank r the samples r, r+2,
...: per-rank batches of B on 2 ranks together are the 2B consecutive samples of one process.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
from tasktrain.callbacks import EMA

DECAY, EVERY, STEPS, PER_RANK_BATCH, WORLD_SIZE, LR = 0.9, 2, 12, 4, 2, 0.05
QUIET: dict[str, Any] = dict(logger=False, enable_progress_bar=False, enable_checkpointing=False)


def data(n: int = 96, seed: int = 0) -> TensorDataset:
    """``n`` samples of a smooth regression target."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, (x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]])).tanh())


VAL = data(16, seed=1)


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))


class Regressor(tt.TaskModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = net()

    def compute_loss(self, batch: Any) -> Tensor:
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=LR, momentum=0.9)


class TPRegressor(Regressor):
    """The same network with a tensor-parallel plan: the first Linear split by columns, the last by rows."""

    def parallelize(self, mesh: Any) -> None:
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        parallelize_module(self.net, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})


def reference(
    batch_size: int, steps: int = STEPS, every: int = EVERY, decay: float = DECAY
) -> tuple[nn.Module, AveragedModel]:
    """The network trained by hand, and its EMA updated by hand after steps every, 2*every, ..."""
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))
    for step, (x, y) in enumerate(DataLoader(data(), batch_size=batch_size), start=1):
        if step > steps:
            break
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
        if step % every == 0:
            averaged.update_parameters(model)
    return model, averaged


def averaged_by_name(averaged: AveragedModel) -> dict[str, Tensor]:
    return {f"net.{k}": v.detach().clone() for k, v in averaged.module.named_parameters()}


class _AllCollectives(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts every functional collective dispatched, strategy internals and DTensor included."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func.namespace == "_c10d_functional":
            self.count += 1
        return func(*args, **(kwargs or {}))


class CountingEMA(EMA):
    """An EMA that counts the collectives its updates make (of any kind, from anywhere)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.update_collectives = 0
        self.updates = 0

    def update(self) -> None:
        import torch.distributed as dist

        calls = []
        originals = {
            name: getattr(dist, name)
            for name in (
                "all_reduce",
                "all_gather",
                "broadcast",
                "reduce_scatter_tensor",
                "all_gather_into_tensor",
            )
        }
        for name, original in originals.items():
            setattr(dist, name, lambda *a, _o=original, **k: (calls.append(1), _o(*a, **k))[1])
        try:
            with _AllCollectives() as mode:
                super().update()
        finally:
            for name, original in originals.items():
                setattr(dist, name, original)
        self.update_collectives += mode.count + len(calls)
        self.updates += 1


def _full(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {
        k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone() for k, v in state.items()
    }


def distributed_scenarios(strategy_name: str, root: str) -> dict[str, Any]:
    """Run in each of two spawned ranks: EMA under ``strategy_name`` ('ddp', 'fsdp' or 'tp')."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for _syncs
    from _syncs import SyncCounter
    from tasktrain.strategies import DDP, TensorParallel
    from tasktrain.strategies.fsdp import FSDP

    torch.set_num_threads(1)
    make = {"ddp": DDP, "fsdp": FSDP, "tp": TensorParallel}[strategy_name]
    task = TPRegressor if strategy_name == "tp" else Regressor
    out: dict[str, Any] = {"dp_size": 1 if strategy_name == "tp" else WORLD_SIZE}  # TP ranks share batches
    counts = {}
    for with_ema in (True, False):
        module = task()
        ema = CountingEMA(decay=DECAY, every_n_steps=EVERY)
        counter = SyncCounter()
        callbacks = [ema, counter] if with_ema else [counter]
        trainer = tt.Trainer(
            max_steps=STEPS,
            strategy=make(),
            default_root_dir=f"{root}/{with_ema}",
            callbacks=callbacks,
            log_every_n_steps=1000,
            val_check_interval=4,
            **QUIET,
        )
        trainer.fit(module, DataLoader(data(), batch_size=PER_RANK_BATCH), DataLoader(VAL, batch_size=4))
        out[f"val_loss_{with_ema}"] = trainer.callback_metrics["val/loss"]
        counts[with_ema] = [b["collectives"] for b in counter.batches]
        if with_ema:
            trainer.save_checkpoint(f"{root}/final")  # the strategy's own layout (DCP shards under FSDP)
            out["averaged"] = ema.averaged_weights()  # gathered (FSDP) for the comparison
            out["update_collectives"] = ema.update_collectives
            out["updates"] = ema.updates
            out["weights"] = _full(module.state_dict())
            pairs = list(zip(ema._averages, ema._source, strict=True))
            out["placed_like_params"] = [
                hasattr(a, "placements") and a.placements == p.placements and a.device_mesh == p.device_mesh
                for a, p in pairs
            ]
            out["some_local_shard_smaller"] = any(
                hasattr(a, "to_local") and a.to_local().numel() < a.numel() for a, _ in pairs
            )
            out["events"] = counter.report()
    out["collectives_with_ema"], out["collectives_without_ema"] = counts[True], counts[False]
    # Exact resume with EMA under this strategy: stopped mid-epoch at step 5, saved, resumed to STEPS.
    finals = {}
    for name, stop in (("full", None), ("resumed", 5)):
        ema = EMA(decay=DECAY, every_n_steps=EVERY)
        module = task()
        loader = DataLoader(
            data(), batch_size=PER_RANK_BATCH, shuffle=True, generator=torch.Generator().manual_seed(2)
        )
        trainer = tt.Trainer(
            max_steps=stop or STEPS,
            strategy=make(),
            seed=3,
            default_root_dir=f"{root}/r{name}",
            callbacks=[ema],
            **QUIET,
        )
        trainer.fit(module, loader)
        if stop is not None:
            trainer.save_checkpoint(f"{root}/mid")
            ema, module = EMA(decay=DECAY, every_n_steps=EVERY), task()
            loader = DataLoader(
                data(), batch_size=PER_RANK_BATCH, shuffle=True, generator=torch.Generator().manual_seed(2)
            )
            again = tt.Trainer(
                max_steps=STEPS,
                strategy=make(),
                seed=3,
                default_root_dir=f"{root}/r2",
                callbacks=[ema],
                **QUIET,
            )
            again.fit(module, loader, ckpt_path=f"{root}/mid")
        finals[name] = {
            "averaged": ema.averaged_weights(),
            "weights": _full(module.state_dict()),
            "n": ema.n_averaged,
        }
    out["resume"] = finals
    return out


def deepspeed_stage3(root: str) -> None:
    """Run in each of two spawned ranks: EMA with DeepSpeed ZeRO-3 (refused)."""
    from tasktrain.strategies.deepspeed import DeepSpeed

    torch.set_num_threads(1)
    trainer = tt.Trainer(
        max_steps=2, strategy=DeepSpeed(stage=3), callbacks=[EMA()], default_root_dir=root, **QUIET
    )
    trainer.fit(Regressor(), DataLoader(data(), batch_size=PER_RANK_BATCH))
