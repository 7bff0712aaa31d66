"""Name-keyed optimizer state of a plain module: the layout DCP writes, without DCP's copies or zero state."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

from tasktrain.strategies.named_optim import is_plain, load_named_state_dict, named_state_dict


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 4)
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, 7, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.body(self.embed(tokens))))


def _adamw(net: Tied) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        [{"params": [net.embed.weight]}, {"params": [net.body.weight, net.body.bias], "lr": 0.05}],
        lr=0.01,
        weight_decay=0.1,
    )


def _step(net: Tied, opt: torch.optim.Optimizer, seed: int) -> None:
    tokens = torch.randint(0, 7, (3, 5), generator=torch.Generator().manual_seed(seed))
    net(tokens).square().mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _trained() -> tuple[Tied, torch.optim.AdamW]:
    torch.manual_seed(0)
    net = Tied()
    opt = _adamw(net)
    for seed in range(3):
        _step(net, opt, seed)
    return net, opt


def test_the_layout_is_the_one_dcp_writes():
    net, opt = _trained()
    ours = named_state_dict(net, opt)
    theirs = get_optimizer_state_dict(
        net, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    assert ours["param_groups"] == theirs["param_groups"]
    assert ours["state"].keys() == theirs["state"].keys()
    for name, state in theirs["state"].items():
        assert state.keys() == ours["state"][name].keys()
        for key, value in state.items():
            assert torch.equal(ours["state"][name][key], value)


def test_cpu_state_is_not_copied():
    net, opt = _trained()
    saved = named_state_dict(net, opt)
    live = opt.state[net.body.weight]["exp_avg"]
    assert saved["state"]["body.weight"]["exp_avg"].data_ptr() == live.data_ptr()


def test_a_stateless_optimizer_gets_no_state_and_no_gradients():
    net = Tied()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    saved = named_state_dict(net, opt)
    assert saved["state"] == {}
    assert saved["param_groups"][0]["params"] == ["embed.weight", "body.weight", "body.bias"]
    assert not opt.state
    assert all(p.grad is None for p in net.parameters())


def test_a_loaded_state_continues_exactly_and_keeps_the_loaded_tensors():
    net, opt = _trained()
    saved = named_state_dict(net, opt)
    copy = Tied()
    copy.load_state_dict(net.state_dict())
    fresh = _adamw(copy)
    loaded = {name: {k: v.clone() for k, v in s.items()} for name, s in saved["state"].items()}
    load_named_state_dict(copy, fresh, {"state": loaded, "param_groups": saved["param_groups"]})
    assert fresh.state[copy.body.weight]["exp_avg"] is loaded["body.weight"]["exp_avg"]  # no second copy
    assert [g["lr"] for g in fresh.param_groups] == [0.01, 0.05]
    for seed in range(3, 6):
        _step(net, opt, seed)
        _step(copy, fresh, seed)
    for a, b in zip(net.parameters(), copy.parameters(), strict=True):
        assert torch.equal(a, b)


def test_groups_are_matched_by_parameter_not_by_position():
    net, opt = _trained()
    saved = named_state_dict(net, opt)
    copy = Tied()
    swapped = torch.optim.AdamW(
        [{"params": [copy.body.weight, copy.body.bias]}, {"params": [copy.embed.weight]}], lr=0.3
    )
    load_named_state_dict(copy, swapped, saved)
    assert [g["lr"] for g in swapped.param_groups] == [0.05, 0.01]
    assert torch.equal(swapped.state[copy.embed.weight]["exp_avg"], opt.state[net.embed.weight]["exp_avg"])


def test_a_parameter_the_checkpoint_does_not_hold_is_named():
    net, opt = _trained()
    saved = named_state_dict(net, opt)
    saved["param_groups"][1]["params"].remove("body.bias")
    copy = Tied()
    with pytest.raises(ValueError, match=r"body\.bias"):
        load_named_state_dict(copy, _adamw(copy), saved)


def test_renamed_or_distributed_parameters_are_not_plain():
    assert is_plain(Tied())

    class Compiled(nn.Module):  # what torch.compile's wrapper looks like to named_parameters()
        def __init__(self) -> None:
            super().__init__()
            self._orig_mod = Tied()

    assert not is_plain(Compiled())


def test_an_optimizer_before_its_first_step_is_saved_as_it_is():
    net = Tied()
    opt = _adamw(net)
    assert named_state_dict(net, opt)["state"] == {}
    assert not opt.state  # DCP's helper would have stepped it once with zero gradients (step=1)
