"""``ModelCheckpoint``: save cadence, file names, and the two retention policies (newest N, best k)."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
import tasktrain.callbacks.checkpoint as checkpoint_module
from tasktrain.callbacks import ModelCheckpoint
from tasktrain.checkpoint import find_last, is_complete, read_state

NAN = math.nan
STEPS_PER_EPOCH = 2  # 4 samples in batches of 2


class Scored(tt.TaskModule):
    """Validation logs ``val/score`` from a fixed sequence, indexed by epoch or by step."""

    def __init__(self, scores: list[float] | dict[int, float], by: str = "epoch") -> None:
        super().__init__()
        self.scores = scores
        self.by = by
        self.net = torch.nn.Linear(2, 1)
        self.clock: SimpleNamespace | None = None

    def compute_loss(self, batch):
        if self.clock is not None:
            self.clock.now += 1.0  # one simulated second per optimizer step
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        index = self.current_epoch if self.by == "epoch" else self.global_step
        self.log("val/score", float(self.scores[index]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loaders() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(4, 2, generator=g), torch.randn(4, 1, generator=g))
    return DataLoader(ds, batch_size=2), DataLoader(ds, batch_size=4)


def _fit(
    root: Path,
    ckpt: ModelCheckpoint,
    scores: Any = (0.0,) * 50,
    ckpt_path: str | None = None,
    by: str = "epoch",
    clock: SimpleNamespace | None = None,
    **trainer_args: Any,
) -> tt.Trainer:
    module = Scored(scores, by)
    module.clock = clock
    args: dict[str, Any] = dict(
        logger=False, enable_progress_bar=False, accelerator="cpu", default_root_dir=root
    )
    trainer = tt.Trainer(callbacks=[ckpt], **{**args, **trainer_args})
    trainer.fit(module, *_loaders(), ckpt_path=ckpt_path)
    return trainer


def _kept(dirpath: Path) -> list[int]:
    """The steps of the checkpoint directories left in ``dirpath`` (all of them complete)."""
    names = sorted(p.name for p in dirpath.iterdir())
    assert all(".tmp-" not in name for name in names), names
    assert all(is_complete(str(dirpath / name)) for name in names)
    return sorted(read_state(str(dirpath / name))["global_step"] for name in names)


def _epoch_end_steps(*epochs: int) -> list[int]:
    return sorted(STEPS_PER_EPOCH * (e + 1) for e in epochs)


# -- cadence ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("save_last, expected", [(False, [3, 6, 9]), (True, [3, 6, 9, 10])])
def test_every_n_train_steps(tmp_path, save_last, expected):
    ckpt = ModelCheckpoint(
        dirpath=str(tmp_path / "ckpt"),
        every_n_train_steps=3,
        every_n_epochs=None,
        save_last=save_last,
        keep_last=None,
    )
    _fit(tmp_path, ckpt, max_steps=10)
    assert _kept(tmp_path / "ckpt") == expected
    assert [entry["step"] for entry in ckpt.saved] == expected


def test_every_n_epochs(tmp_path):
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_epochs=2, save_last=True, keep_last=None)
    _fit(tmp_path, ckpt, max_epochs=5)
    assert _kept(tmp_path / "ckpt") == [4, 8, 10]  # epochs 1 and 3, then the end of fit


@pytest.mark.parametrize("interval", [2.5, timedelta(seconds=2.5)], ids=["seconds", "timedelta"])
def test_train_time_interval(tmp_path, monkeypatch, interval):
    clock = SimpleNamespace(now=100.0)
    monkeypatch.setattr(checkpoint_module, "time", SimpleNamespace(monotonic=lambda: clock.now))
    ckpt = ModelCheckpoint(
        dirpath=str(tmp_path / "ckpt"),
        train_time_interval=interval,
        every_n_epochs=None,
        save_last=False,
        keep_last=None,
    )
    _fit(tmp_path, ckpt, clock=clock, max_steps=10)
    assert _kept(tmp_path / "ckpt") == [3, 6, 9]  # 3 s since the start, then since each save


def test_the_default_checkpoint_saves_every_epoch_and_at_the_end(tmp_path):
    trainer = tt.Trainer(
        max_steps=5, logger=False, enable_progress_bar=False, accelerator="cpu", default_root_dir=tmp_path
    )
    trainer.fit(Scored([0.0] * 5), *_loaders())
    (ckpt,) = [cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)]
    assert [e["step"] for e in ckpt.saved] == [5]  # keep_last=1: epochs 0 and 1 ended at steps 2 and 4
    assert _kept(tmp_path / "checkpoints") == [5]


# -- names -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "template, expected",
    [
        ("step={step:08d}-{val/score:.2f}", ["step=00000002-0.50", "step=00000004-0.25"]),
        (
            "epoch={epoch}-step={step}-score={val_score:.1f}",
            ["epoch=0-step=2-score=0.5", "epoch=1-step=4-score=0.2"],
        ),
    ],
)
def test_filename_template_with_metrics(tmp_path, template, expected):
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), filename=template, keep_last=None)
    _fit(tmp_path, ckpt, scores=[0.5, 0.25], max_epochs=2)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == expected
    assert find_last(str(tmp_path)) == str(tmp_path / "ckpt" / expected[-1])


def test_filename_with_an_unlogged_metric_names_it(tmp_path):
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), filename="step={step}-{val/acc:.2f}")
    with pytest.raises(KeyError, match=r"val/acc.*logged: \[.*'val/score'"):
        _fit(tmp_path, ckpt, max_epochs=1)


# -- a monitor that was never logged ---------------------------------------------------------------
def test_a_monitor_typo_fails_at_the_first_save_after_validation_with_the_close_match(tmp_path):
    """``val_score`` while ``val/score`` is logged used to rank nothing and say nothing."""
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), monitor="val_score", save_top_k=1)
    trainer = tt.Trainer(
        max_epochs=3, callbacks=[ckpt], logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    with pytest.raises(KeyError) as info:
        trainer.fit(Scored([0.0] * 3), *_loaders())
    assert str(info.value) == (
        "ModelCheckpoint: monitor='val_score' was not logged; logged metrics: "
        "['train/loss', 'val/score']; did you mean 'val/score'?"
    )
    assert trainer.state.global_step == _epoch_end_steps(0)[0]  # the first epoch-end save
    # Nothing saved without its score (the directory itself is created and probed at fit start).
    assert list((tmp_path / "ckpt").iterdir()) == [] and ckpt.saved == []


def test_step_checkpoints_before_the_first_validation_have_no_score_and_no_error(tmp_path):
    """Steps 1 and 2 save before the epoch-end validation: the monitor is not logged *yet*."""
    ckpt = ModelCheckpoint(
        dirpath=str(tmp_path / "ckpt"), every_n_train_steps=1, monitor="val/score", keep_last=None
    )
    _fit(tmp_path, ckpt, scores=[3.0, 2.0], max_epochs=2)
    assert [(e["step"], e["score"]) for e in ckpt.saved] == [(1, None), (2, None), (3, 3.0), (4, 3.0)]


def test_a_step_checkpoint_after_the_first_validation_needs_the_monitor(tmp_path):
    ckpt = ModelCheckpoint(
        dirpath=str(tmp_path / "ckpt"), every_n_train_steps=1, monitor="val/scor", keep_last=None
    )
    with pytest.raises(KeyError, match=r"monitor='val/scor' was not logged; .*did you mean 'val/score'\?"):
        _fit(tmp_path, ckpt, max_epochs=2)
    assert [e["step"] for e in ckpt.saved] == [1, 2]  # saved (unscored) before the first validation


def test_a_training_monitor_is_not_due_before_the_first_epoch_end(tmp_path):
    """Validation every step, but ``train/loss`` is written every 50 steps or at the epoch end."""
    ckpt = ModelCheckpoint(
        dirpath=str(tmp_path / "ckpt"), every_n_train_steps=1, monitor="train/loss", keep_last=None
    )
    _fit(tmp_path, ckpt, max_epochs=2, val_check_interval=1, log_every_n_steps=50)
    scores = [e["score"] for e in ckpt.saved]
    assert scores[:2] == [None, None] and all(score is not None for score in scores[2:])
    assert [e["step"] for e in ckpt.saved] == [1, 2, 3, 4]


def test_without_validation_data_a_missing_monitor_fails_at_the_first_epoch_end(tmp_path):
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), monitor="train_loss")
    trainer = tt.Trainer(
        max_epochs=2, callbacks=[ckpt], logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    with pytest.raises(
        KeyError, match=r"monitor='train_loss' .*\['train/loss'\]; did you mean 'train/loss'\?"
    ):
        trainer.fit(Scored([0.0]), _loaders()[0])
    assert trainer.state.global_step == STEPS_PER_EPOCH


def test_a_monitor_without_a_close_match_says_how_to_fix_it(tmp_path):
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), monitor="val/accuracy")
    with pytest.raises(KeyError) as info:
        _fit(tmp_path, ckpt, max_epochs=1)
    assert "did you mean" not in str(info.value)
    assert str(info.value).endswith(
        "logged metrics: ['train/loss', 'val/score'] (log it with self.log, or pass monitor= one of these)"
    )


def test_a_custom_filename_still_resumes_from_last(tmp_path):
    """Any accepted template must leave checkpoints that ``ckpt_path="last"`` finds."""
    try:
        ckpt = ModelCheckpoint(filename="ckpt-{step:04d}", keep_last=None)
    except ValueError:
        return  # refusing such a template up front is fine too
    _fit(tmp_path, ckpt, max_epochs=2)
    assert find_last(str(tmp_path)) is not None
    trainer = _fit(tmp_path, ModelCheckpoint(filename="ckpt-{step:04d}"), ckpt_path="last", max_epochs=3)
    assert trainer.state.global_step == 6


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"every_n_train_steps": 0}, "every_n_train_steps=0"),
        ({"every_n_epochs": True}, "every_n_epochs=True"),
        ({"keep_last": 0}, "keep_last=0"),
        ({"mode": "avg"}, r"mode='avg'.*\['min', 'max'\]"),
        ({"save_top_k": -2}, "save_top_k=-2"),
        ({"filename": "epoch={epoch}"}, "must contain {step}"),
        ({"train_time_interval": 0}, "train_time_interval=0"),
        ({"train_time_interval": timedelta(0)}, "train_time_interval="),
    ],
)
def test_invalid_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelCheckpoint(**kwargs)


# -- retention -------------------------------------------------------------------------------------
def test_keep_last_keeps_the_newest_n(tmp_path):
    ckpt = ModelCheckpoint(
        dirpath=str(tmp_path / "ckpt"), every_n_train_steps=1, every_n_epochs=None, keep_last=3
    )
    _fit(tmp_path, ckpt, max_steps=7)
    assert _kept(tmp_path / "ckpt") == [5, 6, 7]
    assert [e["step"] for e in ckpt.saved] == [5, 6, 7]
    assert ckpt.last == str(tmp_path / "ckpt" / "step=00000007")


def test_keep_last_none_keeps_everything(tmp_path):
    ckpt = ModelCheckpoint(
        dirpath=str(tmp_path / "ckpt"), every_n_train_steps=1, every_n_epochs=None, keep_last=None
    )
    _fit(tmp_path, ckpt, max_steps=5)
    assert _kept(tmp_path / "ckpt") == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    "mode, scores, save_top_k, keep_last, kept_epochs, best_epoch",
    [
        ("min", [5, 2, 7, 1, 9, 3], 2, 1, [1, 3, 5], 3),
        ("max", [5, 2, 7, 1, 9, 3], 2, 1, [2, 4, 5], 4),
        ("min", [5, 2, 7, 1, 9, 3], -1, 1, [0, 1, 2, 3, 4, 5], 3),
        ("min", [5, 2, 7, 1, 9, 3], 1, 3, [3, 4, 5], 3),
        # the best is the oldest and the newest is the worst: both survive
        ("min", [1, 5, 6, 7], 1, 1, [0, 3], 0),
        ("max", [7, 6, 5, 1], 1, 1, [0, 3], 0),
        # NaN is never best, in either mode
        ("min", [NAN, 3, NAN, 5, NAN], 1, 1, [1, 4], 1),
        ("max", [NAN, 3, NAN, 5, NAN], 1, 1, [3, 4], 3),
        ("min", [NAN, 0, NAN, NAN], 2, 1, [1, 3], 1),
        ("max", [NAN, NAN, NAN], 1, 1, [2], None),
    ],
)
def test_top_k_by_monitor(tmp_path, mode, scores, save_top_k, keep_last, kept_epochs, best_epoch):
    ckpt = ModelCheckpoint(
        dirpath=str(tmp_path / "ckpt"),
        monitor="val/score",
        mode=mode,
        save_top_k=save_top_k,
        keep_last=keep_last,
    )
    _fit(tmp_path, ckpt, scores=scores, max_epochs=len(scores))
    assert _kept(tmp_path / "ckpt") == _epoch_end_steps(*kept_epochs)
    if best_epoch is None:
        assert ckpt.best is None
    else:
        assert ckpt.best is not None
        assert ckpt.best["step"] == _epoch_end_steps(best_epoch)[0]
        assert ckpt.best["score"] == scores[best_epoch]


def test_the_score_of_a_step_checkpoint_is_the_validation_of_that_step(tmp_path):
    """Validation and checkpoint every step: each checkpoint is ranked by its own step's validation."""
    scores = {1: 5.0, 2: 1.0, 3: 7.0, 4: 6.0}
    ckpt = ModelCheckpoint(
        dirpath=str(tmp_path / "ckpt"),
        every_n_train_steps=1,
        every_n_epochs=None,
        monitor="val/score",
        save_top_k=1,
        keep_last=1,
    )
    _fit(
        tmp_path,
        ckpt,
        scores=scores,
        by="step",
        max_steps=4,
        val_check_interval=1,
        check_val_every_n_epoch=None,
    )
    assert ckpt.best is not None
    assert (ckpt.best["step"], ckpt.best["score"]) == (2, 1.0)
    assert _kept(tmp_path / "ckpt") == [2, 4]


