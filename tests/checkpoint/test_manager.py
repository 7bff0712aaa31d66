"""The checkpoint manager saves and loads a ``{name: Stateful}`` mapping through a strategy, and
knows nothing else: no Trainer, no loops."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

import tasktrain.checkpoint as checkpoint_package
from tasktrain.checkpoint import codec, manager, read_state
from tasktrain.strategies import SingleDevice

CHECKPOINT_SOURCES = sorted(Path(checkpoint_package.__file__).parent.glob("*.py"))


def test_the_checkpoint_package_names_no_trainer_or_loop_attribute():
    """It reads no ``trainer.*`` and no loop attribute, and imports neither (format_version 1's key
    names in legacy.py are strings of a file format, not attributes)."""
    for source in CHECKPOINT_SOURCES:
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                assert node.attr not in {"fit_loop", "epoch_loop", "_optim", "callbacks"}, (
                    source.name,
                    node.lineno,
                )
                assert not (isinstance(node.value, ast.Name) and node.value.id == "trainer"), source.name
            if isinstance(node, ast.ImportFrom):
                assert node.module not in {"tasktrain.trainer", "tasktrain.loops"}, source.name
                assert not (node.module or "").startswith("tasktrain.loops"), source.name


class Counter:
    """A Stateful that is no part of tasktrain: a count and a tensor."""

    def __init__(self, count: int = 0) -> None:
        self.count = count
        self.buffer = torch.zeros(3)

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "buffer": self.buffer, "best": float("inf")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count, self.buffer = state["count"], state["buffer"].clone()
        assert state["best"] == float("inf")


def test_any_mapping_of_statefuls_round_trips_with_the_module_and_optimizer(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(module.parameters(), lr=0.1)
    module(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    saved = Counter(7)
    saved.buffer += torch.arange(3)
    path = str(tmp_path / "ckpt")
    manager.save(
        path,
        {"mine": saved, "other": Counter(1)},
        module,
        [optimizer],
        SingleDevice("cpu"),
        {"global_step": 1},
    )

    torch.manual_seed(1)
    fresh_module = torch.nn.Linear(3, 2)
    fresh_optimizer = torch.optim.AdamW(fresh_module.parameters(), lr=0.5)
    loaded, untouched = Counter(), Counter(5)
    everything = manager.load(
        path, {"mine": loaded, "new": untouched}, fresh_module, [fresh_optimizer], SingleDevice("cpu")
    )

    assert loaded.count == 7 and torch.equal(loaded.buffer, saved.buffer)
    assert untouched.count == 5  # not in the checkpoint: left as it is
    assert set(everything) == {"mine", "other"}  # every saved state is handed back
    for a, b in zip(module.parameters(), fresh_module.parameters(), strict=True):
        assert torch.equal(a, b)
    assert fresh_optimizer.param_groups[0]["lr"] == 0.1
    expected = optimizer.state_dict()["state"]
    for index, state in fresh_optimizer.state_dict()["state"].items():
        assert torch.equal(state["exp_avg"], expected[index]["exp_avg"])
    assert read_state(path)["states"]["mine"]["best"] == {"__float__": "inf"}


def test_states_of_other_ranks_are_kept_only_where_they_differ_from_rank_0(tmp_path):
    """Rank 1's RNG differs from rank 0's, its loop state does not: only the RNG is stored for it."""

    def rank(rng_seed: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        tensors: dict[str, torch.Tensor] = {}
        states = {
            "loop": {"step": 4},
            "rng": {"torch_cpu": torch.Generator().manual_seed(rng_seed).get_state()},
        }
        return {name: codec.encode(value, tensors, name) for name, value in states.items()}, tensors

    tensors, metadata = manager._rank_states([rank(0), rank(1), rank(0)])
    assert json.loads(metadata["rank_states"]).keys() == {"1"}  # rank 2 equals rank 0 entirely
    assert set(json.loads(metadata["rank_states"])["1"]) == {"rng"}
    assert set(tensors) == {"0.0", "1.0"}
    path = tmp_path / "states.safetensors"
    from safetensors.torch import save_file

    save_file(tensors, path, metadata=metadata)
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == {"0.0", "1.0"}
