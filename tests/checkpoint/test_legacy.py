"""Checkpoints written by earlier releases still load and resume exactly (fixtures in ``legacy/``).

The fixtures were saved by tasktrain with checkpoint format_version 1, from the run in
``legacy/scenario.py``: one inside an epoch (step 3), one at an epoch end (step 5). Resuming
them must give what the uninterrupted run gives today, bit for bit.
"""

from __future__ import annotations

import shutil

import pytest
import scenario  # tests/checkpoint/legacy/scenario.py, on sys.path through conftest.py
import torch

from tasktrain.checkpoint import read_state


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, torch.Tensor]:
    module, _ = scenario.fit(tmp_path_factory.mktemp("reference"), scenario.TOTAL_STEPS)
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("fixture", sorted(scenario.V1))
def test_a_format_1_checkpoint_resumes_exactly(tmp_path, uninterrupted, fixture):
    path = tmp_path / "ckpt"
    shutil.copytree(scenario.FIXTURES / fixture, path)
    assert read_state(str(path))["format_version"] == 1
    module, trainer = scenario.fit(tmp_path / "run", scenario.TOTAL_STEPS, ckpt_path=str(path), seed=99)
    assert trainer.state.global_step == scenario.TOTAL_STEPS
    differ = [k for k, v in uninterrupted.items() if not torch.equal(v, module.state_dict()[k])]
    assert not differ, f"parameters differ from the uninterrupted run: {differ}"


@pytest.mark.parametrize("fixture", sorted(scenario.V1))
def test_a_format_1_checkpoint_loads_its_weights(tmp_path, fixture):
    path = str(scenario.FIXTURES / fixture)
    module = scenario.LegacyNet.load_from_checkpoint(path)
    assert module.hparams == {"hidden": 8}
    torch.manual_seed(0)
    fresh = scenario.LegacyNet()
    assert not torch.equal(module.net[0].weight, fresh.net[0].weight)  # trained weights, not a new model


def test_resuming_writes_the_current_format(tmp_path):
    shutil.copytree(scenario.FIXTURES / "v1/mid-epoch", tmp_path / "ckpt")
    _, trainer = scenario.fit(tmp_path / "run", 4, ckpt_path=str(tmp_path / "ckpt"), seed=99)
    last = trainer.callbacks[[type(cb).__name__ for cb in trainer.callbacks].index("ModelCheckpoint")].last
    assert read_state(last)["format_version"] == 2


def test_a_format_1_fsdp_checkpoint_resumes_exactly_under_fsdp(tmp_path):
    """DCP shards of model and optimizer written by version 1 on 2 ranks, resumed on 2 ranks."""
    ((fixture, _),) = scenario.V1_FSDP.items()
    path = tmp_path / "ckpt"
    shutil.copytree(scenario.FIXTURES / fixture, path)
    assert read_state(str(path))["format_version"] == 1
    fsdp = {"strategy": "fsdp", "devices": 2, "trainer_seed": 0}  # the ranks' RNGs seeded, as when saved
    full, _ = scenario.fit(tmp_path / "full", scenario.TOTAL_STEPS, **fsdp)
    resumed, trainer = scenario.fit(
        tmp_path / "run", scenario.TOTAL_STEPS, ckpt_path=str(path), seed=99, **fsdp
    )
    assert trainer.state.global_step == scenario.TOTAL_STEPS
    for name, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
