"""What both benchmarks share: the workloads (a tiny MLP, where framework overhead dominates, and a
small causal transformer LM), the tasktrain side of each, and the statistics and machine report."""

from __future__ import annotations

import contextlib
import os
import platform
import random
import statistics
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset

import tasktrain as tt

LR = 1e-3  # AdamW on both sides
LossFn = Callable[[nn.Module, list[Tensor]], Tensor]


def make_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1))


def mlp_loss(net: nn.Module, batch: list[Tensor]) -> Tensor:
    x, y = batch
    return F.mse_loss(net(x), y)


def mlp_data(n: int, gen: torch.Generator) -> TensorDataset:
    return TensorDataset(torch.randn(n, 32, generator=gen), torch.randn(n, 1, generator=gen))


VOCAB, SEQ, D_MODEL, HEADS, LAYERS = 256, 64, 128, 4, 2


class TinyLM(nn.Module):
    """A causal transformer LM: token + position embedding, pre-norm encoder layers, LM head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D_MODEL)
        self.pos = nn.Parameter(torch.randn(SEQ, D_MODEL) * 0.02)
        layer = nn.TransformerEncoderLayer(
            D_MODEL, HEADS, 4 * D_MODEL, dropout=0.1, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
        self.head = nn.Linear(D_MODEL, VOCAB)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(SEQ), persistent=False)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.embed(tokens) + self.pos
        h = self.encoder(h, mask=self.mask, is_causal=True)
        return self.head(h)


def lm_loss(net: nn.Module, batch: list[Tensor]) -> Tensor:
    (tokens,) = batch
    logits = net(tokens[:, :-1])
    return F.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))


def lm_data(n: int, gen: torch.Generator) -> TensorDataset:
    return TensorDataset(torch.randint(0, VOCAB, (n, SEQ + 1), generator=gen))


class BenchTask(tt.TaskModule):
    """The tasktrain side: the same network and loss function as the raw loop.

    The optimizer is built once and returned by every ``configure_optimizers`` call, so its
    state lives across blocks exactly like the raw loop's optimizer does.
    """

    def __init__(self, net: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.net = net
        self.loss_fn = loss_fn
        self._optimizer: torch.optim.Optimizer | None = None

    def compute_loss(self, batch: list[Tensor]) -> Tensor:
        return self.loss_fn(self.net, batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self._optimizer is None:
            self._optimizer = torch.optim.AdamW(self.parameters(), lr=LR)
        return self._optimizer


def spread(values: list[float]) -> dict[str, float]:
    if len(values) == 1:
        q1 = q3 = values[0]
    else:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {
        "median": statistics.median(values),
        "q1": q1,
        "q3": q3,
        "min": min(values),
        "max": max(values),
    }


def median_ci95(values: list[float], resamples: int = 2000) -> tuple[float, float]:
    """A bootstrap 95% confidence interval of the median (how well the rounds pin it down)."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def git(*args: str) -> str:
    """Which tasktrain was measured (the code moves fast); empty outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", *args],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "src_dirty": bool(git("status", "--porcelain", "--", "src")),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "tasktrain": tt.__version__,
        "platform": platform.platform(),
    }


# -- two optimizers, manual optimization: a GAN-shaped step on the MLP data -----------------------
def make_gan() -> nn.Module:
    """A generator 32-64-32 and a discriminator 32-64-1, as one module with two halves."""
    return nn.ModuleDict(
        {
            "generator": nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32)),
            "discriminator": nn.Sequential(nn.Linear(32, 64), nn.LeakyReLU(0.2), nn.Linear(64, 1)),
        }
    )


def gan_losses(net: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """The discriminator's loss (fake detached) and the generator's loss functions, as both sides call them."""
    generator, discriminator = net["generator"], net["discriminator"]  # type: ignore[index]
    fake = generator(x)
    real_logits, fake_logits = discriminator(x), discriminator(fake.detach())
    d_loss = F.binary_cross_entropy_with_logits(
        real_logits, torch.ones_like(real_logits)
    ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return d_loss, fake


def g_loss_of(net: nn.Module, fake: Tensor) -> Tensor:
    logits = net["discriminator"](fake)  # type: ignore[index]
    return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


def gan_optimizers(net: nn.Module) -> list[torch.optim.Optimizer]:
    return [
        torch.optim.AdamW(net["generator"].parameters(), lr=LR),  # type: ignore[index]
        torch.optim.AdamW(net["discriminator"].parameters(), lr=LR),  # type: ignore[index]
    ]


class ManualGANTask(tt.TaskModule):
    """The tasktrain side of the two-optimizer workload: ``automatic_optimization = False``."""

    automatic_optimization = False

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self._optimizers: list[torch.optim.Optimizer] | None = None

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        opt_g, opt_d = self.optimizers()  # type: ignore[misc]
        d_loss, fake = gan_losses(self.net, batch[0])
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        g_loss = g_loss_of(self.net, fake)
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        return g_loss

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        if self._optimizers is None:
            self._optimizers = gan_optimizers(self.net)
        return self._optimizers
