"""Classify scikit-learn's bundled 8x8 handwritten digits with a small MLP.

No download: ``sklearn.datasets.load_digits`` ships with scikit-learn (1,797 images). The run
takes a few seconds on a laptop CPU and reaches about 97% validation accuracy.

    python examples/digits.py                    # the defaults used by `make demo`
    python examples/digits.py --max-epochs 2     # a quick smoke run
    python examples/digits.py --ema              # validate (and export) an EMA of the weights

or through the command line, with the data from ``DigitsData`` (the only data class here):

    tasktrain fit --task examples/digits.py --data examples/digits.py --trainer.max_epochs 2
    tasktrain fit --config examples/digits.yaml                  # the same settings as `make demo`

What it shows: a ``TaskModule`` with ``compute_loss``, a ``validation_step`` that logs
torchmetrics ``Metric`` objects (accuracy, and class-balanced accuracy) and fills a confusion
matrix, ``configure_optimizers`` with a per-step LR schedule sized from
``trainer.estimated_stepping_batches``, and ``Trainer.fit`` / ``Trainer.validate``. The confusion
matrix of the final validation is printed, and saved as ``confusion_matrix.png`` next to the
logs when matplotlib is installed. With ``--ema`` the :class:`~tasktrain.callbacks.EMA` callback
keeps an exponential moving average of the weights, every validation runs on it, and the last
checkpoint's averaged weights are loaded back with ``load_from_checkpoint(path, weights="ema")``.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset, random_split
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

import tasktrain as tt

Batch = tuple[Tensor, Tensor]  # (images [B, 64] in [0, 1], labels [B])


class DigitsClassifier(tt.TaskModule[Batch]):
    """A two-hidden-layer MLP over the 64 pixels of an 8x8 digit."""

    def __init__(self, hidden: int = 128, dropout: float = 0.1, lr: float = 3e-3, weight_decay: float = 1e-2):
        super().__init__()
        self.save_hyperparameters()  # stored in every checkpoint; read back as self.hparams.lr
        self.net = nn.Sequential(
            nn.Linear(64, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 10),
        )
        # A Metric is a submodule: it moves with the model and is computed and reset once per epoch
        # (over all ranks' data under DDP).
        self.val_acc = MulticlassAccuracy(num_classes=10, average="micro")  # the fraction right
        self.val_acc_macro = MulticlassAccuracy(num_classes=10, average="macro")  # mean per-class recall
        # A matrix is not a scalar to log: it is computed and kept at the end of each validation.
        self.val_confusion = MulticlassConfusionMatrix(num_classes=10)
        self.confusion: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def compute_loss(self, batch: Batch) -> Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)  # the trainer logs it as train/loss

    def validation_step(self, batch: Batch, batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        for metric in (self.val_acc, self.val_acc_macro, self.val_confusion):
            metric.update(logits, y)
        self.log("val/loss", loss, prog_bar=True)  # batch-size-weighted mean over the epoch
        self.log("val/acc", self.val_acc, prog_bar=True)  # Metric: compute() at epoch end, then reset()
        self.log("val/acc_macro", self.val_acc_macro)
        return loss

    def on_validation_epoch_end(self) -> None:
        self.confusion = self.val_confusion.compute().cpu()  # rows: true class, columns: predicted
        self.val_confusion.reset()

    def configure_optimizers(self) -> dict[str, object]:
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        total_steps = self.trainer.estimated_stepping_batches or 1
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class DigitsData:
    """Train/validation loaders over the bundled digits, split reproducibly by ``seed``.

    Any object with ``train_dataloader()`` / ``val_dataloader()`` methods can be the data of a
    run: ``trainer.fit(model, data.train_dataloader(), data.val_dataloader())`` in Python, or
    ``--data examples/digits.py`` on the command line (its arguments become ``--data.<name>``).
    """

    def __init__(self, batch_size: int = 64, val_fraction: float = 0.2, seed: int = 0):
        from sklearn.datasets import load_digits

        images, labels = load_digits(return_X_y=True)
        dataset = TensorDataset(
            torch.tensor(images, dtype=torch.float32) / 16.0,  # pixel values are 0..16
            torch.tensor(labels, dtype=torch.long),
        )
        n_val = int(len(dataset) * val_fraction)
        self.train, self.val = random_split(
            dataset, [len(dataset) - n_val, n_val], generator=torch.Generator().manual_seed(seed)
        )
        self.batch_size = batch_size
        self.seed = seed

    def train_dataloader(self) -> DataLoader[Batch]:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True, generator=generator)

    def val_dataloader(self) -> DataLoader[Batch]:
        return DataLoader(self.val, batch_size=256)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is fastest for tiny ops)"
    )
    parser.add_argument("--root-dir", default="runs/digits", help="logs and checkpoints go here")
    parser.add_argument("--no-progress-bar", action="store_true")
    parser.add_argument(
        "--ema", action="store_true", help="validate on an exponential moving average of the weights"
    )
    parser.add_argument("--ema-decay", type=float, default=0.99)
    return parser.parse_args(argv)


def format_confusion(matrix: Tensor) -> str:
    """The matrix as text: one row per true digit, one column per predicted digit."""
    rows = [
        f"confusion matrix ({int(matrix.sum())} validation images; rows: true digit, columns: predicted):"
    ]
    rows.append("     " + "".join(f"{c:>5}" for c in range(matrix.shape[1])))
    rows += [f"{r:>5}" + "".join(f"{int(n):>5}" for n in row) for r, row in enumerate(matrix)]
    return "\n".join(rows)


def save_confusion_png(metric: MulticlassConfusionMatrix, matrix: Tensor, directory: str) -> None:
    """Plot ``matrix`` into ``directory/confusion_matrix.png`` when matplotlib is installed."""
    from lightning_utilities.core.imports import RequirementCache

    if not RequirementCache("matplotlib"):
        return
    import matplotlib

    matplotlib.use("Agg")  # files only, no window
    fig, _ = metric.plot(val=matrix)
    path = f"{directory}/confusion_matrix.png"
    fig.savefig(path, dpi=100)
    print(f"confusion matrix plot: {path}")


def main(argv: list[str] | None = None) -> float:
    args = parse_args(argv)
    start = time.perf_counter()
    # Ops this small gain nothing from intra-op threads, and extra threads slow down a lot when
    # other processes compete for the cores.
    torch.set_num_threads(args.threads)
    tt.seed_everything(args.seed)  # before building the model, so its initial weights are reproducible
    data = DigitsData(args.batch_size, args.val_fraction, args.seed)
    train_loader, val_loader = data.train_dataloader(), data.val_dataloader()
    model = DigitsClassifier(hidden=args.hidden, lr=args.lr)
    # Validation (during fit and in trainer.validate) runs on the averaged weights, training on the others.
    callbacks = [tt.callbacks.EMA(decay=args.ema_decay)] if args.ema else []
    trainer = tt.Trainer(
        max_epochs=args.max_epochs,
        accelerator="cpu",  # the model is tiny: a GPU would only add transfer time
        default_root_dir=args.root_dir,
        log_every_n_steps=10,
        enable_progress_bar=not args.no_progress_bar,
        callbacks=callbacks,
    )
    result = trainer.fit(model, train_dataloaders=train_loader, val_dataloaders=val_loader)
    print(
        f"trained {result.global_step} steps in {result.metrics['train_runtime']:.1f}s "
        f"({result.metrics['train_samples_per_second']:.0f} samples/s), train loss {result.train_loss:.4f}"
    )
    [metrics] = trainer.validate(model, dataloaders=val_loader)
    accuracy = metrics["val/acc"]
    print(f"final val/loss: {metrics['val/loss']:.4f}")
    print(f"final val/acc: {accuracy:.4f}")
    print(f"final val/acc_macro: {metrics['val/acc_macro']:.4f}")
    if args.ema and trainer.checkpoint_callback is not None and trainer.checkpoint_callback.last_model_path:
        path = trainer.checkpoint_callback.last_model_path
        averaged = DigitsClassifier.load_from_checkpoint(
            path, weights="ema"
        )  # the EMA weights, for deployment
        [ema_metrics] = tt.Trainer(logger=False, enable_progress_bar=False, accelerator="cpu").validate(
            averaged, dataloaders=val_loader
        )
        print(f"EMA weights from {path}: val/acc {ema_metrics['val/acc']:.4f}")
    if model.confusion is not None:
        print(format_confusion(model.confusion))
        save_confusion_png(model.val_confusion, model.confusion, trainer.loggers[0].log_dir or args.root_dir)
    print(f"total time: {time.perf_counter() - start:.1f}s (logs and checkpoints in {args.root_dir})")
    return accuracy


if __name__ == "__main__":
    main()
