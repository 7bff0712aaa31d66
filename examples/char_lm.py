"""Train a tiny character-level transformer on the Zen of Python, then sample from it.

No download: the text comes with Python (the ``this`` module), or from any file you pass with
``--text-file``. Each line is one training sequence, so sequences have different lengths and
are padded with ``PAD_ID``.

    python examples/char_lm.py                                    # 15-40 s on 2 CPU cores
    python examples/char_lm.py --max-epochs 1 --repeats 2 --d-model 32   # a smoke run

or through the command line, with the data from ``ZenLines`` (the only data class here):

    tasktrain fit --task examples/char_lm.py --data examples/char_lm.py --trainer.max_epochs 1
    tasktrain fit --config examples/char_lm.yaml       # the settings of `python examples/char_lm.py`

What it shows:

- ``count_items`` returns the number of non-padding target tokens of a micro-batch. The loss is
  a mean over those tokens, and the trainer weights each micro-batch by its share of the
  optimizer step's tokens, so gradient accumulation (here 4 micro-batches, with a shorter
  remainder group at the end of each epoch) gives the same update as one big batch.
- ``FitResult.metrics["train_tokens_per_second"]``, which exists because ``count_items`` does.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import io
import math
import string
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

import tasktrain as tt

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2  # padding, start of line, end of line
# A fixed alphabet (printable ASCII without line breaks), so the model's size does not depend on
# the text it is trained on: a checkpoint loads without the text, and the task and data options
# of the command line are independent.
ALPHABET = "".join(c for c in string.printable if c not in "\n\r\x0b\x0c")
Batch = dict[str, Tensor]  # {"inputs": [B, T], "targets": [B, T]}, padded with PAD_ID


def zen_of_python() -> str:
    """The Zen of Python, decoded from the ``this`` module without printing it."""
    with contextlib.redirect_stdout(io.StringIO()):  # `import this` prints the poem
        import this
    return codecs.decode(this.s, "rot13")


class CharVocab:
    """Characters to ids and back; ids 0-2 are reserved for PAD, BOS and EOS."""

    def __init__(self, alphabet: str = ALPHABET) -> None:
        self.chars = sorted(set(alphabet))
        self.ids = {c: i + 3 for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars) + 3

    def encode(self, line: str) -> list[int]:
        return [self.ids[c] for c in line if c in self.ids]  # characters outside the alphabet are dropped

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i - 3] for i in ids if i >= 3)


def collate(lines: list[list[int]]) -> Batch:
    """Pad a list of encoded lines: inputs ``BOS + line``, targets ``line + EOS``."""
    longest = max(len(line) for line in lines) + 1
    inputs = torch.full((len(lines), longest), PAD_ID, dtype=torch.long)
    targets = torch.full((len(lines), longest), PAD_ID, dtype=torch.long)
    for row, line in enumerate(lines):
        ids = torch.tensor(line, dtype=torch.long)
        inputs[row, 0] = BOS_ID
        inputs[row, 1 : len(line) + 1] = ids
        targets[row, : len(line)] = ids
        targets[row, len(line)] = EOS_ID
    return {"inputs": inputs, "targets": targets}


VOCAB = CharVocab()


class ZenLines:
    """The lines of a text (the Zen of Python by default), one training sequence each.

    Lines are cut to ``max_len - 1`` characters (the model's ``max_len`` counts the BOS token).
    """

    def __init__(
        self,
        text_file: str | None = None,
        repeats: int = 20,
        batch_size: int = 8,
        max_len: int = 128,
        seed: int = 0,
    ) -> None:
        text = Path(text_file).read_text(encoding="utf-8") if text_file else zen_of_python()
        self.lines = [VOCAB.encode(line)[: max_len - 1] for line in text.splitlines() if line.strip()]
        self.repeats = repeats
        self.batch_size = batch_size
        self.seed = seed

    def train_dataloader(self) -> DataLoader[Batch]:
        # A list is a Dataset; collate pads each micro-batch to its own longest line.
        return DataLoader(
            self.lines * self.repeats,
            batch_size=self.batch_size,
            shuffle=True,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(self.seed),
        )


class CharTransformer(tt.TaskModule[Batch]):
    """A decoder-only transformer over characters (pre-norm, learned positions, causal mask)."""

    def __init__(
        self,
        vocab_size: int = len(VOCAB),
        max_len: int = 128,
        d_model: int = 96,
        n_layers: int = 2,
        n_heads: int = 4,
        dropout: float = 0.0,
        lr: float = 3e-3,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=PAD_ID)
        self.pos = nn.Embedding(max_len, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, 4 * d_model, dropout, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, inputs: Tensor) -> Tensor:
        """Logits ``[B, T, vocab]``. Padding sits after the real tokens, so the causal mask hides it."""
        length = inputs.shape[1]
        positions = torch.arange(length, device=inputs.device)
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=inputs.device)
        h = self.blocks(self.embed(inputs) + self.pos(positions), mask=mask, is_causal=True)
        return self.head(self.norm(h))

    def compute_loss(self, batch: Batch) -> Tensor:
        logits = self(batch["inputs"])
        # Mean over the non-padding targets of this micro-batch; count_items tells the trainer how many.
        return F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=PAD_ID)

    def count_items(self, batch: Batch) -> Tensor:
        # A tensor is fine (and never syncs the device); the trainer sums counts across the step.
        return batch["targets"].ne(PAD_ID).sum()

    def configure_optimizers(self) -> dict[str, object]:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=0.01)
        total = self.trainer.estimated_stepping_batches or 1  # optimizer steps, remainder groups included
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.hparams.lr, total_steps=total, pct_start=0.1
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    @torch.no_grad()
    def generate(self, prefix: list[int], max_new: int, temperature: float = 0.8) -> list[int]:
        """Sample up to ``max_new`` ids after ``BOS + prefix``; stop at EOS."""
        was_training = self.training
        self.eval()
        ids = [BOS_ID, *prefix]
        for _ in range(max_new):
            window = torch.tensor([ids[-self.hparams.max_len :]], device=self.device)
            logits = self(window)[0, -1] / max(temperature, 1e-6)
            next_id = int(torch.multinomial(torch.softmax(logits, dim=-1), 1))
            if next_id == EOS_ID:
                break
            ids.append(next_id)
        self.train(was_training)
        return ids[1:]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text-file", help="train on this file (one sequence per line)")
    parser.add_argument("--repeats", type=int, default=20, help="passes over the lines per epoch")
    parser.add_argument("--max-epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=8, help="lines per micro-batch")
    parser.add_argument("--accumulate", type=int, default=4, help="micro-batches per optimizer step")
    parser.add_argument("--d-model", type=int, default=96)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is fastest for tiny ops)"
    )
    parser.add_argument("--samples", type=int, default=3, help="how many lines to sample at the end")
    parser.add_argument("--root-dir", default="runs/char_lm", help="logs and checkpoints go here")
    parser.add_argument("--no-progress-bar", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    start = time.perf_counter()
    # Ops this small gain nothing from intra-op threads, and extra threads slow down a lot when
    # other processes compete for the cores.
    torch.set_num_threads(args.threads)
    tt.seed_everything(args.seed)
    data = ZenLines(args.text_file, repeats=args.repeats, batch_size=args.batch_size, seed=args.seed)
    loader = data.train_dataloader()
    model = CharTransformer(d_model=args.d_model, n_layers=args.layers, lr=args.lr)
    trainer = tt.Trainer(
        max_epochs=args.max_epochs,
        accumulate_grad_batches=args.accumulate,
        gradient_clip_val=1.0,
        accelerator="cpu",  # the model is tiny: a GPU would only add transfer time
        default_root_dir=args.root_dir,
        log_every_n_steps=10,
        enable_progress_bar=not args.no_progress_bar,
    )
    result = trainer.fit(model, train_dataloaders=loader)
    metrics = result.metrics
    print(
        f"trained {result.global_step} optimizer steps ({len(loader)} micro-batches per epoch, "
        f"{args.accumulate} per step) in {metrics['train_runtime']:.1f}s"
    )
    final = metrics["train/loss"]  # the mean over the optimizer steps since the previous log
    print(
        f"final train/loss: {final:.4f} (perplexity {math.exp(final):.2f}); mean over the run {result.train_loss:.4f}"
    )
    print(f"train_tokens_per_second: {metrics['train_tokens_per_second']:.0f}")
    print("samples:")
    for prompt in ["", "Beautiful", "Errors", "If the", "Now", "Special", "There"][: args.samples]:
        ids = model.generate(VOCAB.encode(prompt), max_new=80)
        print(f"  {VOCAB.decode(ids)}")
    print(f"total time: {time.perf_counter() - start:.1f}s (logs and checkpoints in {args.root_dir})")
    return metrics


if __name__ == "__main__":
    main()
