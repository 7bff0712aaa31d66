"""AccumulationLoop: loss weighting across micro-batches, remainder groups, item counting, non-finite losses.

Every expectation is a plain-PyTorch loop written here, started from a deep copy of the same
initial weights and fed the same batches in the same order.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
from tasktrain.callbacks import Callback
from tasktrain.loops import NonFiniteLossError

LR = 0.1


def _params(module: nn.Module) -> list[Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _close(a: nn.Module, b: nn.Module, atol: float = 1e-6) -> bool:
    return all(torch.allclose(x, y, atol=atol, rtol=0) for x, y in zip(_params(a), _params(b), strict=True))


def _data(n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g)


class Regressor(tt.TaskModule):
    """A two-layer MLP on (x, y) batches; records (global_step, batch_idx) of every micro-batch."""

    def __init__(self, momentum: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.momentum = momentum
        self.seen: list[tuple[int, int, int]] = []  # (epoch, global_step, batch_idx)

    def compute_loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=LR, momentum=self.momentum)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.seen.append((self.current_epoch, self.global_step, batch_idx))


def _reference_step(
    model: Regressor,
    opt: torch.optim.Optimizer,
    group: Sequence[tuple[Tensor, Tensor]],
    weights: Sequence[float],
) -> None:
    """One hand-written optimizer step: backward every micro-batch loss times its weight, then step."""
    opt.zero_grad()
    for (x, y), w in zip(group, weights, strict=True):
        (F.mse_loss(model.net(x), y) * w).backward()
    opt.step()


def test_accumulating_four_batches_of_8_equals_one_step_on_batch_32(quiet: dict[str, Any]) -> None:
    x, y = _data(32)
    model = Regressor()
    reference, initial = copy.deepcopy(model), copy.deepcopy(model)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)

    result = tt.Trainer(max_steps=1, accumulate_grad_batches=4, **quiet).fit(model, loader)

    opt = torch.optim.SGD(reference.parameters(), lr=LR)
    big_batch_loss = F.mse_loss(reference.net(x), y)
    big_batch_loss.backward()
    opt.step()

    assert result.global_step == 1
    assert [s for _, s, _ in model.seen] == [0, 0, 0, 0]
    assert not _close(model, initial, atol=1e-4)  # it did train
    assert _close(model, reference, atol=1e-6)
    assert result.train_loss == pytest.approx(big_batch_loss.item(), abs=1e-6)


def test_remainder_group_is_one_step_with_each_micro_batch_weighted_by_its_group_size(
    quiet: dict[str, Any],
) -> None:
    x, y = _data(40)
    model = Regressor()
    reference, wrong = copy.deepcopy(model), copy.deepcopy(model)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)  # 10 batches

    result = tt.Trainer(max_epochs=1, accumulate_grad_batches=4, **quiet).fit(model, loader)

    batches = list(loader)
    groups = [batches[0:4], batches[4:8], batches[8:10]]
    ref_opt = torch.optim.SGD(reference.parameters(), lr=LR)
    wrong_opt = torch.optim.SGD(wrong.parameters(), lr=LR)
    for group in groups:
        _reference_step(reference, ref_opt, group, [1 / len(group)] * len(group))
        _reference_step(wrong, wrong_opt, group, [1 / 4] * len(group))  # remainder under-weighted

    assert result.global_step == 3
    assert [(s, i) for _, s, i in model.seen] == [
        (0, 0),
        (0, 1),
        (0, 2),
        (0, 3),
        (1, 4),
        (1, 5),
        (1, 6),
        (1, 7),
        (2, 8),
        (2, 9),
    ]
    assert _close(model, reference, atol=1e-6)
    assert not _close(model, wrong, atol=1e-5)


# -- count_items: token-weighted accumulation over padded sequences ------------------------------

VOCAB, PAD, IGNORE = 13, 0, -100
# Two sequences per micro-batch; lengths vary a lot, so micro-batches hold very different token counts.
LENGTHS = [(1, 2), (9, 12), (3, 1), (16, 15), (2, 2), (7, 1)]


def _sequence(length: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    ids = torch.randint(1, VOCAB, (length,), generator=g)
    return ids, torch.randint(0, VOCAB, (length,), generator=g)


def _pad(seqs: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Right-pad to the longest sequence; padding positions get PAD as input and IGNORE as label."""
    width = max(len(ids) for ids, _ in seqs)
    ids = torch.full((len(seqs), width), PAD)
    labels = torch.full((len(seqs), width), IGNORE)
    for row, (i, lab) in enumerate(seqs):
        ids[row, : len(i)], labels[row, : len(lab)] = i, lab
    return ids, labels


class TokenModel(tt.TaskModule):
    """Per-token classifier; the loss is the mean over non-padding tokens of the micro-batch."""

    def __init__(self, count_as: str = "tensor") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(VOCAB, 8)
        self.head = nn.Linear(8, VOCAB)
        self.count_as = count_as

    def token_loss(self, ids: Tensor, labels: Tensor) -> Tensor:
        logits = self.head(torch.tanh(self.emb(ids)))
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)

    def compute_loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        return self.token_loss(*batch)

    def count_items(self, batch: tuple[Tensor, Tensor]) -> int | Tensor:
        n = (batch[1] != IGNORE).sum()
        return n if self.count_as == "tensor" else int(n)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.5)


