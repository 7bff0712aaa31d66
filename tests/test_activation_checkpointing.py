"""``apply_activation_checkpointing``: same gradients, layers recomputed in backward, works in fit."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
from tasktrain.activation_checkpointing import apply_activation_checkpointing


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x):
        return x + self.down(torch.tanh(self.up(x)))


class Deep(tt.TaskModule):
    def __init__(self, checkpoint: bool = False) -> None:
        super().__init__()
        self.checkpoint = checkpoint
        self.blocks = nn.Sequential(*(Block(8) for _ in range(3)))
        self.head = nn.Linear(8, 1)

    def configure_model(self):
        if self.checkpoint:
            apply_activation_checkpointing(self, layers=Block)

    def compute_loss(self, batch):
        x, y = batch
        return nn.functional.mse_loss(self.head(self.blocks(x)), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 8, generator=g), torch.randn(16, 1, generator=g)


def _count_forwards(layer: nn.Module) -> list[int]:
    calls = [0]
    layer.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_gradients_match_and_each_layer_is_recomputed_once_in_backward():
    torch.manual_seed(0)
    plain = Deep()
    checkpointed = copy.deepcopy(plain)
    assert apply_activation_checkpointing(checkpointed, Block) == ["blocks.0", "blocks.1", "blocks.2"]
    plain_calls = _count_forwards(plain.blocks[1].up)
    checkpointed_calls = _count_forwards(checkpointed.blocks[1]._checkpoint_wrapped_module.up)

    for module in (plain, checkpointed):
        module.compute_loss(_batch()).backward()

    assert plain_calls == [1]
    assert checkpointed_calls == [2], "forward once, and once more when backward recomputes it"
    grads = dict(checkpointed.named_parameters())
    for name, param in plain.named_parameters():
        wrapped = re.sub(r"^(blocks\.\d)\.", r"\1._checkpoint_wrapped_module.", name)
        torch.testing.assert_close(grads[wrapped].grad, param.grad, atol=1e-6, rtol=0)
    assert list(checkpointed.state_dict()) == list(plain.state_dict()), "checkpoint keys are unchanged"


def test_a_predicate_selects_layers_and_nested_matches_are_wrapped_once():
    module = Deep()
    names = apply_activation_checkpointing(module, lambda m: isinstance(m, (Block, nn.Linear)))
    assert names == ["blocks.0", "blocks.1", "blocks.2", "head"]
    assert apply_activation_checkpointing(module, Block) == [], "a second call wraps nothing again"
    assert type(module.blocks[0]._checkpoint_wrapped_module) is Block


@pytest.mark.parametrize(
    ("layers", "error", "fragment"),
    [
        (nn.LSTM, ValueError, "types are ['Block', 'Deep', 'Linear', 'Sequential']"),
        ("Block", TypeError, "a module class, a tuple of module classes"),
    ],
)
def test_bad_layers_are_named(layers: Any, error: type[Exception], fragment: str):
    with pytest.raises(error, match=r"layers=") as info:
        apply_activation_checkpointing(Deep(), layers)
    assert fragment in str(info.value)


def test_fit_with_checkpointing_in_configure_model_trains_like_without(quiet):
    data = DataLoader(TensorDataset(*_batch()), batch_size=4)
    results = {}
    for checkpoint in (False, True):
        torch.manual_seed(0)
        module = Deep(checkpoint=checkpoint)
        # Registered before wrapping: still fires. (Not ``down``: the recomputation stops early once
        # it has rebuilt every saved tensor, and nothing ``down`` computes is saved.)
        calls = _count_forwards(module.blocks[2].up)
        trainer = tt.Trainer(max_epochs=2, **{**quiet, "enable_checkpointing": True})
        trainer.fit(module, data)
        results[checkpoint] = (module, calls[0])
    (plain, plain_calls), (checkpointed, checkpointed_calls) = results[False], results[True]
    assert plain_calls == 8 and checkpointed_calls == 16, "8 steps: one recomputation each"
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(checkpointed.state_dict()[name], value, atol=1e-6, rtol=0)
    loaded = Deep.load_from_checkpoint(str(next((quiet["default_root_dir"] / "checkpoints").iterdir())))
    for name, value in checkpointed.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
