"""optim: every return form of ``configure_optimizers``, and the refusal of several optimizers
under automatic optimization; checkpoints keep several optimizers and schedulers by position."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
from tasktrain.checkpoint import manager
from tasktrain.checkpoint.errors import CheckpointError
from tasktrain.optim import parse_optimizers
from tasktrain.strategies import SingleDevice

QUIET: dict[str, Any] = dict(logger=False, enable_progress_bar=False, enable_checkpointing=False)


def _two_nets() -> tuple[nn.Linear, nn.Linear]:
    torch.manual_seed(0)
    return nn.Linear(2, 2), nn.Linear(2, 1)


def test_a_list_of_optimizers_keeps_their_order():
    a, b = _two_nets()
    opt_a, opt_b = torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.Adam(b.parameters())
    setup = parse_optimizers([opt_a, opt_b])
    assert setup.optimizers == [opt_a, opt_b] and setup.schedulers == []
    assert parse_optimizers((opt_b, opt_a)).optimizers == [opt_b, opt_a]  # a tuple of two optimizers too


def test_a_list_of_dicts_binds_each_scheduler_to_its_optimizer():
    a, b = _two_nets()
    opt_a, opt_b = torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.SGD(b.parameters(), lr=0.2)
    sched_a = torch.optim.lr_scheduler.StepLR(opt_a, 1)
    sched_b = torch.optim.lr_scheduler.StepLR(opt_b, 1)
    setup = parse_optimizers(
        [
            {"optimizer": opt_a, "lr_scheduler": sched_a},
            {"optimizer": opt_b, "lr_scheduler": {"scheduler": sched_b, "interval": "step"}},
        ]
    )
    assert [c.optimizer for c in setup.configs] == [opt_a, opt_b]
    assert [[s.scheduler for s in c.schedulers] for c in setup.configs] == [[sched_a], [sched_b]]
    assert [s.interval for s in setup.schedulers] == ["epoch", "step"]
    opt_b.step()
    setup.after_optimizer_step(1, index=1)  # only optimizer 1's step-interval scheduler steps
    assert opt_a.param_groups[0]["lr"] == 0.1 and opt_b.param_groups[0]["lr"] == pytest.approx(0.02)


def test_lightnings_two_lists_bind_schedulers_by_the_optimizer_they_were_built_on():
    a, b = _two_nets()
    opt_a, opt_b = torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.SGD(b.parameters(), lr=0.2)
    sched_b = torch.optim.lr_scheduler.StepLR(opt_b, 1)
    setup = parse_optimizers(([opt_a, opt_b], [sched_b]))
    assert [[s.scheduler for s in c.schedulers] for c in setup.configs] == [[], [sched_b]]
    other = torch.optim.SGD(a.parameters(), lr=1.0)
    with pytest.raises(
        ValueError, match=r"scheduler 0 \(StepLR\) was built on an optimizer that is not among"
    ):
        parse_optimizers(([opt_a], [torch.optim.lr_scheduler.StepLR(other, 1)]))


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ("sgd", TypeError, "got str"),
        ([], TypeError, "got list"),
        ([1, 2, 3], TypeError, r"got a list of \(int, int, int\)"),
        ({"optimizer": "sgd"}, TypeError, "'optimizer' is str"),
    ],
)
def test_bad_forms_name_what_was_returned_and_what_is_accepted(value: Any, error: type, match: str):
    with pytest.raises(error, match=match) as info:
        parse_optimizers(value)
    assert "a list of optimizers" in str(info.value) or "'optimizer' is" in str(info.value)


class TwoOptimizers(tt.TaskModule):
    """Two optimizers under automatic optimization: refused, pointing to manual optimization."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = _two_nets()

    def compute_loss(self, batch: Any) -> torch.Tensor:
        return self.b(self.a(batch[0])).pow(2).mean()

    def configure_optimizers(self) -> Any:
        return [torch.optim.SGD(self.a.parameters(), lr=0.1), torch.optim.SGD(self.b.parameters(), lr=0.1)]


def test_two_optimizers_with_automatic_optimization_point_to_manual_optimization():
    loader = DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)
    with pytest.raises(ValueError) as info:
        tt.Trainer(max_steps=1, **QUIET).fit(TwoOptimizers(), loader)
    message = str(info.value)
    assert "TwoOptimizers.configure_optimizers() returned 2 optimizers" in message
    assert "automatic_optimization = False" in message
    assert (
        "Several optimizers and manual optimization" in message and "docs/concepts/optimization.md" in message
    )
    assert "lr_scheduler must be" not in message  # the old, misleading reading as (optimizer, scheduler)


def test_a_checkpoint_with_another_number_of_optimizers_is_refused_naming_both(tmp_path):
    a, b = _two_nets()
    module = nn.Sequential(a, b)
    strategy = SingleDevice("cpu")
    opts = [torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.Adam(b.parameters(), lr=0.1)]
    module(torch.randn(3, 2)).sum().backward()
    for opt in opts:
        opt.step()
    path = str(tmp_path / "ckpt")
    manager.save(path, {}, module, opts, strategy, {"global_step": 1, "epoch": 0, "hparams": {}})

    fresh = [torch.optim.SGD(a.parameters(), lr=0.5), torch.optim.Adam(b.parameters(), lr=0.5)]
    manager.load(path, {}, module, fresh, strategy)  # same count: restored by position
    assert [o.param_groups[0]["lr"] for o in fresh] == [0.1, 0.1]
    assert torch.equal(fresh[1].state[b.weight]["exp_avg"], opts[1].state[b.weight]["exp_avg"])
    with pytest.raises(
        CheckpointError,
        match=r"state of 2 optimizer\(s\), but this run's configure_optimizers\(\) returned 1",
    ):
        manager.load(path, {}, module, fresh[:1], strategy)