@pytest.mark.parametrize("count_as", ["tensor", "int"])
def test_count_items_weights_micro_batches_by_their_share_of_the_groups_tokens(
    quiet: dict[str, Any], count_as: str
) -> None:
    g = torch.Generator().manual_seed(0)
    seqs = [[_sequence(n, g) for n in pair] for pair in LENGTHS]
    micro_batches = [_pad(pair) for pair in seqs]
    model = TokenModel(count_as)
    token_mean, naive = copy.deepcopy(model), copy.deepcopy(model)
    loader = DataLoader(micro_batches, batch_size=None)  # each item is already a padded micro-batch

    result = tt.Trainer(max_epochs=1, accumulate_grad_batches=4, **quiet).fit(model, loader)

    # Reference: one big padded batch per optimizer step (a group of 4, then the remainder of 2).
    groups = [slice(0, 4), slice(4, 6)]
    opt = torch.optim.SGD(token_mean.parameters(), lr=0.5)
    big_batch_losses = []
    for group in groups:
        opt.zero_grad()
        loss = token_mean.token_loss(*_pad([s for pair in seqs[group] for s in pair]))
        loss.backward()
        opt.step()
        big_batch_losses.append(loss.item())
    # The naive alternative: the mean of the micro-batch means.
    naive_opt = torch.optim.SGD(naive.parameters(), lr=0.5)
    for group in groups:
        naive_opt.zero_grad()
        batches = micro_batches[group]
        for ids, labels in batches:
            (naive.token_loss(ids, labels) / len(batches)).backward()
        naive_opt.step()

    assert result.global_step == 2
    assert result.train_loss == pytest.approx(sum(big_batch_losses) / 2, abs=1e-6)
    assert _close(model, token_mean, atol=1e-6)
    assert not _close(naive, token_mean, atol=1e-3)  # the weighting matters for this data
    assert not _close(model, naive, atol=1e-3)


# -- max_steps counts optimizer steps ------------------------------------------------------------


@pytest.mark.parametrize(
    ("batches_per_epoch", "expected_batches_per_epoch"),
    [(6, [6, 6, 3]), (7, [7, 6])],  # 6: 2 steps/epoch; 7: 3 steps/epoch (remainder group of 1)
)
def test_max_steps_counts_optimizer_steps_not_batches_across_epochs(
    quiet: dict[str, Any], batches_per_epoch: int, expected_batches_per_epoch: list[int]
) -> None:
    x, y = _data(2 * batches_per_epoch)
    model = Regressor()
    reference = copy.deepcopy(model)
    loader = DataLoader(TensorDataset(x, y), batch_size=2)

    result = tt.Trainer(max_steps=5, accumulate_grad_batches=3, **quiet).fit(model, loader)

    opt = torch.optim.SGD(reference.parameters(), lr=LR)
    steps = 0
    while steps < 5:
        batches = list(loader)
        for start in range(0, len(batches), 3):
            if steps == 5:
                break
            group = batches[start : start + 3]
            _reference_step(reference, opt, group, [1 / len(group)] * len(group))
            steps += 1

    per_epoch = [
        sum(1 for e, _, _ in model.seen if e == epoch) for epoch in range(len(expected_batches_per_epoch))
    ]
    assert result.global_step == 5
    assert len(model.seen) == sum(expected_batches_per_epoch)
    assert per_epoch == expected_batches_per_epoch
    assert _close(model, reference, atol=1e-6)


# -- non-finite losses ----------------------------------------------------------------------------


class StepRegressor(Regressor):
    """The same model, with its loss returned from an overridden ``training_step``."""

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return {"loss": self.compute_loss(batch)}


def _data_with_nan_batch(num_batches: int, bad_batch: int, batch_size: int = 4) -> DataLoader[Any]:
    x, y = _data(num_batches * batch_size)
    y[bad_batch * batch_size] = float("nan")
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


@pytest.mark.parametrize(("cls", "hook"), [(Regressor, "compute_loss"), (StepRegressor, "training_step")])
def test_nonfinite_loss_raises_naming_step_micro_batch_and_hook(
    quiet: dict[str, Any], cls: type[Regressor], hook: str
) -> None:
    loader = _data_with_nan_batch(num_batches=9, bad_batch=7)  # step 2 = batches 6, 7, 8
    model = cls()
    trainer = tt.Trainer(max_epochs=1, accumulate_grad_batches=3, on_nonfinite_loss="raise", **quiet)

    with pytest.raises(NonFiniteLossError) as error:
        trainer.fit(model, loader)

    message = str(error.value)
    assert "step 2" in message
    assert "micro-batch 2 of 3" in message
    assert "batch_idx 7" in message
    assert f"{cls.__name__}.{hook}" in message
    # Losses stay on the device until a step that syncs anyway: here the epoch's end (no logging
    # step came before it), which the message names too.
    assert "found at step 3" in message
    assert trainer.state.global_step == 3


@pytest.mark.parametrize("bad_batch", [3, 5])  # first and last micro-batch of step 1
def test_nonfinite_loss_skip_drops_that_step_and_keeps_counting(
    quiet: dict[str, Any], bad_batch: int
) -> None:
    loader = _data_with_nan_batch(num_batches=9, bad_batch=bad_batch)
    model = Regressor(momentum=0.9)  # momentum: a skipped step must not touch optimizer state either
    reference = copy.deepcopy(model)
    steps: list[int] = []

    class CountSteps(Callback):
        def on_before_optimizer_step(self, trainer: Any, module: Any, optimizer: Any) -> None:
            steps.append(trainer.state.global_step)

    result = tt.Trainer(
        max_epochs=1, accumulate_grad_batches=3, on_nonfinite_loss="skip", callbacks=[CountSteps()], **quiet
    ).fit(model, loader)

    batches = list(loader)
    opt = torch.optim.SGD(reference.parameters(), lr=LR, momentum=0.9)
    for start in (0, 6):  # the group with the NaN (batches 3-5) is skipped
        _reference_step(reference, opt, batches[start : start + 3], [1 / 3] * 3)

    assert result.global_step == 3  # the skipped step still counts
    assert steps == [0, 2]  # the optimizer was asked to step twice
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert _close(model, reference, atol=1e-6)
