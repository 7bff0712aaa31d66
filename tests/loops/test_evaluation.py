"""``EvaluationLoop`` and ``limited``: what validate and test compute and how they run.

Proves that one metrics dict comes back with epoch values reduced over the whole run (batch-size
weighted, metrics computed once and reset), that the module runs in eval mode without gradients and
gets its mode back, that an unknown stage is refused, that ``limit_batches`` cuts to an int count or a
float fraction (refused on a loader without length), that ``batch_progress`` counts the batches,
and that a dataloader that yields nothing warns, naming it, once per Trainer call.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

import tasktrain as tt
from tasktrain.callbacks import Callback
from tasktrain.loops import EvaluationLoop
from tasktrain.loops.evaluation import limited

QUIET: dict[str, Any] = dict(logger=False, enable_progress_bar=False, enable_checkpointing=False)


class Regressor(tt.TaskModule):
    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Linear(3, 1)

    def compute_loss(self, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def _loader(n: int, batch_size: int, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(
        TensorDataset(torch.randn(n, 3, generator=g), torch.randn(n, 1, generator=g)), batch_size
    )


# -- metrics: one dict, epoch values over the whole run ------------------------------------------


def test_validate_and_test_return_one_metrics_dict():
    module = Regressor()
    loader = _loader(10, 4)
    with torch.no_grad():
        expected = torch.nn.functional.mse_loss(
            module.net(loader.dataset.tensors[0]), loader.dataset.tensors[1]
        )
    (val,) = tt.Trainer(**QUIET).validate(module, loader)
    (test,) = tt.Trainer(**QUIET).test(module, loader)
    assert set(val) == {"val/loss"} and set(test) == {"test/loss"}
    # batch-size weighted mean of per-batch means (4, 4, 2) == the mean over all samples
    assert val["val/loss"] == pytest.approx(float(expected), rel=1e-5)
    assert test["test/loss"] == pytest.approx(float(expected), rel=1e-5)


class SizeLogger(Regressor):
    """Logs each batch's own size: the epoch value is then sum(size^2) / sum(size)."""

    def training_step(self, batch, batch_idx):
        self.log("train/size", float(batch[0].shape[0]), on_step=False, on_epoch=True)
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.log("val/size", float(batch[0].shape[0]))
        self.log("val/explicit", float(batch_idx), batch_size=batch_idx + 1)


def _weighted(sizes: list[int]) -> float:
    return sum(s * s for s in sizes) / sum(sizes)


def test_validation_epoch_values_are_batch_size_weighted():
    # 10 samples in batches of 4: sizes 4, 4, 2 -> (16 + 16 + 4) / 10 = 3.6, not (4 + 4 + 2) / 3
    (metrics,) = tt.Trainer(**QUIET).validate(SizeLogger(), _loader(10, 4))
    assert metrics["val/size"] == pytest.approx(_weighted([4, 4, 2]))
    # explicit batch_size: values 0, 1, 2 with weights 1, 2, 3
    assert metrics["val/explicit"] == pytest.approx((0 * 1 + 1 * 2 + 2 * 3) / 6)


