"""A small DCGAN on scikit-learn's bundled 8x8 digits: two optimizers, manual optimization, EMA.

No download: ``sklearn.datasets.load_digits`` ships with scikit-learn (1,797 images). On a laptop
CPU the default 60 epochs take about a minute; digits are recognisable after ~30.

    python examples/gan.py                     # writes runs/gan/samples/epoch=NNN.png every epoch
    python examples/gan.py --max-epochs 2      # a quick smoke run

What it shows: ``automatic_optimization = False`` with ``self.optimizers()`` (the generator's and
the discriminator's Adam, in ``configure_optimizers`` order) and ``self.manual_backward``; a
discriminator step then a generator step in each ``training_step`` (``global_step`` counts the
batches, one per ``training_step``); the :class:`~tasktrain.callbacks.EMA` callback averaging the
weights; and a callback that draws a grid of samples from the averaged generator at the end of
each epoch (``samples/epoch=NNN.png``, with matplotlib) from the same fixed noise, so the
pictures show how one set of latent vectors turns into digits.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
from tasktrain.callbacks import EMA, Callback

LATENT = 32


def generator(width: int = 64) -> nn.Module:
    """Noise [B, LATENT] -> images [B, 1, 8, 8] in [-1, 1]: 2x2 -> 4x4 -> 8x8 with transposed convolutions."""
    return nn.Sequential(
        nn.Linear(LATENT, width * 2 * 2 * 2),
        nn.Unflatten(1, (width * 2, 2, 2)),
        nn.BatchNorm2d(width * 2),
        nn.ReLU(),
        nn.ConvTranspose2d(width * 2, width, 4, stride=2, padding=1),  # 4x4
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.ConvTranspose2d(width, 1, 4, stride=2, padding=1),  # 8x8
        nn.Tanh(),
    )


def discriminator(width: int = 64) -> nn.Module:
    """Images [B, 1, 8, 8] -> one logit each: 8x8 -> 4x4 -> 2x2 with strided convolutions."""
    return nn.Sequential(
        nn.Conv2d(1, width, 4, stride=2, padding=1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(width, width * 2, 4, stride=2, padding=1),
        nn.BatchNorm2d(width * 2),
        nn.LeakyReLU(0.2),
        nn.Flatten(),
        nn.Linear(width * 2 * 2 * 2, 1),
    )


class DigitsGAN(tt.TaskModule[tuple[Tensor]]):
    """The discriminator learns real from fake, then the generator learns to fool it."""

    automatic_optimization = False  # training_step steps both optimizers itself

    def __init__(self, width: int = 64, lr: float = 2e-4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.generator = generator(width)
        self.discriminator = discriminator(width)

    def forward(self, z: Tensor) -> Tensor:
        return self.generator(z)

    def training_step(self, batch: tuple[Tensor], batch_idx: int) -> Tensor:
        (real,) = batch
        opt_g, opt_d = self.optimizers()
        z = torch.randn(real.shape[0], LATENT, device=real.device)
        fake = self.generator(z)

        # 1. The discriminator: real images are 1, generated ones 0 (fake detached: no generator grads).
        real_logits, fake_logits = self.discriminator(real), self.discriminator(fake.detach())
        d_loss = F.binary_cross_entropy_with_logits(
            real_logits, torch.ones_like(real_logits)
        ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()

        # 2. The generator: make the (just updated) discriminator call its images real.
        logits = self.discriminator(fake)
        g_loss = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()

        self.log_dict({"train/d_loss": d_loss, "train/g_loss": g_loss}, prog_bar=True)
        return g_loss

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        betas = (0.5, 0.999)  # the DCGAN paper's Adam settings
        return [
            torch.optim.Adam(self.generator.parameters(), lr=self.hparams.lr, betas=betas),
            torch.optim.Adam(self.discriminator.parameters(), lr=self.hparams.lr, betas=betas),
        ]


class SampleGrid(Callback):
    """At each epoch end, draw ``rows x rows`` digits from the EMA generator into ``directory/epoch=NNN.png``."""

    def __init__(self, ema: EMA, directory: str, rows: int = 8, seed: int = 0) -> None:
        self.ema = ema
        self.directory = Path(directory)
        self.rows = rows
        self.noise = torch.randn(rows * rows, LATENT, generator=torch.Generator().manual_seed(seed))
        self.paths: list[Path] = []

    def on_train_epoch_end(self, trainer: tt.Trainer, module: Any) -> None:
        averaged = copy.deepcopy(
            module.generator
        ).eval()  # the EMA weights, the training BatchNorm statistics
        weights = {k.removeprefix("generator."): v for k, v in self.ema.averaged_weights().items()}
        averaged.load_state_dict(weights, strict=False)  # parameters only: buffers stay the module's
        with torch.no_grad():
            images = averaged(self.noise.to(module.device)).cpu()
        self.paths.append(
            save_grid(images, self.directory / f"epoch={trainer.current_epoch:03d}.png", self.rows)
        )


def save_grid(images: Tensor, path: Path, rows: int) -> Path:
    """Tile [N, 1, 8, 8] images in [-1, 1] into one grayscale PNG (white digits on black, 1-pixel gaps)."""
    n, _, h, w = images.shape
    cols = -(-n // rows)
    grid = torch.zeros(rows * (h + 1) + 1, cols * (w + 1) + 1)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = (
            image[0] + 1
        ) / 2
    grid = grid.repeat_interleave(8, 0).repeat_interleave(8, 1)  # 8x larger, so a viewer shows pixels
    path.parent.mkdir(parents=True, exist_ok=True)
    import matplotlib.image

    matplotlib.image.imsave(path, grid.clamp(0, 1).numpy(), cmap="gray", vmin=0.0, vmax=1.0)
    return path


def digits_loader(batch_size: int, seed: int) -> DataLoader[Any]:
    from sklearn.datasets import load_digits

    images = torch.tensor(load_digits().images, dtype=torch.float32)  # [1797, 8, 8], values 0..16
    dataset = TensorDataset(images.unsqueeze(1) / 8.0 - 1.0)  # in [-1, 1], like the generator's Tanh
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--ema-decay", type=float, default=0.995)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is fastest for tiny ops)"
    )
    parser.add_argument("--root-dir", default="runs/gan", help="logs, checkpoints and samples/ go here")
    parser.add_argument("--no-progress-bar", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(argv)
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    tt.seed_everything(args.seed)
    model = DigitsGAN(width=args.width, lr=args.lr)
    ema = EMA(decay=args.ema_decay, validate_with_ema=False)  # no validation here: samples instead
    grid = SampleGrid(ema, f"{args.root_dir}/samples")
    trainer = tt.Trainer(
        max_epochs=args.max_epochs,
        accelerator="cpu",
        default_root_dir=args.root_dir,
        callbacks=[ema, grid],
        log_every_n_steps=10,
        enable_progress_bar=not args.no_progress_bar,
    )
    result = trainer.fit(model, digits_loader(args.batch_size, args.seed))
    metrics = trainer.callback_metrics
    print(
        f"trained {result.global_step} steps (one per batch, two optimizer steps each) in "
        f"{result.metrics['train_runtime']:.1f}s; last d_loss {metrics['train/d_loss']:.3f}, "
        f"g_loss {metrics['train/g_loss']:.3f}; EMA updates: {ema.n_averaged}"
    )
    print(f"samples: {grid.paths[-1]} (and one per epoch in {grid.directory})")
    last = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else None
    if last:
        averaged = DigitsGAN.load_from_checkpoint(last, weights="ema")  # the averaged weights, for sampling
        print(
            f"averaged generator loaded from {last} (weights='ema'): {sum(p.numel() for p in averaged.generator.parameters())} parameters"
        )
    print(f"total time: {time.perf_counter() - start:.1f}s")
    return grid.paths


if __name__ == "__main__":
    main()
