"""The hook order documented in ``tasktrain.loops.hooks``, pinned call by call."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
from tasktrain.callbacks import Callback
from tasktrain.loops import HOOKS, HookDispatcher

BATCH_HOOKS = {
    "on_train_batch_start",
    "on_train_batch_end",
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_test_batch_start",
    "on_test_batch_end",
    "on_predict_batch_start",
    "on_predict_batch_end",
}


def _batch_idx(name: str, args: tuple[Any, ...]) -> int | None:
    """The batch_idx argument of a batch hook (last positional argument), else None."""
    return int(args[-1]) if name in BATCH_HOOKS else None


def _module_recorder(name: str):
    def hook(self, *args):
        self.calls.append(("module", name, _batch_idx(name, args), self.global_step))

    hook.__name__ = name
    return hook


def _callback_recorder(name: str):
    def hook(self, trainer, module, *args):
        assert trainer.module is module
        self.calls.append(("callback", name, _batch_idx(name, args), trainer.state.global_step))

    hook.__name__ = name
    return hook


class _Task(tt.TaskModule):
    def __init__(self, calls: list[tuple[Any, ...]]) -> None:
        super().__init__()
        self.calls = calls
        self.net = torch.nn.Linear(2, 1)

    def compute_loss(self, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def predict_step(self, batch, batch_idx):
        return self.net(batch[0])


# Every hook overridden on the module and on a callback, generated from the one list in hooks.py.
RecordingTask = type("RecordingTask", (_Task,), {name: _module_recorder(name) for name in HOOKS})


class RecordingCallback(Callback):
    def __init__(self, calls: list[tuple[Any, ...]]) -> None:
        self.calls = calls


for _name in HOOKS:
    setattr(RecordingCallback, _name, _callback_recorder(_name))


def _loader(n: int, batch_size: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(
        TensorDataset(torch.randn(n, 2, generator=g), torch.randn(n, 1, generator=g)), batch_size
    )


def _trainer(**kwargs: Any) -> tt.Trainer:
    defaults: dict[str, Any] = dict(logger=False, enable_progress_bar=False, enable_checkpointing=False)
    return tt.Trainer(**{**defaults, **kwargs})


def _both(names: list[tuple[str, int | None, int]]) -> list[tuple[str, str, int | None, int]]:
    """Each hook runs on the module first, then on the callback."""
    return [(who, name, idx, step) for name, idx, step in names for who in ("module", "callback")]


def _eval_hooks(prefix: str, num_batches: int, step: int) -> list[tuple[str, int | None, int]]:
    """The documented evaluation order for ``prefix`` in {validation, test, predict}."""
    out = [(f"on_{prefix}_start", None, step), (f"on_{prefix}_epoch_start", None, step)]
    for i in range(num_batches):
        out += [(f"on_{prefix}_batch_start", i, step), (f"on_{prefix}_batch_end", i, step)]
    return [*out, (f"on_{prefix}_epoch_end", None, step), (f"on_{prefix}_end", None, step)]


def expected_fit_hooks(
    num_batches: int,
    accumulate: int,
    epochs: int,
    val_batches: int,
    val_every_n_steps: int | None = None,
) -> list[tuple[str, int | None, int]]:
    """The documented order of ``tasktrain.loops.hooks`` for a fit, as (hook, batch_idx, global_step)."""
    out: list[tuple[str, int | None, int]] = [("on_fit_start", None, 0), ("on_train_start", None, 0)]
    step = 0
    last_val_step = -1
    for _ in range(epochs):
        out.append(("on_train_epoch_start", None, step))
        indices = list(range(num_batches))
        groups = [indices[i : i + accumulate] for i in range(0, num_batches, accumulate)]
        for group in groups:
            for idx in group:
                out += [
                    ("on_train_batch_start", idx, step),
                    ("on_before_backward", None, step),
                    ("on_after_backward", None, step),
                    ("on_train_batch_end", idx, step),
                ]
            # gradients final, global_step not yet incremented
            out += [("on_before_optimizer_step", None, step), ("on_before_zero_grad", None, step)]
            step += 1
            if val_every_n_steps is not None and step % val_every_n_steps == 0:
                out += _eval_hooks("validation", val_batches, step)
                last_val_step = step
            out.append(("on_train_step_end", None, step))  # after this step's logs and validation
        if last_val_step != step:  # check_val_every_n_epoch=1, unless it just ran at this step
            out += _eval_hooks("validation", val_batches, step)
            last_val_step = step
        out.append(("on_train_epoch_end", None, step))
    return [*out, ("on_train_end", None, step), ("on_fit_end", None, step)]


def test_fit_hook_order_with_accumulation_remainder_and_validation():
    calls: list[tuple[Any, ...]] = []
    # 5 micro-batches, accumulation 2: groups [0, 1], [2, 3] and the remainder group [4].
    trainer = _trainer(max_epochs=2, accumulate_grad_batches=2, callbacks=[RecordingCallback(calls)])
    trainer.fit(RecordingTask(calls), _loader(10, 2), _loader(6, 3))

    assert calls == _both(expected_fit_hooks(num_batches=5, accumulate=2, epochs=2, val_batches=2))
    assert trainer.state.global_step == 6


def test_fit_hook_order_with_val_check_interval():
    calls: list[tuple[Any, ...]] = []
    trainer = _trainer(
        max_epochs=1, accumulate_grad_batches=2, val_check_interval=2, callbacks=[RecordingCallback(calls)]
    )
    trainer.fit(RecordingTask(calls), _loader(10, 2), _loader(4, 4))

    expected = expected_fit_hooks(num_batches=5, accumulate=2, epochs=1, val_batches=1, val_every_n_steps=2)
    assert calls == _both(expected)
    names = [name for who, name, _, _ in calls if who == "module"]
    assert names.count("on_validation_start") == 2  # after step 2 and at epoch end (step 3)


def test_training_hooks_first_fire_in_the_order_of_HOOKS():
    calls: list[tuple[Any, ...]] = []
    _trainer(max_steps=2, accumulate_grad_batches=2, callbacks=[RecordingCallback(calls)]).fit(
        RecordingTask(calls), _loader(8, 2)
    )
    first_seen = list(dict.fromkeys(name for who, name, _, _ in calls if who == "module"))
    assert first_seen == [h for h in HOOKS if h in first_seen]
    assert "on_validation_start" not in first_seen  # no validation data: no validation hooks


@pytest.mark.parametrize(
    ("method", "prefix"), [("validate", "validation"), ("test", "test"), ("predict", "predict")]
)
def test_evaluation_hook_order(method: str, prefix: str):
    calls: list[tuple[Any, ...]] = []
    trainer = _trainer(callbacks=[RecordingCallback(calls)])
    getattr(trainer, method)(RecordingTask(calls), _loader(7, 3))

    assert calls == _both(_eval_hooks(prefix, num_batches=3, step=0))


def test_on_save_checkpoint_and_on_exception(tmp_path):
    calls: list[tuple[Any, ...]] = []
    trainer = _trainer(max_steps=1, callbacks=[RecordingCallback(calls)])
    module = RecordingTask(calls)
    trainer.fit(module, _loader(4, 2))
    calls.clear()
    trainer.save_checkpoint(str(tmp_path / "ckpt"))
    assert calls == _both([("on_save_checkpoint", None, 1)])

    class Failing(_Task):
        def compute_loss(self, batch):
            raise RuntimeError("boom")

    seen: list[BaseException] = []

    class OnException(Callback):
        def on_exception(self, trainer, module, error):
            seen.append(error)

    with pytest.raises(RuntimeError, match="boom"):
        _trainer(max_steps=1, callbacks=[OnException()]).fit(Failing([]), _loader(4, 2))
    assert len(seen) == 1 and str(seen[0]) == "boom"


def test_hook_arguments():
    seen: dict[str, Any] = {}

    class Inspect(Callback):
        def on_before_backward(self, trainer, module, loss):
            seen.setdefault("loss", loss)

        def on_before_optimizer_step(self, trainer, module, optimizer):
            seen["optimizer"] = optimizer
            seen["grads"] = [p.grad is not None for p in module.parameters()]

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen.setdefault("outputs", outputs)
            seen.setdefault("batch", batch)

    trainer = _trainer(max_steps=1, callbacks=[Inspect()])
    trainer.fit(_Task([]), _loader(4, 2))
    assert isinstance(seen["loss"], torch.Tensor) and seen["loss"].ndim == 0
    assert seen["optimizer"] is trainer.optimizer
    assert all(seen["grads"])  # gradients are there before the step
    assert isinstance(seen["outputs"], torch.Tensor)
    assert isinstance(seen["batch"], list) and seen["batch"][0].shape == (2, 2)


def test_dispatcher_skips_hooks_a_callback_does_not_override(monkeypatch):
    base_calls: list[str] = []

    def base_hook(name: str):
        def hook(self, *args):
            base_calls.append(name)

        return hook

    # Replace the no-op base implementations: if the dispatcher ever called a non-overridden hook,
    # it would land here.
    for name in HOOKS:
        monkeypatch.setattr(Callback, name, base_hook(name))
        monkeypatch.setattr(tt.TaskModule, name, base_hook(name))

    only: list[str] = []

    class OnlyFitStart(Callback):
        def on_fit_start(self, trainer, module):
            only.append("on_fit_start")

    trainer = _trainer(max_epochs=1, callbacks=[OnlyFitStart()])
    module = _Task([])
    trainer.fit(module, _loader(6, 2), _loader(4, 2))
    trainer.validate(module, _loader(4, 2))
    trainer.test(module, _loader(4, 2))
    trainer.predict(module, _loader(4, 2))

    assert only == ["on_fit_start"]
    assert base_calls == []


def test_dispatcher_targets():
    class OnlyEpochEnd(Callback):
        def on_train_epoch_end(self, trainer, module):
            pass

    dispatcher = HookDispatcher(object(), _Task([]), [OnlyEpochEnd(), Callback()])
    assert dispatcher.has("on_train_epoch_end")
    assert not dispatcher.has("on_train_batch_start")
    assert not dispatcher.has("on_fit_start")
    with_module = HookDispatcher(object(), RecordingTask([]), [])
    assert all(with_module.has(name) for name in HOOKS)


def test_callbacks_run_in_the_order_given_after_the_module():
    order: list[str] = []

    class Named(Callback):
        def __init__(self, name: str) -> None:
            self.name = name

        def on_train_start(self, trainer, module):
            order.append(self.name)

    class Task(_Task):
        def on_train_start(self):
            order.append("module")

    _trainer(max_steps=1, callbacks=[Named("a"), Named("b"), Named("c")]).fit(Task([]), _loader(2, 2))
    assert order == ["module", "a", "b", "c"]
