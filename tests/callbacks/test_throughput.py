"""Throughput: samples/s, steps/s and (with count_items) items/s at every logging step."""

from __future__ import annotations

import time

import pytest
import torch
from torch.utils.checkpoint import checkpoint
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

import tasktrain as tt
from tasktrain.activation_checkpointing import apply_activation_checkpointing
from tasktrain.callbacks import Throughput
from tasktrain.hardware import peak_flops
from tasktrain.loggers import Logger


class Recorder(Logger):
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.rows.append((step, dict(metrics)))

    def values(self, name: str) -> list[tuple[int, float]]:
        return [(step, m[name]) for step, m in self.rows if name in m]


class Task(tt.TaskModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(4, 1)

    def compute_loss(self, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Tokens(Task):
    def count_items(self, batch):
        return int(batch[0].shape[0]) * 7


def _fit(module: tt.TaskModule, **kwargs) -> tuple[Recorder, tt.Trainer]:
    rec = Recorder()
    trainer = tt.Trainer(
        callbacks=[Throughput()], logger=rec, enable_progress_bar=False, enable_checkpointing=False, **kwargs
    )
    g = torch.Generator().manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(24, 4, generator=g), torch.randn(24, 1, generator=g)), 3)
    trainer.fit(module, loader)
    return rec, trainer


def test_logs_samples_and_steps_per_second_at_log_steps():
    rec, _ = _fit(Task(), max_steps=6, log_every_n_steps=2, accumulate_grad_batches=2)
    samples = rec.values("throughput/samples_per_sec")
    steps = rec.values("throughput/steps_per_sec")
    assert [s for s, _ in samples] == [2, 4, 6]
    assert [s for s, _ in steps] == [2, 4, 6]
    assert all(v > 0 for _, v in samples + steps)
    # 2 micro-batches of 3 samples per step: samples/s == 6 x steps/s within one interval
    for (_, sps), (_, stps) in zip(samples, steps, strict=True):
        assert abs(sps - 6 * stps) <= 1e-6 * sps
    assert rec.values("throughput/items_per_sec") == []


def test_logs_items_per_second_with_count_items():
    rec, trainer = _fit(Tokens(), max_steps=4, log_every_n_steps=2)
    items = rec.values("throughput/items_per_sec")
    samples = rec.values("throughput/samples_per_sec")
    assert [s for s, _ in items] == [2, 4]
    for (_, ips), (_, sps) in zip(items, samples, strict=True):
        assert abs(ips - 7 * sps) <= 1e-6 * ips
    assert trainer.items_seen == 4 * 3 * 7


# -- FLOPs, MFU, peak memory (DESIGN §5.5) ---------------------------------------------------------
class Block(torch.nn.Module):
    """Linear + ReLU: ReLU keeps its output for backward, so a checkpointed block recomputes the matmul."""

    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(inputs, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x))


class MLP(Task):
    def __init__(self, width: int = 32, checkpointed: bool = False) -> None:
        super().__init__()
        self.checkpointed = checkpointed
        self.net = torch.nn.Sequential(Block(4, width), Block(width, width), torch.nn.Linear(width, 1))

    def configure_model(self) -> None:
        if self.checkpointed:
            apply_activation_checkpointing(self.net, Block)


def _reference_flops(checkpointed: bool, micro_batches: int, batch: int = 3) -> int:
    """FLOPs of one optimizer step, counted by hand around a plain forward and backward."""
    torch.manual_seed(0)
    layers = list(MLP().net)
    g = torch.Generator().manual_seed(1)
    with FlopCounterMode(display=False) as counter:
        for _ in range(micro_batches):
            x = torch.randn(batch, 4, generator=g)
            for layer in layers:
                use = checkpointed and isinstance(layer, Block)
                x = checkpoint(layer, x, use_reentrant=False) if use else layer(x)
            (x.square().mean() / micro_batches).backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("checkpointed", [False, True], ids=["plain", "activation-checkpointing"])
def test_total_flos_is_the_flop_count_of_one_step_times_the_steps(checkpointed):
    rec, trainer = _fit(
        MLP(checkpointed=checkpointed), max_steps=4, log_every_n_steps=2, accumulate_grad_batches=2
    )
    per_step = _reference_flops(checkpointed, micro_batches=2)
    assert [v for _, v in rec.values("total_flos")] == [2 * per_step, 4 * per_step, 4 * per_step]
    assert trainer.callback_metrics["total_flos"] == 4 * per_step
    if checkpointed:  # the recomputed forward is counted: more than the plain step
        assert per_step > _reference_flops(False, micro_batches=2)


