"""Tiny BERT and GPT-2 models built from configs (random init, nothing downloaded), their data, and
the plain-PyTorch reference loop the HFTask tests hold tasktrain to.

Spawned DDP ranks unpickle what they run by module name: ``conftest.py`` puts this folder on
``sys.path``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
)

VOCAB = 40
PAD = 0


def tiny_bert(task: str = "mlm", **overrides: Any) -> nn.Module:
    """A 2-layer BERT (hidden 16) for masked LM (``task="mlm"``) or 3-class classification ("cls")."""
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=PAD,
        num_labels=3,
        **overrides,
    )
    torch.manual_seed(0)
    return (BertForMaskedLM if task == "mlm" else BertForSequenceClassification)(config)


def gpt2_config(**overrides: Any) -> GPT2Config:
    return GPT2Config(
        vocab_size=VOCAB,
        n_embd=16,
        n_layer=2,
        n_head=2,
        n_positions=32,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=PAD,
        **overrides,
    )


def tiny_gpt2(**overrides: Any) -> nn.Module:
    """A 2-layer GPT-2 (hidden 16) with its LM head tied to the input embeddings."""
    torch.manual_seed(0)
    return GPT2LMHeadModel(gpt2_config(**overrides))


class NaiveGPT2(GPT2LMHeadModel):
    """A GPT-2 whose forward takes no ``num_items_in_batch``: its loss is always this micro-batch's mean."""

    def forward(  # type: ignore[override]
        self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None
    ) -> Any:
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask)
        if labels is not None:
            logits = out.logits[:, :-1].reshape(-1, out.logits.size(-1))
            out.loss = nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100)
        return out


def naive_gpt2() -> nn.Module:
    torch.manual_seed(0)
    return NaiveGPT2(gpt2_config())


# -- data: sequences of different lengths, padded per micro-batch --------------------------------------
def sequences(n: int, seed: int = 0) -> list[Tensor]:
    """``n`` token sequences of lengths 3..12 (so micro-batches hold different token counts)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 13, (n,), generator=g)
    return [torch.randint(3, VOCAB, (int(k),), generator=g) for k in lengths]


def lm_collate(items: Sequence[Tensor]) -> dict[str, Tensor]:
    """Right-pad a causal-LM micro-batch; padding is masked out of attention and loss (-100)."""
    width = max(len(t) for t in items)
    ids = torch.full((len(items), width), PAD)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for i, t in enumerate(items):
        ids[i, : len(t)], mask[i, : len(t)] = t, 1
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def mlm_collate(items: Sequence[Tensor]) -> dict[str, Tensor]:
    """Right-pad a masked-LM micro-batch; every third real token is a target (masked out of the input)."""
    batch = lm_collate(items)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    positions = torch.arange(ids.size(1)).expand_as(ids)
    first = torch.as_tensor([int(t[0]) % 3 for t in items]).unsqueeze(1)  # varies the targets per row
    target = (mask == 1) & ((positions + first) % 3 == 0)
    labels = ids.masked_fill(~target, -100)
    return {"input_ids": ids.masked_fill(target, 1), "attention_mask": mask, "labels": labels}


def loader(n: int, batch_size: int, collate: Callable[..., Any] = lm_collate, seed: int = 0) -> DataLoader:
    return DataLoader(sequences(n, seed), batch_size=batch_size, collate_fn=collate)


def lm_data(n: int = 12, batch_size: int = 2) -> DataLoader:
    """A factory for ``tasktrain fit --data`` (causal-LM batches)."""
    return loader(n, batch_size)


# -- the plain-PyTorch reference --------------------------------------------------------------------------
def reference_fit(
    model: nn.Module,
    steps: Sequence[Sequence[dict[str, Tensor]]],
    *,
    lr: float,
    weight_decay: float,
    warmup: int,
    causal: bool,
    token_mean: bool = True,
    clip: float | None = 1.0,
) -> list[float]:
    """Train ``model`` in place over ``steps`` (each a list of micro-batches); return each step's loss.

    AdamW with no decay on biases and LayerNorm weights, linear warm-up over ``warmup`` steps then
    linear decay to 0 at ``len(steps)``, gradient norm clipped at ``clip``. A step's loss is the
    mean over all its label tokens (``token_mean``), or the mean of its micro-batch means.
    """
    norms = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
    decay = [p for n, p in model.named_parameters() if not n.endswith("bias") and id(p) not in norms]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or id(p) in norms]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.999),
        eps=1e-8,
    )
    total = len(steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: s / warmup if s < warmup else max(0.0, (total - s) / (total - warmup))
    )
    model.train()
    losses = []
    for group in steps:
        counts = [int((b["labels"][:, 1:] if causal else b["labels"]).ne(-100).sum()) for b in group]
        loss = sum(
            model(**b).loss * (n / sum(counts) if token_mean else 1 / len(group))
            for b, n in zip(group, counts, strict=True)
        )
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    return losses


def groups(batches: Sequence[Any], accumulate: int) -> list[list[Any]]:
    """Consecutive groups of ``accumulate`` micro-batches, the remainder group last."""
    return [list(batches[i : i + accumulate]) for i in range(0, len(batches), accumulate)]


def tiny_llama() -> nn.Module:
    """A 2-layer Llama (hidden 16, 4 heads, 2 KV heads): a model with transformers' own TP plan."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        pad_token_id=PAD,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)
