"""TaskModule: hyperparameters, logging outside a run, checkpoints, configure_optimizers forms."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt

QUIET: dict[str, Any] = dict(logger=False, enable_progress_bar=False, enable_checkpointing=False)


def _loader(n: int = 8, batch_size: int = 2) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(
        TensorDataset(torch.randn(n, 3, generator=g), torch.randn(n, 1, generator=g)), batch_size
    )


class Regressor(tt.TaskModule):
    def __init__(self, hidden: int = 4, lr: float = 0.1, name: str = "reg") -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(3, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1)
        )

    def compute_loss(self, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


# -- hyperparameters ----------------------------------------------------------------------------


def test_save_hyperparameters_all():
    m = Regressor(hidden=8)
    assert m.hparams == {"hidden": 8, "lr": 0.1, "name": "reg"}
    assert m.hparams.hidden == 8 and m.hparams["lr"] == 0.1


def test_save_hyperparameters_subset():
    class Subset(tt.TaskModule):
        def __init__(self, a: int = 1, b: int = 2, c: int = 3) -> None:
            super().__init__()
            self.save_hyperparameters("a", "c")

    assert Subset(a=10).hparams == {"a": 10, "c": 3}


def test_save_hyperparameters_ignore():
    class WithBackbone(tt.TaskModule):
        def __init__(self, backbone: torch.nn.Module, lr: float = 0.1) -> None:
            super().__init__()
            self.save_hyperparameters(ignore=["backbone"])
            self.backbone = backbone

    m = WithBackbone(torch.nn.Linear(2, 2), lr=0.5)
    assert m.hparams == {"lr": 0.5}


def test_save_hyperparameters_kwargs_are_flattened():
    class WithKwargs(tt.TaskModule):
        def __init__(self, a: int = 1, *args: Any, **kwargs: Any) -> None:
            super().__init__()
            self.save_hyperparameters()

    assert WithKwargs(2, dropout=0.1, width=3).hparams == {"a": 2, "dropout": 0.1, "width": 3}


def test_save_hyperparameters_in_a_subclass_of_a_subclass():
    class Bigger(Regressor):
        def __init__(self, depth: int = 2, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.save_hyperparameters()

    m = Bigger(depth=3, hidden=5)
    assert m.hparams["depth"] == 3
    assert m.hparams["hidden"] == 5


def test_save_hyperparameters_unknown_name():
    class Bad(tt.TaskModule):
        def __init__(self, a: int = 1) -> None:
            super().__init__()
            self.save_hyperparameters("b")

    with pytest.raises(ValueError, match=r"\['b'\].*arguments are \['a'\]"):
        Bad()


def test_hparams_missing_attribute_names_what_was_saved():
    m = Regressor()
    with pytest.raises(AttributeError) as info:
        _ = m.hparams.dropout
    assert "'dropout'" in str(info.value)
    assert "['hidden', 'lr', 'name']" in str(info.value)


def test_no_hparams_by_default():
    class Plain(tt.TaskModule):
        pass

    assert Plain().hparams == {}


# -- read-only views and hooks outside a run ----------------------------------------------------


def test_properties_when_not_attached():
    m = Regressor()
    assert m.global_step == 0
    assert m.current_epoch == 0
    assert m.device == torch.device("cpu")
    with pytest.raises(RuntimeError, match="not attached to a Trainer"):
        _ = m.trainer


def test_log_outside_a_trainer_warns_once():
    m = Regressor()
    with pytest.warns(UserWarning, match=r"log\('x'\) called outside a Trainer"):
        m.log("x", 1.0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.log("y", 2.0)  # warned already: silent
        m.log_dict({"z": 3.0})


def test_log_after_a_run_warns():
    m = Regressor()
    tt.Trainer(max_steps=1, **QUIET).fit(m, _loader())
    with pytest.warns(UserWarning, match="outside a Trainer"):
        m.log("late", 1.0)


def test_missing_compute_loss_and_configure_optimizers():
    class Empty(tt.TaskModule):
        def __init__(self) -> None:
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

    with pytest.raises(NotImplementedError, match="compute_loss"):
        Empty().compute_loss(None)
    with pytest.raises(NotImplementedError, match="configure_optimizers"):
        tt.Trainer(max_steps=1, **QUIET).fit(Empty(), _loader())


def test_fit_without_data_names_the_hook():
    with pytest.raises(NotImplementedError, match="train_dataloader"):
        tt.Trainer(max_steps=1, **QUIET).fit(Regressor())


def test_dataloader_hooks_are_used():
    class WithData(Regressor):
        def train_dataloader(self):
            return _loader(8, 4)

        def val_dataloader(self):
            return _loader(4, 4)

        def test_dataloader(self):
            return _loader(6, 3)

        def predict_dataloader(self):
            return DataLoader(torch.randn(5, 3), batch_size=5)

        def forward(self, x):
            return self.net(x)

    m = WithData()
    trainer = tt.Trainer(max_epochs=1, **QUIET)
    assert trainer.fit(m).global_step == 2
    assert "val/loss" in trainer.callback_metrics
    assert set(trainer.validate(m)[0]) == {"val/loss"}
    assert set(trainer.test(m)[0]) == {"test/loss"}
    (prediction,) = trainer.predict(m)  # the default predict_step is self(batch)
    assert prediction.shape == (5, 1)


def test_training_step_returning_a_mapping_or_tuple():
    class Mapping(Regressor):
        def training_step(self, batch, batch_idx):
            return {"loss": self.compute_loss(batch), "extra": 1}

    class Tuple(Regressor):
        def compute_loss(self, batch):
            return super().compute_loss(batch), {"preds": None}

    for cls in (Mapping, Tuple):
        assert tt.Trainer(max_steps=2, **QUIET).fit(cls(), _loader()).global_step == 2


def test_training_step_returning_a_non_scalar_names_the_hook_and_step():
    class Bad(Regressor):
        def training_step(self, batch, batch_idx):
            x, _ = batch
            return self.net(x)

    with pytest.raises(TypeError, match=r"Bad\.training_step.*shape \(2, 1\).*step 0"):
        tt.Trainer(max_steps=1, **QUIET).fit(Bad(), _loader())


# -- checkpoints ---------------------------------------------------------------------------------


def test_load_from_checkpoint_round_trip(tmp_path):
    m = Regressor(hidden=6, lr=0.05, name="abc")
    trainer = tt.Trainer(max_steps=3, **QUIET)
    trainer.fit(m, _loader())
    path = str(tmp_path / "ckpt")
    trainer.save_checkpoint(path)

    loaded = Regressor.load_from_checkpoint(path)
    assert isinstance(loaded, Regressor)
    assert loaded.hparams == {"hidden": 6, "lr": 0.05, "name": "abc"}
    state, loaded_state = m.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    for key in state:
        torch.testing.assert_close(loaded_state[key], state[key], rtol=0, atol=0)


def test_load_from_checkpoint_with_overrides(tmp_path):
    m = Regressor(hidden=6, lr=0.05)
    trainer = tt.Trainer(max_steps=1, **QUIET)
    trainer.fit(m, _loader())
    trainer.save_checkpoint(str(tmp_path / "ckpt"))
    loaded = Regressor.load_from_checkpoint(str(tmp_path / "ckpt"), lr=0.5)
    assert loaded.hparams.lr == 0.5 and loaded.hparams.hidden == 6
    torch.testing.assert_close(loaded.net[0].weight, m.net[0].weight)


def test_load_from_checkpoint_with_a_mismatched_module(tmp_path):
    m = Regressor(hidden=6)
    trainer = tt.Trainer(max_steps=1, **QUIET)
    trainer.fit(m, _loader())
    trainer.save_checkpoint(str(tmp_path / "ckpt"))
    with pytest.raises(ValueError, match="Regressor") as info:
        Regressor.load_from_checkpoint(str(tmp_path / "ckpt"), hidden=7)
    assert "net.0.weight" in str(info.value)  # names the tensor that does not fit


# -- configure_optimizers ------------------------------------------------------------------------


class Configured(Regressor):
    def __init__(self, form: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.form = form

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=1.0)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        if self.form == "optimizer":
            return opt
        if self.form == "tuple":
            return opt, sched
        if self.form == "dict":
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        if self.form == "dict-no-scheduler":
            return {"optimizer": opt}
        if self.form == "list-of-one":
            return [opt]
        if self.form == "string":
            return "sgd"
        if self.form == "bad-scheduler":
            return opt, "cosine"
        if self.form == "unknown-key":
            return {"optimizer": opt, "scheduler": sched}
        raise AssertionError(self.form)


@pytest.mark.parametrize(
    ("form", "expected_lr"),
    [
        ("optimizer", 1.0),
        ("dict-no-scheduler", 1.0),
        ("tuple", 0.25),  # a bare scheduler steps per epoch: 2 epochs
        ("dict", 0.5**8),  # interval="step": 4 steps per epoch x 2 epochs
    ],
)
def test_configure_optimizers_forms(form: str, expected_lr: float):
    trainer = tt.Trainer(max_epochs=2, **QUIET)
    trainer.fit(Configured(form), _loader(8, 2))
    assert trainer.state.global_step == 8
    assert math.isclose(trainer.optimizer.param_groups[0]["lr"], expected_lr)


@pytest.mark.parametrize(
    ("form", "error", "match"),
    [
        ("string", TypeError, "got str"),
        ("list-of-one", TypeError, "got list"),
        ("bad-scheduler", TypeError, "lr_scheduler must be"),
        ("unknown-key", ValueError, "unknown keys"),
    ],
)
def test_configure_optimizers_bad_forms(form: str, error: type[Exception], match: str):
    with pytest.raises(error, match=match):
        tt.Trainer(max_steps=1, **QUIET).fit(Configured(form), _loader())


def test_reduce_lr_on_plateau_monitors_val_loss():
    class Plateau(Regressor):
        def validation_step(self, batch, batch_idx):
            self.log("val/loss", 1.0)  # never improves

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=1.0)
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val/loss"}}

    trainer = tt.Trainer(max_epochs=3, **QUIET)
    trainer.fit(Plateau(), _loader(4, 2), _loader(4, 2))
    # epoch 1: best=1.0; epochs 2 and 3 do not improve -> halved twice
    assert math.isclose(trainer.optimizer.param_groups[0]["lr"], 0.25)
