"""The workloads both benchmarks time: a tiny MLP, where framework overhead dominates, and a small
causal transformer LM. The hand-written loops and tasktrain run exactly these."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset


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
