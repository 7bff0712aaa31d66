"""Fine-tune a Hugging Face BERT with ``HFTask``, export it with ``--format hf``, reload it with ``from_pretrained``.

The data ships with Python: the first line of the docstring of every public function in four
standard-library modules (``math``, ``os.path``, ``string`` and ``re``), labelled with its
module. The model is a small BERT built from a config (random init, nothing downloaded), or any
local model directory given with ``--model`` (its tokenizer too, when it has one). After
training, the last checkpoint is exported with ``tasktrain export CKPT OUT --format hf``; the
exported folder is loaded with ``AutoModelForSequenceClassification.from_pretrained`` and
evaluated again: the accuracy is the same, because the weights are.

Run:
    python examples/hf_text_classification.py --max-epochs 8
    python examples/hf_text_classification.py --model ./my-local-bert

It prints ``accuracy (trained): ...``, ``accuracy (from_pretrained): ...`` and the exported folder.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import random
import re
import string
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

import tasktrain as tt
from tasktrain.checkpoint import find_last
from tasktrain.cli import main as tasktrain_cli
from tasktrain.hf import HFTask

MODULES = (math, os.path, string, re)  # the classes: which module a docstring line comes from


def docstring_lines() -> list[tuple[str, int]]:
    """``(first docstring line, module index)`` for every public function of ``MODULES``."""
    samples = []
    for label, module in enumerate(MODULES):
        for name, obj in sorted(vars(module).items()):
            if name.startswith("_") or not callable(obj):
                continue
            doc = inspect.getdoc(obj)
            line = doc.strip().splitlines()[0] if doc else ""
            if len(line.split()) >= 3:
                samples.append((line, label))
    return samples


def word_tokenizer(texts: list[str]) -> Any:
    """A word-level tokenizer over ``texts``, built here (no download), as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=special))
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )


def small_bert(vocab_size: int) -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        num_labels=len(MODULES),
    )
    return BertForSequenceClassification(config)


class Collate:
    """Tokenize and pad a micro-batch of ``(text, label)``: the dict batch HFTask expects."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, items: list[tuple[str, int]]) -> dict[str, torch.Tensor]:
        texts, labels = zip(*items, strict=True)
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=48, return_tensors="pt")
        batch.pop("token_type_ids", None)
        return {**batch, "labels": torch.tensor(labels)}


@torch.no_grad()
def accuracy(model: torch.nn.Module, loader: DataLoader) -> float:
    model.eval()
    right = total = 0
    for batch in loader:
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        right += int((logits.argmax(-1) == batch["labels"]).sum())
        total += len(batch["labels"])
    return right / total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--model", default=None, help="a local model directory (default: a small BERT from a config)"
    )
    parser.add_argument("--max-epochs", type=int, default=8)
    parser.add_argument("--root-dir", default="runs/hf_text_classification")
    parser.add_argument("--no-progress-bar", action="store_true")
    args = parser.parse_args(argv)

    tt.seed_everything(0)
    samples = docstring_lines()
    random.Random(0).shuffle(samples)
    cut = int(0.8 * len(samples))
    train, test = samples[:cut], samples[cut:]

    if args.model is not None:
        from transformers import AutoTokenizer

        has_tokenizer = any((Path(args.model) / f).exists() for f in ("tokenizer.json", "vocab.txt"))
        tokenizer = (
            AutoTokenizer.from_pretrained(args.model, local_files_only=True)
            if has_tokenizer
            else word_tokenizer([t for t, _ in samples])
        )
        task = HFTask(
            args.model,
            auto_class="AutoModelForSequenceClassification",
            model_kwargs={"num_labels": len(MODULES)},
            learning_rate=3e-4,
            warmup_ratio=0.1,
            weight_decay=0.01,
        )
    else:
        tokenizer = word_tokenizer([t for t, _ in samples])
        task = HFTask(small_bert(len(tokenizer)), learning_rate=3e-4, warmup_ratio=0.1, weight_decay=0.01)

    collate = Collate(tokenizer)
    train_loader = DataLoader(train, batch_size=16, shuffle=True, collate_fn=collate)
    test_loader = DataLoader(test, batch_size=64, collate_fn=collate)
    trainer = tt.Trainer(
        max_epochs=args.max_epochs,
        accumulate_grad_batches=2,
        default_root_dir=args.root_dir,
        enable_progress_bar=not args.no_progress_bar,
        log_every_n_steps=10,
        accelerator="cpu",
    )
    result = trainer.fit(task, train_loader)
    print(
        f"trained {result.global_step} steps on {len(train)} docstring lines, train_loss {result.train_loss:.4f}"
    )
    trained = accuracy(task.model, test_loader)
    print(f"accuracy (trained): {trained:.4f} on {len(test)} lines, {len(MODULES)} classes")

    # Back to the Hugging Face world: the CLI export, then transformers' own loader.
    from transformers import AutoModelForSequenceClassification

    exported = str(Path(args.root_dir) / "exported")
    last = find_last(args.root_dir)
    assert last is not None
    tasktrain_cli(["export", last, exported, "--format", "hf"])
    tokenizer.save_pretrained(exported)
    reloaded = AutoModelForSequenceClassification.from_pretrained(exported)
    print(f"accuracy (from_pretrained): {accuracy(reloaded, test_loader):.4f}")
    print(f"exported: {exported}")


if __name__ == "__main__":
    main()
