"""Several validation (and test) sets: ``{name: loader}``, metrics named ``val/<name>/...``, each
equal to a plain-PyTorch evaluation of that set."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
from tasktrain.callbacks import Callback, EarlyStopping, ModelCheckpoint
from tasktrain.loggers import Logger


class Recorder(Logger):
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.rows.append((step, dict(metrics)))


class Regressor(tt.TaskModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

    def compute_loss(self, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Named(Regressor):
    """Learns the set from ``dataloader_name``; logs the loss and the set's mean absolute error."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str | None] = []

    def validation_step(self, batch, batch_idx, dataloader_name=None):
        self.seen.append(dataloader_name)
        x, y = batch
        self.log("val/loss", self.compute_loss(batch))
        self.log("mae", (self.net(x) - y).abs().mean())  # no val/ prefix: it gets one


def _set(n: int, seed: int, shift: float = 0.0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    return TensorDataset(x, x.sum(1, keepdim=True) + shift + 0.1 * torch.randn(n, 1, generator=g))


def _plain(module: Regressor, dataset: TensorDataset) -> dict[str, float]:
    """The reference: the whole set through the module's net, in plain PyTorch."""
    x, y = dataset.tensors
    with torch.no_grad():
        out = module.net(x)
    return {"loss": torch.nn.functional.mse_loss(out, y).item(), "mae": (out - y).abs().mean().item()}


CLEAN, NOISY = _set(10, 1), _set(7, 2, shift=3.0)  # batch 4: batches of 4, 4, 2 and 4, 3


def _sets() -> dict[str, DataLoader]:
    return {"clean": DataLoader(CLEAN, batch_size=4), "noisy": DataLoader(NOISY, batch_size=4)}


def test_each_named_set_is_logged_under_its_name_and_equals_a_plain_evaluation(quiet):
    torch.manual_seed(0)
    module, recorder = Named(), Recorder()
    trainer = tt.Trainer(max_epochs=2, **{**quiet, "logger": recorder})
    trainer.fit(module, DataLoader(_set(16, 0), batch_size=4), val_dataloaders=_sets())

    for name, dataset in (("clean", CLEAN), ("noisy", NOISY)):
        expected = _plain(module, dataset)
        assert trainer.callback_metrics[f"val/{name}/loss"] == pytest.approx(expected["loss"], rel=1e-6)
        assert trainer.callback_metrics[f"val/{name}/mae"] == pytest.approx(expected["mae"], rel=1e-6)
    assert "val/loss" not in trainer.callback_metrics and "mae" not in trainer.callback_metrics
    val_rows = [(step, sorted(m)) for step, m in recorder.rows if any(k.startswith("val/") for k in m)]
    names = ["val/clean/loss", "val/clean/mae", "val/noisy/loss", "val/noisy/mae"]
    assert val_rows == [(4, names), (8, names)]  # one write per validation run, both sets in it
    assert module.seen == (["clean"] * 3 + ["noisy"] * 2) * 2

    metrics = trainer.validate(module, _sets())[0]
    assert metrics["val/noisy/loss"] == pytest.approx(_plain(module, NOISY)["loss"], rel=1e-6)
    assert sorted(metrics) == names


def test_the_module_hook_may_return_named_sets_and_the_default_step_logs_each(quiet):
    class Hooked(Regressor):
        def val_dataloader(self):
            return _sets()

    module = Hooked()
    metrics = tt.Trainer(**quiet).validate(module)[0]
    assert metrics == pytest.approx(
        {"val/clean/loss": _plain(module, CLEAN)["loss"], "val/noisy/loss": _plain(module, NOISY)["loss"]},
        rel=1e-6,
    )
    trainer = tt.Trainer(max_epochs=1, **quiet)
    trainer.fit(module, DataLoader(_set(8, 0), batch_size=4))  # validation data from the hook
    assert {"val/clean/loss", "val/noisy/loss"} <= set(trainer.callback_metrics)


def test_a_step_without_dataloader_name_is_called_as_before(quiet):
    class Plain(Regressor):
        def validation_step(self, batch, batch_idx):  # no dataloader_name: not passed
            self.log("val/loss", self.compute_loss(batch))

    assert set(tt.Trainer(**quiet).validate(Plain(), _sets())[0]) == {"val/clean/loss", "val/noisy/loss"}


def test_checkpoint_and_early_stopping_monitor_any_named_set(quiet, tmp_path):
    class Seen(Callback):
        def __init__(self) -> None:
            self.noisy: list[float] = []
            self.clean: list[float] = []

        def on_validation_end(self, trainer: Any, module: Any) -> None:
            self.noisy.append(trainer.callback_metrics["val/noisy/loss"])
            self.clean.append(trainer.callback_metrics["val/clean/loss"])

    seen = Seen()
    checkpoint = ModelCheckpoint(monitor="val/noisy/loss", save_top_k=1)
    stopping = EarlyStopping(monitor="val/clean/loss", patience=100)
    trainer = tt.Trainer(
        max_epochs=3, callbacks=[seen, checkpoint, stopping], **{**quiet, "enable_checkpointing": True}
    )
    torch.manual_seed(0)
    trainer.fit(Regressor(), DataLoader(_set(16, 0), batch_size=4), val_dataloaders=_sets())
    assert len(seen.noisy) == 3
    assert checkpoint.best_model_score == min(seen.noisy)
    assert stopping.best == min(seen.clean) and stopping.best != min(seen.noisy)


def test_a_list_of_dataloaders_gets_index_names(quiet):
    module = Regressor()
    metrics = tt.Trainer(**quiet).validate(module, [DataLoader(CLEAN, batch_size=4), DataLoader(NOISY)])[0]
    assert metrics["val/0/loss"] == pytest.approx(_plain(module, CLEAN)["loss"], rel=1e-6)
    assert metrics["val/1/loss"] == pytest.approx(_plain(module, NOISY)["loss"], rel=1e-6)


def test_a_plain_list_of_batches_is_still_one_loader(quiet):
    batches = [CLEAN.tensors, NOISY.tensors]
    assert set(tt.Trainer(**quiet).validate(Regressor(), batches)[0]) == {"val/loss"}


def test_named_test_sets_are_logged_under_test(quiet):
    module = Regressor()
    metrics = tt.Trainer(**quiet).test(module, _sets())[0]
    assert metrics["test/clean/loss"] == pytest.approx(_plain(module, CLEAN)["loss"], rel=1e-6)
    assert set(metrics) == {"test/clean/loss", "test/noisy/loss"}


def test_the_sanity_check_and_limits_apply_to_each_set(quiet):
    module = Named()
    trainer = tt.Trainer(max_steps=1, num_sanity_val_steps=1, limit_val_batches=2, **quiet)
    trainer.fit(module, DataLoader(_set(4, 0), batch_size=4), val_dataloaders=_sets())
    assert module.seen == ["clean", "noisy"] + ["clean"] * 2 + ["noisy"] * 2


@pytest.mark.parametrize(
    ("sets", "match"),
    [
        ({}, "an empty mapping of dataloaders"),
        ({"a/b": DataLoader(CLEAN)}, "dataloader name 'a/b' is not accepted"),
        ({"": DataLoader(CLEAN)}, "dataloader name '' is not accepted"),
        ({1: DataLoader(CLEAN)}, "dataloader name 1 is not accepted"),
    ],
)
def test_bad_set_names_are_refused_naming_the_argument(quiet, sets, match):
    with pytest.raises(ValueError, match=rf"Trainer.fit\(val_dataloaders=...\): {match}"):
        tt.Trainer(max_steps=1, **quiet).fit(Regressor(), DataLoader(CLEAN), val_dataloaders=sets)
    with pytest.raises(ValueError, match=rf"Trainer.validate\(dataloaders=...\): {match}"):
        tt.Trainer(**quiet).validate(Regressor(), sets)