def test_retention_state_is_restored_on_resume(tmp_path):
    scores = [3, 1, 4, 5]
    first = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), monitor="val/score", keep_last=1, save_top_k=1)
    _fit(tmp_path, first, scores=scores, max_epochs=3)
    assert _kept(tmp_path / "ckpt") == _epoch_end_steps(1, 2)

    second = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), monitor="val/score", keep_last=1, save_top_k=1)
    _fit(tmp_path, second, scores=scores, ckpt_path="last", max_epochs=4)
    # The best checkpoint of the first run is still known as the best, and still on disk.
    assert second.best is not None and (second.best["step"], second.best["score"]) == (4, 1.0)
    assert 4 in _kept(tmp_path / "ckpt")
    assert [e["step"] for e in second.saved] == _epoch_end_steps(1, 3)


def test_a_resumed_run_deletes_the_checkpoint_it_resumed_from_when_it_falls_out(tmp_path):
    scores = [3, 1, 4, 5]
    first = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), monitor="val/score", keep_last=1, save_top_k=1)
    _fit(tmp_path, first, scores=scores, max_epochs=3)
    second = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), monitor="val/score", keep_last=1, save_top_k=1)
    _fit(tmp_path, second, scores=scores, ckpt_path="last", max_epochs=4)
    # Epoch 2's checkpoint (the resume point) is neither the newest nor the best any more.
    assert _kept(tmp_path / "ckpt") == _epoch_end_steps(1, 3)


