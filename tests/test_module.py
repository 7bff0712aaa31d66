"""TaskModule: hyperparameters, logging outside a run, checkpoints, configure_optimizers forms.

Bad arguments fail at the call that made them, naming it: ``self.log`` refuses a name or value
it could not write (inside ``training_step``, before any flush), and ``save_hyperparameters``
refuses values a checkpoint's strict JSON could not hold (in ``__init__``, before any fit).
"""

from __future__ import annotations

import math
import re
import warnings
from decimal import Decimal
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import MeanMetric

import tasktrain as tt
from tasktrain.loggers import Logger

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


class _Config:
    """Stands for a library config object (e.g. transformers' ``BertConfig``): not plain JSON."""


class _Configured(tt.TaskModule):
    def __init__(self, config: Any = None, lr: float = 0.1, **kwargs: Any) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=kwargs.pop("_ignore", ()))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"config": _Config()}, r"argument 'config' is a _Config, which is not plain JSON"),
        ({"lr": math.nan}, r"argument 'lr' is nan, which is not plain JSON .*no NaN or infinity"),
        ({"lr": math.inf}, r"argument 'lr' is inf, which is not plain JSON"),
        ({"config": torch.tensor(1.0)}, r"argument 'config' is a Tensor,"),
        (
            {"config": [1, torch.nn.Linear(1, 1)]},
            r"argument 'config' is a list whose config\[1\] is a Linear,",
        ),
        ({"config": {"a": {"b": _Config()}}}, r"'config' is a dict whose config\['a'\]\['b'\] is a _Config,"),
        ({"config": {(1, 2): 3}}, r"'config' is a dict whose key \(1, 2\) is a tuple,"),
        ({"width": _Config()}, r"argument 'width' is a _Config,"),  # from **kwargs, by its key
    ],
)
def test_save_hyperparameters_refuses_values_that_are_not_plain_json(kwargs, match):
    with pytest.raises(TypeError, match=match) as info:
        _Configured(**kwargs)
    name = next(iter(kwargs))
    assert f"save_hyperparameters(ignore=['{name}'])" in str(info.value)  # the way out
    assert "written to every checkpoint" in str(info.value)  # why


def test_save_hyperparameters_accepts_plain_json_and_what_is_ignored():
    config = _Config()
    m = _Configured(config, lr=0.5, _ignore=["config"])
    assert m.hparams == {"lr": 0.5}
    assert _Configured(_Config(), _ignore="config").hparams == {"lr": 0.1}  # one name as a str
    plain = {"layers": (64, 32), "opts": {"a": [1, 2.5, None, True]}, "name": "x"}
    assert _Configured(plain).hparams["config"] == plain


def test_a_refused_hyperparameter_fails_before_the_first_checkpoint(tmp_path):
    """Before the check, this module was built, trained an epoch and crashed in its first save."""
    steps: list[int] = []

    class Task(Regressor):
        def __init__(self, config: Any = None) -> None:
            super().__init__()
            self.save_hyperparameters()

        def training_step(self, batch, batch_idx):
            steps.append(batch_idx)
            return super().training_step(batch, batch_idx)

    with pytest.raises(TypeError, match="argument 'config'"):
        tt.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path).fit(
            Task(_Config()), _loader()
        )
    assert steps == [] and not (tmp_path / "checkpoints").exists()


