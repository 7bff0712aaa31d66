"""``Trainer(compile=...)`` and ``apply_compile``: compiled code runs, and trains like eager code."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
from tasktrain.compile import CompiledForward, apply_compile


class Recorder:
    """A real torch.compile backend: records every graph Dynamo hands it, then runs it as traced."""

    def __init__(self) -> None:
        self.graphs: list[torch.fx.GraphModule] = []
        self.calls = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        self.graphs.append(gm)

        def run(*args: Any) -> Any:
            self.calls += 1
            return gm.forward(*args)

        return run


class Blocks(tt.TaskModule):
    """The loss is computed in compute_loss from submodules, never through ``self(...)``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(16, 16), nn.Tanh()) for _ in range(2)])
        self.head = nn.Linear(16, 1)
        self.loss_fn = nn.MSELoss()

    def compute_loss(self, batch):
        x, y = batch
        h = self.embed(x)
        for block in self.blocks:
            h = h + block(h)
        return self.loss_fn(self.head(h), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class StepLosses(tt.callbacks.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_before_backward(self, trainer, module, loss):
        self.losses.append(loss.item())


def _data() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(
        TensorDataset(torch.randn(48, 6, generator=g), torch.randn(48, 1, generator=g)), batch_size=8
    )


def _fit(quiet: dict[str, Any], compile: Any) -> tuple[Blocks, list[float]]:
    torch.manual_seed(0)
    module, steps = Blocks(), StepLosses()
    tt.Trainer(max_epochs=2, accumulate_grad_batches=2, compile=compile, callbacks=[steps], **quiet).fit(
        module, _data()
    )
    return module, steps.losses


def test_compiled_training_runs_compiled_graphs_and_matches_eager(quiet):
    eager_module, eager_losses = _fit(quiet, compile=False)
    backend = Recorder()
    compiled_module, compiled_losses = _fit(quiet, compile={"backend": backend})

    assert backend.graphs, "torch.compile never handed a graph to the backend"
    traced = "\n".join(gm.code for gm in backend.graphs)
    assert "linear" in traced and "tanh" in traced
    assert backend.calls >= 2 * 12, "every micro-batch must run through the compiled graphs"
    assert compiled_losses == pytest.approx(eager_losses, abs=1e-6)
    for name, value in eager_module.state_dict().items():
        torch.testing.assert_close(compiled_module.state_dict()[name], value, atol=1e-6, rtol=0)


def test_eager_backend_is_captured_by_dynamo(quiet):
    from torch._dynamo.utils import counters

    counters.clear()
    _, losses = _fit(quiet, compile={"backend": "eager"})
    assert counters["stats"]["calls_captured"] > 0
    _, eager_losses = _fit(quiet, compile=False)
    assert losses == pytest.approx(eager_losses, abs=1e-6)


def test_apply_compile_picks_children_with_parameters_and_keeps_names():
    module = Blocks()
    keys = list(module.state_dict())
    assert apply_compile(module, {"backend": "eager"}) == ["embed", "blocks.0", "blocks.1", "head"]
    assert list(module.state_dict()) == keys
    assert "forward" not in module.loss_fn.__dict__, "a module without parameters is left alone"
    first = module.head.forward
    apply_compile(module, {"backend": "eager", "dynamic": False})  # recompiling does not nest
    assert isinstance(module.head.forward, CompiledForward)
    assert module.head.forward.forward is first.forward
    assert module.head.forward.options == {"backend": "eager", "dynamic": False}


def test_a_module_without_submodules_is_refused(quiet):
    class Bare(tt.TaskModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(6, 1))

        def compute_loss(self, batch):
            return (batch[0] @ self.w - batch[1]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = tt.Trainer(max_steps=1, compile={"backend": "eager"}, **quiet)
    with pytest.raises(ValueError, match="Bare has no submodule with parameters to compile"):
        trainer.fit(Bare(), _data())


def test_a_compiled_run_saves_checkpoints_that_load_into_a_fresh_module(quiet, tmp_path):
    torch.manual_seed(0)
    module = Blocks()
    trainer = tt.Trainer(max_steps=3, compile={"backend": "eager"}, **{**quiet, "enable_checkpointing": True})
    trainer.fit(module, _data())
    path = str(tmp_path / "ckpt")
    trainer.save_checkpoint(path)
    loaded = Blocks.load_from_checkpoint(path)
    for name, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_many_differently_shaped_submodules_each_get_their_own_graph():
    """All submodules compile one function; sharing its cache would hit the recompile limit (8)."""
    from torch._dynamo.utils import counters

    chain = nn.Sequential(*(nn.Linear(width, width + 1) for width in range(2, 13)))
    apply_compile(chain, {"backend": "eager"})
    counters.clear()
    h = torch.randn(3, 2)
    for layer in chain:
        h = layer(h)
    assert counters["stats"]["unique_graphs"] == len(chain) == 11


def test_children_with_hooked_members_are_compiled_member_by_member():
    """Dynamo breaks graphs at module hooks (FSDP2 units, ZeRO-3), so hooked members get their own."""
    module = Blocks()
    calls: list[str] = []
    module.blocks[1][0].register_forward_pre_hook(lambda m, args: calls.append("hook"))
    assert apply_compile(module, {"backend": "eager"}) == ["embed", "blocks.0", "blocks.1.0", "head"]
    module.compute_loss((torch.randn(2, 6), torch.randn(2, 1)))
    assert calls == ["hook"], "the hook still runs, outside the compiled graph"