class Classifier(tt.TaskModule):
    """Predicts class ``x[:, 0]`` in epoch 0 (all correct) and class 0 afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(1, 3)
        self.accuracy = MulticlassAccuracy(num_classes=3, average="micro")

    def compute_loss(self, batch):
        x, _ = batch
        return self.net(x).pow(2).mean()

    def predictions(self, x):
        if self.current_epoch == 0:
            return x[:, 0].long()
        return torch.zeros(x.shape[0], dtype=torch.long)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.accuracy.update(self.predictions(x), y)
        self.log("val/acc", self.accuracy)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _class_data(n: int = 11) -> TensorDataset:
    y = torch.tensor([i % 3 for i in range(n)])
    x = y.float().unsqueeze(1)
    return TensorDataset(x, y)


def test_metric_over_the_whole_validation_epoch():
    data = _class_data(11)
    labels = data.tensors[1]
    module = Classifier()
    (metrics,) = tt.Trainer(**QUIET).validate(module, DataLoader(data, batch_size=4))
    assert metrics["val/acc"] == pytest.approx(1.0)

    # A hand-computed accuracy over the full set, for predictions of class 0 (sizes 4, 4, 3).
    rec: list[float] = []

    class Grab(Callback):
        def on_validation_end(self, trainer, module):
            rec.append(trainer.callback_metrics["val/acc"])

    trainer = tt.Trainer(max_epochs=2, callbacks=[Grab()], **QUIET)
    trainer.fit(module, DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
    zero_acc = float((labels == 0).float().mean())  # 4 of 11, not the mean of per-batch accuracies
    assert rec == pytest.approx([1.0, zero_acc])  # reset between epochs: epoch 1 is not a mix
    assert zero_acc != pytest.approx((2 / 4 + 1 / 4 + 1 / 3) / 3)


def test_metric_reset_between_validate_calls():
    module = Classifier()
    trainer = tt.Trainer(**QUIET)
    first = trainer.validate(module, DataLoader(_class_data(9), batch_size=4))[0]["val/acc"]
    second = trainer.validate(module, DataLoader(_class_data(6), batch_size=4))[0]["val/acc"]
    assert first == second == pytest.approx(1.0)
    assert module.accuracy.update_count == 0


# -- eval mode, no gradients ---------------------------------------------------------------------


def test_evaluation_runs_in_eval_mode_without_grad_and_restores_train_mode():
    seen: list[tuple[bool, bool]] = []

    class Probe(Regressor):
        def validation_step(self, batch, batch_idx):
            seen.append((self.training, torch.is_grad_enabled()))
            return super().validation_step(batch, batch_idx)

    module = Probe()
    module.train()
    tt.Trainer(**QUIET).validate(module, _loader(4, 2))
    assert seen == [(False, False), (False, False)]
    assert module.training


@pytest.mark.parametrize("stage", ["validate", "test"])
@pytest.mark.parametrize("was_training", [True, False], ids=["from-train", "from-eval"])
def test_the_mode_before_evaluation_comes_back_even_if_a_step_fails(
    quiet: dict[str, Any], stage: str, was_training: bool
) -> None:
    seen: list[tuple[bool, bool]] = []

    class Failing(Regressor):
        def validation_step(self, batch, batch_idx):
            seen.append((self.training, torch.is_grad_enabled()))
            raise RuntimeError("boom")

        test_step = validation_step

    module = Failing()
    module.train(was_training)
    with pytest.raises(RuntimeError, match="boom"):
        getattr(tt.Trainer(**quiet), stage)(module, _loader(4, 2))
    assert seen == [(False, False)]
    assert module.training is was_training
    assert torch.is_grad_enabled()


# -- stage ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["train", "predict", "val", "Validate"])
def test_an_unknown_stage_is_refused_naming_the_accepted_ones(stage: str) -> None:
    accepted = sorted(["validate", "test"])
    with pytest.raises(
        ValueError, match=re.escape(f"EvaluationLoop(stage={stage!r}): accepted values are {accepted}")
    ):
        EvaluationLoop(stage=stage)


@pytest.mark.parametrize(("stage", "step_name"), [("validate", "validation_step"), ("test", "test_step")])
def test_each_stage_runs_its_own_step(quiet: dict[str, Any], stage: str, step_name: str) -> None:
    calls: list[str] = []

    class Probe(Regressor):
        def validation_step(self, batch, batch_idx):
            calls.append("validation_step")

        def test_step(self, batch, batch_idx):
            calls.append("test_step")

    getattr(tt.Trainer(**quiet), stage)(Probe(), _loader(6, 2))
    assert calls == [step_name] * 3


# -- limit_batches -------------------------------------------------------------------------------


def test_limit_val_batches():
    calls: list[int] = []

    class Probe(Regressor):
        def validation_step(self, batch, batch_idx):
            calls.append(batch_idx)

    tt.Trainer(limit_val_batches=2, **QUIET).validate(Probe(), _loader(20, 2))
    assert calls == [0, 1]


def test_limited_cuts_to_an_int_count_or_a_float_fraction_of_the_length() -> None:
    data = list(range(10))
    assert limited(data, None) is data
    assert list(limited(data, 3)) == data[:3]
    assert list(limited(data, 0)) == []
    assert list(limited(data, 25)) == data
    assert list(limited(data, 0.25)) == data[: int(10 * 0.25)]  # 2: the fraction rounds down
    assert list(limited(data, 1.0)) == data
    assert list(limited(iter(data), 4)) == data[:4]  # an int needs no length
    with pytest.raises(
        ValueError, match=re.escape("batch limit 0.5 is a fraction, but the dataloader has no length")
    ):
        limited(iter(data), 0.5)


# 10 samples in batches of 4: sizes 4, 4, 2.
@pytest.mark.parametrize(
    ("limit", "num_batches"),
    [(2, 2), (0.5, int(3 * 0.5)), (0.9, int(3 * 0.9)), (1.0, 3), (10, 3)],
    ids=["int", "half", "fraction-rounds-down", "whole", "int-past-the-end"],
)
@pytest.mark.parametrize("stage", ["validate", "test"])
def test_limit_batches_evaluates_only_the_first_batches(
    quiet: dict[str, Any], stage: str, limit: int | float, num_batches: int
) -> None:
    calls: list[int] = []

    class Probe(Regressor):
        def validation_step(self, batch, batch_idx):
            calls.append(batch_idx)
            return super().validation_step(batch, batch_idx)

        def test_step(self, batch, batch_idx):
            calls.append(batch_idx)
            return super().test_step(batch, batch_idx)

    module = Probe()
    loader = _loader(10, 4)
    trainer = tt.Trainer(**quiet)
    setattr(trainer, f"{stage}_loop", EvaluationLoop(stage, limit_batches=limit))
    (metrics,) = getattr(trainer, stage)(module, loader)

    seen = sum(len(x) for x, _ in list(loader)[:num_batches])
    x, y = loader.dataset.tensors
    with torch.no_grad():
        expected = torch.nn.functional.mse_loss(module.net(x[:seen]), y[:seen])
    assert calls == list(range(num_batches))
    name = "val/loss" if stage == "validate" else "test/loss"
    assert metrics[name] == pytest.approx(float(expected), rel=1e-5)


def test_limit_val_batches_as_a_fraction(quiet: dict[str, Any]) -> None:
    calls: list[int] = []

    class Probe(Regressor):
        def validation_step(self, batch, batch_idx):
            calls.append(batch_idx)

    loader = _loader(20, 2)  # 10 batches
    tt.Trainer(limit_val_batches=0.35, **quiet).validate(Probe(), loader)
    assert calls == list(range(int(len(loader) * 0.35)))  # 3 batches


def test_limit_zero_evaluates_nothing(quiet: dict[str, Any]) -> None:
    calls: list[int] = []

    class Probe(Regressor):
        def validation_step(self, batch, batch_idx):
            calls.append(batch_idx)

    assert tt.Trainer(limit_val_batches=0, **quiet).validate(Probe(), _loader(8, 2)) == [{}]
    assert calls == []


class _Unsized(IterableDataset):
    """The samples of ``data``, one by one, with no ``__len__``: its DataLoader has no length either."""

    def __init__(self, data: TensorDataset) -> None:
        self.data = data

    def __iter__(self):
        return iter(self.data)


def test_a_fractional_limit_on_a_loader_without_length_is_refused(quiet: dict[str, Any]) -> None:
    loader = DataLoader(_Unsized(_loader(8, 2).dataset), batch_size=2)
    with pytest.raises(TypeError):
        len(loader)  # the premise: nothing to take a fraction of
    with pytest.raises(ValueError, match="is a fraction, but the dataloader has no length"):
        tt.Trainer(limit_val_batches=0.5, **quiet).validate(Regressor(), loader)
    (metrics,) = tt.Trainer(limit_val_batches=2, **quiet).validate(Regressor(), loader)  # an int is fine
    assert set(metrics) == {"val/loss"}


# -- batch_progress ------------------------------------------------------------------------------


def _counts(progress: Any, which: str) -> int:
    counts = getattr(progress, which)
    assert counts.ready == counts.started == counts.processed == counts.completed
    return counts.completed


def test_batch_progress_counts_batches_in_total_over_calls_and_current_per_call(
    quiet: dict[str, Any],
) -> None:
    module = Regressor()
    trainer = tt.Trainer(**quiet)
    first, second = _loader(10, 4), _loader(4, 2)  # 3 batches, then 2
    progress = trainer.validate_loop.batch_progress
    assert _counts(progress, "total") == _counts(progress, "current") == 0

    trainer.validate(module, first)
    assert _counts(progress, "total") == len(first)
    assert _counts(progress, "current") == len(first)

    trainer.validate(module, second)
    assert _counts(progress, "total") == len(first) + len(second)
    assert _counts(progress, "current") == len(second)

    trainer.test(module, first)  # the test loop keeps its own counts
    assert _counts(trainer.test_loop.batch_progress, "total") == len(first)
    assert _counts(progress, "total") == len(first) + len(second)


def test_batch_progress_counts_only_the_batches_run(quiet: dict[str, Any]) -> None:
    loop = EvaluationLoop("test", limit_batches=2)
    trainer = tt.Trainer(**quiet)
    trainer.test_loop = loop
    trainer.test(Regressor(), _loader(20, 2))  # 10 batches, 2 run
    trainer.test(Regressor(), _loader(20, 2))
    assert _counts(loop.batch_progress, "total") == 2 + 2
    assert _counts(loop.batch_progress, "current") == 2


# -- an empty dataloader warns, once per Trainer call ----------------------------------------------


def _empty_warnings(record: Any) -> list[str]:
    return [str(w.message) for w in record if "yielded no batches" in str(w.message)]


def _empty() -> DataLoader:
    return DataLoader(TensorDataset(torch.empty(0, 3), torch.empty(0, 1)), batch_size=2)


def test_an_empty_validation_loader_warns_once_per_fit(quiet: dict[str, Any]) -> None:
    trainer = tt.Trainer(max_epochs=3, **quiet)
    with pytest.warns(UserWarning) as record:
        trainer.fit(Regressor(), _loader(4, 2), _empty())
    assert _empty_warnings(record) == [
        "the validation dataloader (DataLoader, len 0) yielded no batches: validation_step never ran "
        "and no validation metrics were logged"
    ]  # 3 validation runs, one warning
    assert trainer.state.global_step == 3 * 2 and "val/loss" not in trainer.callback_metrics
    trainer.fit_loop.max_epochs = 4  # the same trainer (and loops) fits on for one more epoch
    with pytest.warns(UserWarning) as record:
        trainer.fit(Regressor(), _loader(4, 2), _empty())  # a new fit call: warned again
    assert len(_empty_warnings(record)) == 1


def test_an_iterable_that_yields_nothing_warns_at_each_validate_call(quiet: dict[str, Any]) -> None:
    loader = DataLoader(_Unsized(_empty().dataset), batch_size=2)
    trainer = tt.Trainer(**quiet)
    for _ in range(2):
        with pytest.warns(UserWarning, match=r"the validation dataloader \(DataLoader, no len\) yielded no"):
            assert trainer.validate(Regressor(), loader) == [{}]  # what is returned is unchanged


def test_an_empty_test_loader_names_the_test_dataloader(quiet: dict[str, Any]) -> None:
    with pytest.warns(
        UserWarning, match=r"^the test dataloader \(DataLoader, len 0\) yielded no batches: test_step"
    ):
        assert tt.Trainer(**quiet).test(Regressor(), _empty()) == [{}]


def test_a_fraction_that_cuts_to_no_batches_names_the_limit(quiet: dict[str, Any]) -> None:
    with pytest.warns(UserWarning, match=r"\(DataLoader, len 3, cut by limit_val_batches=0\.2\) yielded no"):
        tt.Trainer(limit_val_batches=0.2, **quiet).validate(Regressor(), _loader(6, 2))


def test_a_limit_of_zero_asks_for_no_batches_and_does_not_warn(quiet: dict[str, Any]) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tt.Trainer(limit_val_batches=0, **quiet).validate(Regressor(), _loader(8, 2)) == [{}]
        tt.Trainer(max_epochs=1, **quiet).fit(Regressor(), _loader(4, 2), _loader(4, 2))  # data: silent
