"""The best checkpoint: ``ckpt_path="best"``, ``ModelCheckpoint(restore_best=True)`` and
``FitResult.best_model_path``, checked against a hand-made sequence of validation losses."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

import tasktrain as tt
from _scripted import ScriptedVal, WeightsAtValidation, data, loader
from tasktrain.callbacks import ModelCheckpoint

STEPS_PER_EPOCH = 8  # 32 samples, batch 4


def _fit(
    tmp_path: Path, losses: tuple[float, ...], mode: str = "min", **checkpoint_args: Any
) -> tuple[ScriptedVal, tt.Trainer, ModelCheckpoint, WeightsAtValidation, tt.FitResult]:
    torch.manual_seed(0)
    module = ScriptedVal(losses)
    checkpoint = ModelCheckpoint(monitor="val/loss", mode=mode, save_top_k=1, **checkpoint_args)
    weights = WeightsAtValidation()
    trainer = tt.Trainer(
        max_epochs=len(losses),
        callbacks=[weights, checkpoint],
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        accelerator="cpu",
    )
    result = trainer.fit(module, loader(), val_dataloaders=loader(8, seed=1))
    return module, trainer, checkpoint, weights, result


def _assert_equal(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(actual[name], value), name


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


SEQUENCES = [((0.9, 0.5, 0.7, 0.6), "min", 1), ((0.2, 0.3, 0.8, 0.1), "max", 2)]


@pytest.mark.parametrize(("losses", "mode", "best_epoch"), SEQUENCES, ids=["min", "max"])
def test_the_best_checkpoint_is_the_one_whose_monitored_value_was_best(tmp_path, losses, mode, best_epoch):
    _, trainer, checkpoint, weights, result = _fit(tmp_path, losses, mode)
    best_step = (best_epoch + 1) * STEPS_PER_EPOCH

    assert sorted(weights.by_step) == [STEPS_PER_EPOCH * (e + 1) for e in range(len(losses))]
    assert checkpoint.best is not None and checkpoint.best["step"] == best_step
    assert checkpoint.best_model_score == losses[best_epoch]
    assert result.best_model_path == checkpoint.best_model_path == checkpoint.best["path"]
    assert result.best_model_score == losses[best_epoch]
    assert Path(result.best_model_path).name == f"step={best_step:08d}"

    # validate(ckpt_path="best") loads exactly the weights the module had at that validation.
    fresh = ScriptedVal(losses)
    trainer.validate(fresh, loader(8, seed=1), ckpt_path="best")
    _assert_equal(_weights(fresh), weights.by_step[best_step])


def test_test_and_predict_with_best_match_a_plain_pytorch_evaluation_of_the_best_weights(tmp_path):
    _, trainer, _, weights, _ = _fit(tmp_path, (0.9, 0.5, 0.7, 0.6))
    reference = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    reference.load_state_dict({k.removeprefix("net."): v for k, v in weights.by_step[16].items()})
    x, y = data(12, seed=2).tensors
    with torch.no_grad():
        expected_loss = torch.nn.functional.mse_loss(reference(x), y).item()
        expected_outputs = reference(x)

    metrics = trainer.test(ScriptedVal(), loader(12, seed=2), ckpt_path="best")[0]
    assert metrics["test/loss"] == pytest.approx(expected_loss, rel=1e-6)
    outputs = trainer.predict(ScriptedVal(), loader(12, seed=2), ckpt_path="best")
    assert torch.allclose(torch.cat(outputs), expected_outputs, atol=1e-7)


def test_restore_best_leaves_the_module_with_the_best_weights_and_saves_the_last_one_first(tmp_path):
    module, _, checkpoint, weights, result = _fit(tmp_path, (0.9, 0.5, 0.7, 0.6), restore_best=True)
    final_step = 4 * STEPS_PER_EPOCH
    _assert_equal(_weights(module), weights.by_step[16])
    assert not all(torch.equal(weights.by_step[16][k], v) for k, v in weights.by_step[final_step].items())
    # The checkpoint saved at the end of fit holds the final weights, not the restored ones.
    assert checkpoint.last is not None and checkpoint.last.endswith(f"step={final_step:08d}")
    _assert_equal(_weights(ScriptedVal.load_from_checkpoint(checkpoint.last)), weights.by_step[final_step])
    assert result.best_model_score == 0.5


def test_restore_best_without_a_scored_checkpoint_warns_and_keeps_the_final_weights(tmp_path):
    with pytest.warns(UserWarning, match=r"restore_best=True, monitor='val/loss'.*keeps its final weights"):
        module, _, _, weights, result = _fit(tmp_path, (math.nan, math.nan), restore_best=True)
    _assert_equal(_weights(module), weights.by_step[2 * STEPS_PER_EPOCH])
    assert result.best_model_path is None and result.best_model_score is None


def test_restore_best_needs_a_monitor():
    with pytest.raises(ValueError, match=r"restore_best=True\) needs monitor="):
        ModelCheckpoint(restore_best=True)
    with pytest.raises(TypeError, match="restore_best='yes'"):
        ModelCheckpoint(monitor="val/loss", restore_best="yes")  # type: ignore[arg-type]


def test_ckpt_path_best_explains_what_is_missing(quiet, tmp_path):
    val = loader(8, seed=1)
    with pytest.raises(
        ValueError, match=r"Trainer.validate\(ckpt_path='best'\): the Trainer has no ModelCheckpoint"
    ):
        tt.Trainer(**quiet).validate(ScriptedVal(), val, ckpt_path="best")
    default = tt.Trainer(
        **{**quiet, "enable_checkpointing": True}
    )  # the default ModelCheckpoint monitors nothing
    with pytest.raises(
        ValueError, match=r"Trainer.test\(ckpt_path='best'\): no ModelCheckpoint monitors a metric"
    ):
        default.test(ScriptedVal(), val, ckpt_path="best")
    unfitted = tt.Trainer(callbacks=[ModelCheckpoint(monitor="val/loss")], **quiet)
    with pytest.raises(
        FileNotFoundError, match=r"monitor='val/loss'\) has saved no checkpoint with a score yet"
    ):
        unfitted.predict(ScriptedVal(), val, ckpt_path="best")
    with pytest.raises(ValueError, match=r"fit\(ckpt_path='best'\): 'best' is for validate/test/predict"):
        unfitted.fit(ScriptedVal(), loader(), ckpt_path="best")


def test_fit_result_names_no_best_checkpoint_without_a_monitor(quiet):
    result = tt.Trainer(max_steps=2, **{**quiet, "enable_checkpointing": True}).fit(ScriptedVal(), loader())
    assert result.best_model_path is None and result.best_model_score is None
