"""A tiny two-optimizer GAN under manual optimization, its plain-PyTorch reference loop, and the
DDP scenarios that ``test_manual.py`` runs in two spawned gloo ranks.

The noise is part of the dataset (``(real, z)`` pairs), so the framework and the reference draw
nothing from the global RNG and see the same numbers in the same order. DistributedSampler
without shuffling gives rank r the samples r, r+2, ...: per-rank batches of B on 2 ranks together
are the 2B consecutive samples one process reads with batch size 2B.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt

STEPS = 20
PER_RANK_BATCH = 4
WORLD_SIZE = 2
LR_G, LR_D, GAMMA = 1e-2, 5e-2, 0.9


def gan_data(n: int = 2 * STEPS * PER_RANK_BATCH) -> TensorDataset:
    g = torch.Generator().manual_seed(3)
    real = torch.randn(n, 2, generator=g) * 0.5 + torch.tensor([2.0, -1.0])
    z = torch.randn(n, 3, generator=g)
    return TensorDataset(real, z)


def nets() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    generator = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    discriminator = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
    return generator, discriminator


def optimizers(generator: nn.Module, discriminator: nn.Module) -> tuple[Any, Any, Any, Any]:
    opt_g = torch.optim.Adam(generator.parameters(), lr=LR_G, betas=(0.5, 0.9))
    opt_d = torch.optim.SGD(discriminator.parameters(), lr=LR_D, momentum=0.9)
    sched_g = torch.optim.lr_scheduler.StepLR(opt_g, step_size=3, gamma=GAMMA)
    sched_d = torch.optim.lr_scheduler.StepLR(opt_d, step_size=2, gamma=GAMMA)
    return opt_g, opt_d, sched_g, sched_d


def d_loss_of(discriminator: nn.Module, real: Tensor, fake: Tensor) -> Tensor:
    real_logits, fake_logits = discriminator(real), discriminator(fake)
    return F.binary_cross_entropy_with_logits(
        real_logits, torch.ones_like(real_logits)
    ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))


def g_loss_of(discriminator: nn.Module, fake: Tensor) -> Tensor:
    logits = discriminator(fake)
    return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


class GAN(tt.TaskModule):
    """The discriminator steps first, then the generator; both schedulers step per optimizer step."""

    automatic_optimization = False

    def __init__(
        self, schedulers: bool = True, blowup_step: int | None = None, blowup_rank: int | None = None
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.generator, self.discriminator = nets()
        self.d_stepped: list[bool] = []

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        real, z = batch
        opt_g, opt_d = self.optimizers()
        fake = self.generator(z)
        d_loss = d_loss_of(self.discriminator, real, fake.detach())
        rank_blows_up = self.hparams.blowup_rank in (None, self.trainer.strategy.global_rank)
        if self.hparams.blowup_step == self.global_step and rank_blows_up:
            d_loss = d_loss * float("inf")  # inf gradients: the 16-mixed step must be skipped
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        before = [p.detach().clone() for p in self.discriminator.parameters()]
        opt_d.step()
        self.d_stepped.append(
            not all(torch.equal(a, b) for a, b in zip(before, self.discriminator.parameters(), strict=True))
        )
        g_loss = g_loss_of(self.discriminator, fake)
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        self.log("train/g_loss", g_loss)
        return g_loss

    def configure_optimizers(self) -> Any:
        opt_g, opt_d, sched_g, sched_d = optimizers(self.generator, self.discriminator)
        if not self.hparams.schedulers:
            return [opt_g, opt_d]
        return [
            {"optimizer": opt_g, "lr_scheduler": {"scheduler": sched_g, "interval": "step"}},
            {"optimizer": opt_d, "lr_scheduler": {"scheduler": sched_d, "interval": "step"}},
        ]


class TPGAN(GAN):
    """The GAN with a tensor-parallel plan: each network's first Linear split by columns, its last by rows."""

    def parallelize(self, mesh: Any) -> None:
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        for net in (self.generator, self.discriminator):
            parallelize_module(net, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})


def reference(batch_size: int, steps: int = STEPS) -> dict[str, Tensor]:
    """The same GAN written by hand on one process: the state dict after ``steps`` batches."""
    generator, discriminator = nets()
    opt_g, opt_d, sched_g, sched_d = optimizers(generator, discriminator)
    loader = DataLoader(gan_data(), batch_size=batch_size)
    for step, (real, z) in enumerate(loader):
        if step == steps:
            break
        fake = generator(z)
        opt_d.zero_grad()
        d_loss_of(discriminator, real, fake.detach()).backward()
        opt_d.step()
        sched_d.step()
        g_loss = g_loss_of(discriminator, fake)
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
        sched_g.step()
    weights = {f"generator.{k}": v for k, v in generator.state_dict().items()}
    weights.update({f"discriminator.{k}": v for k, v in discriminator.state_dict().items()})
    return weights


def _local(tensor: Tensor) -> Tensor:
    return (tensor.to_local() if hasattr(tensor, "to_local") else tensor).detach().clone()


QUIET: dict[str, Any] = dict(logger=False, enable_progress_bar=False, enable_checkpointing=False)


