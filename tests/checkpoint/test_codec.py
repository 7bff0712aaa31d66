"""State dicts as strict JSON plus tensors: every kind of plain data comes back as it was."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from tasktrain.checkpoint.codec import StateEncodingError, decode, encode


def _round_trip(state):
    tensors: dict[str, torch.Tensor] = {}
    text = json.dumps(encode(state, tensors, "demo"), allow_nan=False)  # strict JSON
    return decode(json.loads(text), load_safetensors(save_safetensors(tensors)))


def test_plain_json_stays_as_it_is():
    state = {"step": 3, "name": "x", "ok": True, "none": None, "lr": [0.1, 0.01], "nested": {"a": {"b": 1}}}
    tensors: dict[str, torch.Tensor] = {}
    assert encode(state, tensors, "demo") == state
    assert tensors == {}


def test_what_json_cannot_say_comes_back_exactly():
    state = {
        "best": math.inf,
        "worst": -math.inf,
        "python_rng": (3, tuple(range(5)), None),
        "by_int": {0: "a", 1: "b"},
        "by_tuple": {(1, 2): 0.5},
        "__tensor__": "a key that looks like a tag",
    }
    back = _round_trip(state)
    assert back == state
    assert isinstance(back["python_rng"], tuple) and isinstance(back["python_rng"][1], tuple)
    assert math.isnan(_round_trip({"v": math.nan})["v"])


def test_tensors_go_beside_the_json_and_come_back_equal():
    generator = torch.Generator().manual_seed(0)
    state = {"gen": generator.get_state(), "list": [torch.arange(3), torch.ones(2, dtype=torch.bfloat16)]}
    back = _round_trip(state)
    assert torch.equal(back["gen"], state["gen"])
    assert all(
        torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(back["list"], state["list"], strict=True)
    )


def test_anything_else_is_refused_naming_where_it_is():
    with pytest.raises(
        StateEncodingError, match=r"callbacks\.Mine\.fn holds a value of type builtin_function_or_method"
    ):
        encode({"fn": print}, {}, "callbacks.Mine")
    with pytest.raises(StateEncodingError, match=r"loop\.items\[1\] holds a value of type set"):
        encode({"items": [1, {2}]}, {}, "loop")