def test_train_mfu_needs_a_peak_and_is_achieved_flops_over_it():
    rec, _ = _fit(MLP(), max_steps=4, log_every_n_steps=2)
    assert rec.values("train_mfu") == [] and rec.values("total_flos")  # a CPU: no peak known
    peak = 1e9
    rec = Recorder()
    trainer = tt.Trainer(
        callbacks=[Throughput(peak_flops=peak)],
        logger=rec,
        enable_progress_bar=False,
        enable_checkpointing=False,
        max_steps=4,
        log_every_n_steps=2,
    )
    g = torch.Generator().manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(24, 4, generator=g), torch.randn(24, 1, generator=g)), 3)
    started = time.perf_counter()
    result = trainer.fit(MLP(), loader)
    elapsed = time.perf_counter() - started
    mfu = result.metrics["train_mfu"]
    # At least the FLOPs over the whole fit's time, over the peak (training is part of the fit).
    assert result.metrics["total_flos"] / elapsed / peak <= mfu < 1


def test_peak_memory_grows_with_the_batch_size():
    peaks = []
    for batch in (64, 16384):
        g = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(batch, 4, generator=g), torch.randn(batch, 1, generator=g))
        trainer = tt.Trainer(
            callbacks=[Throughput()],
            logger=False,
            enable_progress_bar=False,
            enable_checkpointing=False,
            max_steps=1,
        )
        peaks.append(trainer.fit(MLP(width=1024), DataLoader(data, batch)).metrics["peak_memory_mb"])
    # 16384 x 1024 fp32 activations are 64 MiB per layer: the larger batch peaks well above the smaller.
    assert peaks[0] > 0 and peaks[1] > peaks[0] + 64, peaks


class TinyGPT(tt.TaskModule):
    """Two pre-norm causal transformer blocks with an LM head: FLOPs ~ 6 x parameters x tokens."""

    def __init__(self, vocab: int = 512, width: int = 256, context: int = 16) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        layer = torch.nn.TransformerEncoderLayer(
            width, 4, 4 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = torch.nn.Linear(width, vocab, bias=False)
        self.mask = torch.nn.Transformer.generate_square_subsequent_mask(context)

    def compute_loss(self, batch):
        (tokens,) = batch
        hidden = self.blocks(self.embed(tokens[:, :-1]), mask=self.mask[:-1, :-1], is_causal=True)
        logits = self.head(hidden)
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_total_flos_of_a_small_gpt_is_six_times_parameters_times_tokens():
    torch.manual_seed(0)
    module = TinyGPT()
    tokens = torch.randint(0, 512, (32, 16), generator=torch.Generator().manual_seed(0))
    trainer = tt.Trainer(
        callbacks=[Throughput()],
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        max_steps=4,
    )
    result = trainer.fit(module, DataLoader(TensorDataset(tokens), batch_size=8))
    weights = sum(p.numel() for name, p in module.named_parameters() if not name.startswith("embed"))
    estimate = 6 * weights * 4 * 8 * 15  # steps x batch x predicted tokens
    assert abs(result.metrics["total_flos"] / estimate - 1) < 0.10, (result.metrics["total_flos"], estimate)


def test_total_flos_under_ddp_sums_the_ranks():
    trainer = tt.Trainer(
        callbacks=[Throughput()],
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        max_steps=4,
        log_every_n_steps=2,
        strategy="ddp",
        devices=2,
        accelerator="cpu",
    )
    g = torch.Generator().manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(24, 4, generator=g), torch.randn(24, 1, generator=g)), 3)
    result = trainer.fit(MLP(), loader)
    assert result.metrics["total_flos"] == 2 * 4 * _reference_flops(False, micro_batches=1)


def test_peak_flops_table_and_bad_values():
    assert peak_flops("NVIDIA A100-SXM4-80GB", "bf16-mixed") == 312e12
    assert peak_flops("NVIDIA H100 PCIe", "16-mixed") == 756e12
    assert peak_flops("Tesla T4", "bf16-mixed") is None  # no bf16 tensor cores
    assert peak_flops("cpu", "32-true") is None
    with pytest.raises(
        ValueError, match=r"Throughput\(peak_flops=0\): accepted values are None or a number > 0"
    ):
        Throughput(peak_flops=0)