class _BertTask(tt.TaskModule):
    """A module of one's own around a transformers model, configured by a ``BertConfig`` argument."""

    def __init__(self, config: Any, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        from transformers import BertForSequenceClassification

        self.config = config
        self.bert = BertForSequenceClassification(config)

    def compute_loss(self, batch):
        return self.bert(**batch).loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def _bert_config() -> Any:
    transformers = pytest.importorskip("transformers")
    return transformers.BertConfig(
        vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
        max_position_embeddings=16, num_labels=3,
    )  # fmt: skip


def test_a_transformers_config_is_stored_as_its_dict_and_rebuilt_by_load_from_checkpoint(tmp_path):
    """Before: accepted by save_hyperparameters(), then the first checkpoint crashed on it."""
    import json

    config = _bert_config()
    m = _BertTask(config, lr=0.05)
    stored = m.hparams.config
    assert isinstance(stored, dict) and stored["__config_class__"] == "BertConfig"
    assert stored["hidden_size"] == 8 and len(stored["id2label"]) == 3
    json.dumps(dict(m.hparams), allow_nan=False)  # plain JSON
    batch = {"input_ids": torch.randint(0, 20, (2, 5)), "labels": torch.tensor([0, 2])}
    trainer = tt.Trainer(max_steps=2, default_root_dir=tmp_path, **{**QUIET, "enable_checkpointing": True})
    trainer.fit(m, [batch, batch])
    trainer.save_checkpoint(str(tmp_path / "ckpt"))
    loaded = _BertTask.load_from_checkpoint(str(tmp_path / "ckpt"))
    assert type(loaded.config) is type(config)  # an object again, equal to the config at construction
    rebuilt = json.loads(loaded.config.to_json_string(use_diff=False))
    assert rebuilt == {k: v for k, v in stored.items() if k != "__config_class__"}
    assert loaded.hparams == m.hparams
    for key, tensor in m.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key


def test_a_config_class_outside_transformers_is_refused_naming_the_argument():
    transformers = pytest.importorskip("transformers")

    class MyConfig(transformers.PretrainedConfig):
        model_type = "mine"

    with pytest.raises(TypeError, match=r"argument 'config' is a MyConfig, which is not plain JSON"):
        _Configured(MyConfig())


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


# -- self.log checks its arguments at the call ----------------------------------------------


class _Rows(Logger):
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.rows.append((step, dict(metrics)))


class _LogsAtStep(Regressor):
    """Logs ``value`` under ``metric`` in training step ``at`` (its earlier steps log a good value)."""

    def __init__(self, metric: Any, value: Any, at: int = 2, use_dict: bool = False) -> None:
        super().__init__()
        self.bad_name, self.bad_value, self.at, self.use_dict = metric, value, at, use_dict
        self.calls: list[int] = []

    def training_step(self, batch, batch_idx):
        self.calls.append(batch_idx)
        name, value = ("train/ok", 0.5) if batch_idx < self.at else (self.bad_name, self.bad_value)
        if self.use_dict:
            self.log_dict({name: value})
        else:
            self.log(name, value)
        self.calls.append(-1)  # reached only when log accepted the value
        return super().training_step(batch, batch_idx)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)  # Regressor's hparams hold none of ours


@pytest.mark.parametrize(
    "value, error, got",
    [
        ("abc", TypeError, r"got str 'abc'$"),
        (None, TypeError, r"got None$"),
        ([0.5, 0.25], TypeError, r"got list \[0\.5, 0\.25\]$"),
        ({"a": 1.0}, TypeError, r"got dict \{'a': 1\.0\}; log several values with self\.log_dict$"),
        (torch.ones(4, 3), ValueError, r"got a tensor of shape \(4, 3\); reduce it first"),
        (torch.ones(0), ValueError, r"got a tensor of shape \(0,\)"),
        (torch.tensor(1j), TypeError, r"got a complex tensor"),
        (np.ones(3), ValueError, r"got a numpy array of shape \(3,\)"),
        (object(), TypeError, r"got object <object object at"),
    ],
    ids=["str", "None", "list", "dict", "matrix", "empty-tensor", "complex", "numpy-array", "object"],
)
@pytest.mark.parametrize("use_dict", [False, True], ids=["log", "log_dict"])
def test_log_refuses_a_bad_value_at_the_call_naming_the_metric(value, error, got, use_dict):
    rows = _Rows()
    module = _LogsAtStep("val/acc", value, at=2, use_dict=use_dict)
    trainer = tt.Trainer(max_epochs=1, logger=rows, log_every_n_steps=50, enable_progress_bar=False)
    with pytest.raises(error) as info:
        trainer.fit(module, _loader())
    message = str(info.value)
    assert message.startswith(
        "self.log('val/acc', value): expected a number, a one-element tensor or a torchmetrics Metric; "
    )
    assert re.search(got, message), message
    assert module.calls == [0, -1, 1, -1, 2]  # raised inside the third training_step, at the call
    assert rows.rows == [] and trainer.state.global_step == 2  # before any flush