def resume_run(
    strategy: Any, root: str, batch_size: int, stop_at: int, steps: int, task: type[GAN] = GAN
) -> dict[str, Any]:
    """Uninterrupted vs stopped at ``stop_at`` (mid-epoch), saved, and resumed: both final states."""

    def loader() -> DataLoader[Any]:
        return DataLoader(
            gan_data(), batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(5)
        )

    def trainer(max_steps: int, name: str) -> tt.Trainer:
        return tt.Trainer(
            max_steps=max_steps, strategy=strategy(), seed=1, default_root_dir=f"{root}/{name}", **QUIET
        )

    full, full_trainer = task(), trainer(steps, "full")
    full_trainer.fit(full, loader())
    first, first_trainer = task(), trainer(stop_at, "a")
    first_trainer.fit(first, loader())
    first_trainer.save_checkpoint(f"{root}/mid")
    resumed, again = task(), trainer(steps, "b")
    again.fit(resumed, loader(), ckpt_path=f"{root}/mid")
    return {
        "full": _full(full.state_dict()),
        "resumed": _full(resumed.state_dict()),
        "lrs": [[g["lr"] for g in o.param_groups] for o in again.optimizers],
        "full_lrs": [[g["lr"] for g in o.param_groups] for o in full_trainer.optimizers],
        "exp_avg": [_local(s["exp_avg"]) for s in again.optimizers[0].state.values()],
        "full_exp_avg": [_local(s["exp_avg"]) for s in full_trainer.optimizers[0].state.values()],
        "global_step": again.global_step,
    }


def _full(state: dict[str, Any]) -> dict[str, Tensor]:
    return {
        k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone() for k, v in state.items()
    }


def distributed_scenarios(strategy_name: str, root: str) -> dict[str, Any]:
    """Run in each of two spawned ranks: the GAN conformance run and the resume, under 'ddp', 'fsdp'
    or 'tp' (pure tensor parallelism: both ranks read the same batches)."""
    from tasktrain.strategies import DDP, TensorParallel
    from tasktrain.strategies.fsdp import FSDP

    torch.set_num_threads(1)
    make = {"ddp": DDP, "fsdp": FSDP, "tp": TensorParallel}[strategy_name]
    task = TPGAN if strategy_name == "tp" else GAN
    module = task()
    trainer = tt.Trainer(max_steps=STEPS, strategy=make(), default_root_dir=f"{root}/conf", **QUIET)
    trainer.fit(module, DataLoader(gan_data(), batch_size=PER_RANK_BATCH))
    conformance = _full(module.state_dict())
    resume = resume_run(make, f"{root}/resume", PER_RANK_BATCH, stop_at=7, steps=12, task=task)
    dp_size = 1 if strategy_name == "tp" else WORLD_SIZE
    outcome = {
        "conformance": conformance,
        "global_step": trainer.global_step,
        "resume": resume,
        "dp_size": dp_size,
    }
    if strategy_name == "ddp":
        outcome["one_rank_inf"] = _one_rank_inf(make, f"{root}/inf")
    return outcome


def _one_rank_inf(make: Any, root: str) -> dict[str, Any]:
    """16-mixed under DDP with inf gradients on rank 0 only at step 3: every rank must skip that step."""
    import torch.distributed as dist

    module = GAN(schedulers=False, blowup_step=3, blowup_rank=0)
    trainer = tt.Trainer(max_steps=6, strategy=make(), precision="16-mixed", default_root_dir=root, **QUIET)
    trainer.fit(module, DataLoader(gan_data(), batch_size=PER_RANK_BATCH))
    scaler = trainer.strategy.precision.scaler  # type: ignore[attr-defined]
    mine = (module.d_stepped, [p.detach().clone() for p in module.parameters()], scaler.get_scale())
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    return {
        "d_stepped": [rank[0] for rank in every],
        "replicas_equal": all(
            torch.equal(a, b) for other in every[1:] for a, b in zip(every[0][1], other[1], strict=True)
        ),
        "scales": [rank[2] for rank in every],
        "skipped_steps": trainer.fit_loop.epoch_loop.manual.skipped_steps,
    }


class OneOptimizer(GAN):
    """Manual optimization with a single optimizer over both networks (what DeepSpeed's one engine runs)."""

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        real, z = batch
        opt = self.optimizers()
        opt.zero_grad()
        loss = d_loss_of(self.discriminator, real, self.generator(z))
        self.manual_backward(loss)
        opt.step()
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=LR_D, momentum=0.9)


def one_optimizer_reference(batch_size: int, steps: int) -> dict[str, Tensor]:
    generator, discriminator = nets()
    opt = torch.optim.SGD([*generator.parameters(), *discriminator.parameters()], lr=LR_D, momentum=0.9)
    for step, (real, z) in enumerate(DataLoader(gan_data(), batch_size=batch_size)):
        if step == steps:
            break
        opt.zero_grad()
        d_loss_of(discriminator, real, generator(z)).backward()
        opt.step()
    weights = {f"generator.{k}": v for k, v in generator.state_dict().items()}
    weights.update({f"discriminator.{k}": v for k, v in discriminator.state_dict().items()})
    return weights


def deepspeed_manual(root: str, steps: int) -> dict[str, Tensor]:
    """Run in each of two spawned ranks: one-optimizer manual optimization under DeepSpeed ZeRO-2."""
    from tasktrain.strategies.deepspeed import DeepSpeed

    torch.set_num_threads(1)
    module = OneOptimizer()
    strategy = DeepSpeed(stage=2, config={"torch_adam": True})
    trainer = tt.Trainer(max_steps=steps, strategy=strategy, default_root_dir=root, **QUIET)
    trainer.fit(module, DataLoader(gan_data(), batch_size=PER_RANK_BATCH))
    state = strategy.get_state(module, trainer.optimizers)
    assert state is not None
    return {k: v.clone() for k, v in state.model.items()}