def test_state_dict_is_json_and_round_trips(tmp_path):
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), monitor="val/score", keep_last=2)
    _fit(tmp_path, ckpt, scores=[2, 1, 3], max_epochs=3)
    state = read_state(ckpt.last)["states"]["callbacks.ModelCheckpoint"]
    assert 6 in [e["step"] for e in state["saved"]]  # a checkpoint knows it was saved
    fresh = ModelCheckpoint(monitor="val/score")
    fresh.load_state_dict(ckpt.state_dict())
    assert fresh.saved == ckpt.saved and fresh.best == ckpt.best


# -- runs that share a root ------------------------------------------------------------------------
class _Sized(tt.TaskModule):
    def __init__(self, hidden: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(2, hidden), torch.nn.Linear(hidden, 1))

    def compute_loss(self, batch):
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _experiment(root: Path, hidden: int, ckpt_path: str | None = None) -> tuple[_Sized, ModelCheckpoint]:
    torch.manual_seed(hidden)
    module, ckpt = _Sized(hidden), ModelCheckpoint(every_n_train_steps=2, keep_last=2)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(16, 2, generator=g), torch.randn(16, 1, generator=g))
    trainer = tt.Trainer(
        max_steps=8, callbacks=[ckpt], logger=False, enable_progress_bar=False, default_root_dir=root
    )
    trainer.fit(module, DataLoader(data, batch_size=4), ckpt_path=ckpt_path)
    return module, ckpt


