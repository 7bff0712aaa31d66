"""``EMA``: equal to ``AveragedModel(multi_avg_fn=get_ema_multi_avg_fn(d))`` updated by hand at the
same steps, on one process, under DDP, FSDP and TP (gathered); validation on the averaged weights;
saved, resumed exactly, loaded and exported; no collective in the update."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import _ema
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

import tasktrain as tt
from tasktrain.callbacks import EMA
from tasktrain.checkpoint import CheckpointError
from tasktrain.strategies.launcher import spawn


def _assert_close(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], atol: float) -> None:
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert torch.allclose(got[name], value, atol=atol, rtol=0), (name, (got[name] - value).abs().max())


def _fit(
    tmp_path: Path, callbacks: list[Any], steps: int = _ema.STEPS, **kwargs: Any
) -> tuple[tt.Trainer, _ema.Regressor]:
    module = _ema.Regressor()
    trainer = tt.Trainer(
        max_steps=steps, default_root_dir=tmp_path, callbacks=callbacks, **{**_ema.QUIET, **kwargs}
    )
    trainer.fit(module, DataLoader(_ema.data(), batch_size=_ema.PER_RANK_BATCH), **kwargs.pop("fit", {}))
    return trainer, module


@pytest.mark.parametrize("every", [1, 2, 5])
def test_ema_equals_averaged_model_updated_by_hand_at_the_same_steps(tmp_path, every: int):
    ema = EMA(decay=_ema.DECAY, every_n_steps=every)
    _, module = _fit(tmp_path, [ema])
    model, averaged = _ema.reference(_ema.PER_RANK_BATCH, every=every)
    assert ema.n_averaged == _ema.STEPS // every == int(averaged.n_averaged)
    _assert_close(ema.averaged_weights(), _ema.averaged_by_name(averaged), atol=1e-7)
    _assert_close(
        dict(module.named_parameters()), {f"net.{k}": v for k, v in model.named_parameters()}, atol=1e-7
    )


def test_validate_with_ema_logs_the_loss_of_the_averaged_weights_and_trains_on_the_others(tmp_path):
    val = DataLoader(_ema.data(16, seed=1), batch_size=8)
    ema = EMA(decay=_ema.DECAY, every_n_steps=_ema.EVERY, validate_with_ema=True)
    module = _ema.Regressor()
    trainer = tt.Trainer(
        max_steps=_ema.STEPS, val_check_interval=4, callbacks=[ema], default_root_dir=tmp_path, **_ema.QUIET
    )
    trainer.fit(module, DataLoader(_ema.data(), batch_size=_ema.PER_RANK_BATCH), val)

    model, averaged = _ema.reference(_ema.PER_RANK_BATCH)
    x, y = val.dataset.tensors
    with torch.no_grad():
        expected = torch.nn.functional.mse_loss(averaged.module(x), y)
        trained = torch.nn.functional.mse_loss(model(x), y)
    assert trainer.callback_metrics["val/loss"] == pytest.approx(float(expected), abs=1e-6)
    assert abs(float(expected) - float(trained)) > 1e-3  # the two are told apart
    # Training ran on the training weights: the same as the hand-written loop.
    _assert_close(
        dict(module.named_parameters()), {f"net.{k}": v for k, v in model.named_parameters()}, atol=1e-7
    )

    plain = _ema.Regressor()
    tt.Trainer(
        max_steps=_ema.STEPS,
        val_check_interval=4,
        callbacks=[EMA(validate_with_ema=False)],
        default_root_dir=tmp_path / "p",
        **_ema.QUIET,
    ).fit(plain, DataLoader(_ema.data(), batch_size=_ema.PER_RANK_BATCH), val)
    assert plain.trainer.callback_metrics["val/loss"] == pytest.approx(float(trained), abs=1e-6)


@pytest.mark.parametrize("stop_at", [3, 7])  # inside epoch 0 and epoch 1 (6 steps per epoch)
def test_resume_with_ema_is_exact(tmp_path, stop_at: int):
    def loader() -> DataLoader:
        return DataLoader(
            _ema.data(48), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(4)
        )

    def run(steps: int, ema: EMA, module: _ema.Regressor, name: str, ckpt: str | None = None) -> tt.Trainer:
        trainer = tt.Trainer(
            max_steps=steps, seed=7, callbacks=[ema], default_root_dir=tmp_path / name, **_ema.QUIET
        )
        trainer.fit(module, loader(), ckpt_path=ckpt)
        return trainer

    full_ema, full = EMA(decay=_ema.DECAY, every_n_steps=_ema.EVERY), _ema.Regressor()
    run(10, full_ema, full, "full")
    first = run(stop_at, EMA(decay=_ema.DECAY, every_n_steps=_ema.EVERY), _ema.Regressor(), "a")
    first.save_checkpoint(str(tmp_path / "mid"))
    ema, resumed = EMA(decay=_ema.DECAY, every_n_steps=_ema.EVERY), _ema.Regressor()
    run(10, ema, resumed, "b", str(tmp_path / "mid"))

    assert ema.n_averaged == full_ema.n_averaged == 5
    for name, value in full_ema.averaged_weights().items():
        assert torch.equal(ema.averaged_weights()[name], value), name
    for name, value in full.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name


def test_load_from_checkpoint_and_export_with_ema_weights(tmp_path):
    ema = EMA(decay=_ema.DECAY, every_n_steps=_ema.EVERY)
    trainer, module = _fit(tmp_path, [ema])
    path = str(tmp_path / "ckpt")
    trainer.save_checkpoint(path)

    averaged = _ema.Regressor.load_from_checkpoint(path, weights="ema")
    _assert_close(dict(averaged.named_parameters()), ema.averaged_weights(), atol=0)
    trained = _ema.Regressor.load_from_checkpoint(path)
    _assert_close(
        dict(trained.named_parameters()), {k: v.detach() for k, v in module.named_parameters()}, atol=0
    )

    from tasktrain.cli.main import main

    assert main(["export", path, str(tmp_path / "ema.safetensors"), "--weights", "ema"]) == 0
    _assert_close(load_file(str(tmp_path / "ema.safetensors")), ema.averaged_weights(), atol=0)
    with pytest.raises(
        ValueError, match=r"load_from_checkpoint\(weights='swa'\): accepted values are \['model', 'ema'\]"
    ):
        _ema.Regressor.load_from_checkpoint(path, weights="swa")

    plain, _ = _fit(tmp_path / "plain", [])
    plain.save_checkpoint(str(tmp_path / "plain_ckpt"))
    with pytest.raises(CheckpointError, match=r"saved without the tasktrain\.callbacks\.EMA callback"):
        _ema.Regressor.load_from_checkpoint(str(tmp_path / "plain_ckpt"), weights="ema")


def test_ema_in_manual_optimization_updates_after_every_nth_training_step(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loops"))
    import _gan

    ema = EMA(decay=0.8, every_n_steps=3)
    module = _gan.GAN()
    tt.Trainer(max_steps=10, callbacks=[ema], default_root_dir=tmp_path, **_gan.QUIET).fit(
        module, DataLoader(_gan.gan_data(), batch_size=_gan.PER_RANK_BATCH)
    )
    assert ema.n_averaged == 3  # after training_steps 3, 6 and 9, whatever the two optimizers did
    generator, discriminator = _gan.nets()
    both = torch.nn.ModuleDict({"generator": generator, "discriminator": discriminator})
    averaged = torch.optim.swa_utils.AveragedModel(
        both, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.8)
    )
    for step in (3, 6, 9):  # the hand-written GAN's weights after those steps
        weights = _gan.reference(_gan.PER_RANK_BATCH, steps=step)
        with torch.no_grad():
            for name, value in weights.items():
                both.get_parameter(name).copy_(value)
        averaged.update_parameters(both)
    expected = {k: v.detach() for k, v in averaged.module.named_parameters()}
    _assert_close(ema.averaged_weights(), expected, atol=1e-7)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"decay": 1.5}, r"EMA\(decay=1.5\): must be a number in \[0, 1\]"),
        ({"every_n_steps": 0}, r"EMA\(every_n_steps=0\): must be an integer >= 1"),
        ({"validate_with_ema": "yes"}, r"EMA\(validate_with_ema='yes'\): must be True or False"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict[str, Any], match: str):
    with pytest.raises(ValueError, match=match):
        EMA(**kwargs)


# -- distributed ---------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["ddp", "fsdp", "tp"])
def ranks(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp(f"ema_{request.param}")
    outcome = spawn(_ema.distributed_scenarios, (request.param, str(root)), nprocs=_ema.WORLD_SIZE)
    return {"strategy": request.param, "root": str(root), **outcome}


def test_distributed_ema_equals_averaged_model_on_the_global_batch(ranks):
    model, averaged = _ema.reference(_ema.PER_RANK_BATCH * ranks["dp_size"])
    _assert_close(ranks["averaged"], _ema.averaged_by_name(averaged), atol=1e-7)
    # Validation (every 4 steps) ran on the averaged weights and put the training weights back.
    _assert_close(ranks["weights"], {f"net.{k}": v for k, v in model.state_dict().items()}, atol=1e-6)
    x, y = _ema.VAL.tensors
    with torch.no_grad():
        assert ranks["val_loss_True"] == pytest.approx(
            float(torch.nn.functional.mse_loss(averaged.module(x), y)), abs=1e-6
        )
        assert ranks["val_loss_False"] == pytest.approx(
            float(torch.nn.functional.mse_loss(model(x), y)), abs=1e-6
        )


def test_the_ema_update_runs_no_collective_and_adds_none_to_a_step(ranks):
    assert ranks["updates"] == _ema.STEPS // _ema.EVERY
    assert ranks["update_collectives"] == 0
    assert ranks["collectives_with_ema"] == ranks["collectives_without_ema"], ranks["events"]
    if ranks["strategy"] in ("fsdp", "tp"):  # the average is sharded like the parameters
        assert ranks["placed_like_params"] and all(ranks["placed_like_params"])  # DTensors, same placements
        assert ranks["some_local_shard_smaller"]  # each rank holds only its shards


def test_the_averaged_weights_load_and_export_from_each_strategys_checkpoint(ranks, tmp_path):
    """Under FSDP and TP the checkpoint is DCP shards; the average is in its states, as full tensors."""
    _, averaged = _ema.reference(_ema.PER_RANK_BATCH * ranks["dp_size"])
    expected = _ema.averaged_by_name(averaged)
    path = f"{ranks['root']}/final"
    assert (Path(path) / "sharded").is_dir() == (ranks["strategy"] in ("fsdp", "tp"))
    loaded = _ema.Regressor.load_from_checkpoint(path, weights="ema")
    _assert_close({k: v.detach() for k, v in loaded.named_parameters()}, expected, atol=1e-7)
    from tasktrain.cli.main import main

    assert main(["export", path, str(tmp_path / "ema.safetensors"), "--weights", "ema"]) == 0
    _assert_close(load_file(str(tmp_path / "ema.safetensors")), expected, atol=1e-7)


def test_distributed_resume_with_ema_is_exact(ranks):
    full, resumed = ranks["resume"]["full"], ranks["resume"]["resumed"]
    assert full["n"] == resumed["n"] == _ema.STEPS // _ema.EVERY
    for key in ("averaged", "weights"):
        for name, value in full[key].items():
            assert torch.equal(resumed[key][name], value), (key, name)


def test_deepspeed_zero3_partitions_are_refused_with_what_to_use(tmp_path):
    pytest.importorskip("deepspeed")
    with pytest.raises(
        Exception, match="partitioned by DeepSpeed ZeRO-3, whose partitions EMA cannot average"
    ):
        spawn(_ema.deepspeed_stage3, (str(tmp_path),), nprocs=_ema.WORLD_SIZE)