@pytest.mark.parametrize(
    "name, error, match",
    [
        (3, TypeError, r"^self\.log\(3, value\): the name must be a non-empty str; got int$"),
        (None, TypeError, r"^self\.log\(None, value\): the name must be a non-empty str; got NoneType$"),
        ("", ValueError, r"^self\.log\('', value\): the name must be a non-empty str$"),
    ],
)
def test_log_refuses_a_bad_name_at_the_call(name, error, match):
    module = _LogsAtStep(name, 1.0, at=0)
    with pytest.raises(error, match=match):
        tt.Trainer(max_epochs=1, **QUIET).fit(module, _loader())
    assert module.calls == [0]


@pytest.mark.parametrize(
    "value",
    [
        1,
        0.5,
        True,  # a bool is 0/1: its epoch mean is a rate
        torch.tensor(0.5),
        torch.tensor([0.5]),
        torch.ones(1, 1, 1),  # any shape with one element
        torch.tensor(3),
        torch.tensor([True]),
        np.float32(0.5),
        np.int64(2),
        np.bool_(True),
        np.array([[0.5]]),
        Fraction(1, 2),
        Decimal("0.5"),
    ],
    ids=lambda v: type(v).__name__,
)
def test_log_accepts_numbers_and_one_element_tensors(value):
    rows = _Rows()
    module = _LogsAtStep("train/value", value, at=0)
    tt.Trainer(max_steps=2, logger=rows, log_every_n_steps=1, enable_progress_bar=False).fit(
        module, _loader()
    )
    assert [metrics["train/value"] for _, metrics in rows.rows] == [
        float(torch.as_tensor(value, dtype=torch.float64))
    ] * 2


def test_log_accepts_a_metric():
    class WithMetric(Regressor):
        def __init__(self) -> None:
            super().__init__()
            self.mean = MeanMetric()

        def validation_step(self, batch, batch_idx):
            self.mean.update(batch[1].mean())
            self.log("val/mean", self.mean)

    (metrics,) = tt.Trainer(**QUIET).validate(WithMetric(), _loader())
    assert set(metrics) == {"val/mean"}


def test_log_checks_outside_a_trainer_too():
    m = Regressor()
    with pytest.raises(TypeError, match=r"self\.log\('x', value\).*got str 'a'"):
        m.log("x", "a")
    with warnings.catch_warnings(), pytest.raises(ValueError, match="shape \\(2,\\)"):
        warnings.simplefilter("ignore")
        m.log_dict({"ok": 1.0, "pair": torch.ones(2)})


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
        ("list-of-one", 1.0),  # a list of optimizers, with one in it
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


def test_a_scheduler_monitor_that_was_not_logged_fails_at_the_first_validation():
    class Plateau(Regressor):
        def validation_step(self, batch, batch_idx):
            self.log("val/loss", 1.0)

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=1.0)
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss"}}

    trainer = tt.Trainer(max_epochs=3, **QUIET)
    with pytest.raises(KeyError) as info:
        trainer.fit(Plateau(), _loader(4, 2), _loader(4, 2))
    assert str(info.value).startswith("lr_scheduler: monitor='val_loss' was not logged; logged metrics: [")
    assert str(info.value).endswith("; did you mean 'val/loss'?")
    assert trainer.state.global_step == 2  # the first validation, at the end of the first epoch