def test_two_experiments_in_one_root_never_overwrite_or_delete_each_others_checkpoints(tmp_path):
    """Same root, same step names, other models: the second run writes step=...-v1 beside the
    first run's checkpoints and rotates only its own; every checkpoint of both loads."""
    first, first_ckpt = _experiment(tmp_path, hidden=3)
    first_paths = [entry["path"] for entry in first_ckpt.saved]
    second, second_ckpt = _experiment(tmp_path, hidden=7)
    second_paths = [entry["path"] for entry in second_ckpt.saved]

    assert [Path(p).name for p in first_paths] == ["step=00000006", "step=00000008"]
    assert [Path(p).name for p in second_paths] == ["step=00000006-v1", "step=00000008-v1"]
    for path, hidden in [(p, 3) for p in first_paths] + [(p, 7) for p in second_paths]:
        assert is_complete(path)
        assert _Sized.load_from_checkpoint(path).hparams.hidden == hidden
    intact = _Sized.load_from_checkpoint(first_paths[-1]).state_dict()  # the first run's, unchanged
    assert all(torch.equal(value, intact[name]) for name, value in first.state_dict().items())
    final = _Sized.load_from_checkpoint(second_paths[-1]).state_dict()
    assert all(torch.equal(value, final[name]) for name, value in second.state_dict().items())
