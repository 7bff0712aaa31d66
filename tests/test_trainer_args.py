"""Every bad ``Trainer`` argument fails at construction, naming the argument, the value and what is accepted."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import tasktrain as tt
from tasktrain.callbacks import EarlyStopping
from tasktrain.loggers import CSVLogger
from tasktrain.strategies import SingleDevice

QUIET: dict[str, Any] = dict(logger=False, enable_progress_bar=False, enable_checkpointing=False)

# (argument, bad value, fragments of the "accepted" part of the message)
BAD_ARGUMENTS: list[tuple[str, Any, list[str]]] = [
    ("max_epochs", -1, ["int >= 0", "None"]),
    ("max_epochs", 1.5, ["int >= 0", "None"]),
    ("max_epochs", True, ["int >= 0"]),
    ("max_steps", -5, ["int >= 0", "None"]),
    ("max_steps", "100", ["int >= 0"]),
    ("accumulate_grad_batches", 0, ["int >= 1"]),
    ("accumulate_grad_batches", None, ["int >= 1"]),
    ("accumulate_grad_batches", 2.0, ["int >= 1"]),
    ("log_every_n_steps", 0, ["int >= 1"]),
    ("check_val_every_n_epoch", 0, ["int >= 1", "None"]),
    ("num_nodes", 0, ["int >= 1"]),
    ("seed", -1, ["int >= 0", "None"]),
    ("seed", 2**32, ["2**32"]),
    ("gradient_clip_algorithm", "l2", ["'norm'", "'value'"]),
    ("precision", "16", ["'32-true'", "'bf16-mixed'", "'16-mixed'", "'bf16-true'"]),
    ("precision", 32, ["'32-true'"]),
    ("accelerator", "tpu", ["'auto'", "'cpu'", "'cuda'", "'mps'"]),
    ("on_nonfinite_loss", "ignore", ["'raise'", "'skip'"]),
    ("strategy", "horovod", ["'auto'", "'single'"]),
    ("strategy", 3, ["'auto'", "'single'"]),
    ("enable_progress_bar", "yes", ["True or False"]),
    ("enable_checkpointing", 1, ["True or False"]),
    ("deterministic", None, ["True or False"]),
    ("compile", "no", ["False, True or a dict", "'backend'", "'mode'"]),
    ("compile", {"backend": "no-such-backend"}, ["torch.compile rejected", "no-such-backend"]),
    ("compile", {"mode": "fastest"}, ["torch.compile rejected", "reduce-overhead"]),
    ("compile", {"model": None}, ["unknown keys ['model']", "'fullgraph'"]),
    ("gradient_clip_val", 0, ["> 0", "None"]),
    ("gradient_clip_val", -1.0, ["> 0", "None"]),
    ("gradient_clip_val", "1.0", ["> 0", "None"]),
    ("gradient_clip_val", True, ["> 0", "None"]),
    ("gradient_clip_val", float("nan"), ["> 0", "None"]),
    ("val_check_interval", 0, ["None", "int >= 1", "(0.0, 1.0]"]),
    ("val_check_interval", 1.5, ["None", "int >= 1", "(0.0, 1.0]"]),
    ("val_check_interval", True, ["None", "int >= 1"]),
    ("limit_train_batches", 0, ["None", "int >= 1", "(0.0, 1.0]"]),
    ("limit_train_batches", -0.5, ["(0.0, 1.0]"]),
    ("limit_val_batches", -1, ["None", "int >= 0", "(0.0, 1.0]"]),
    ("limit_val_batches", "all", ["None", "int >= 0"]),
    ("devices", 0, ["int >= 1", "'auto'"]),
    ("devices", "gpu", ["int >= 1", "'auto'"]),
    ("devices", True, ["int >= 1", "'auto'"]),
    ("logger", "csv", ["True", "False", "Logger"]),
    ("logger", [CSVLogger("memory://args"), "tensorboard"], ["True", "False", "Logger"]),
    ("logger", 1, ["True", "False", "Logger"]),
    ("callbacks", ["not a callback"], ["Callback"]),
    ("callbacks", EarlyStopping(), ["Callback"]),
]


@pytest.mark.parametrize(
    ("name", "value", "accepted"),
    BAD_ARGUMENTS,
    ids=[
        f"{name}={type(value).__name__ if isinstance(value, (list, EarlyStopping)) else value!r}"
        for name, value, _ in BAD_ARGUMENTS
    ],
)
def test_bad_argument_message(name: str, value: Any, accepted: list[str]):
    with pytest.raises((ValueError, TypeError)) as info:
        tt.Trainer(**{**QUIET, name: value})
    message = str(info.value)
    assert name in message
    assert repr(value) in message, f"the bad value {value!r} is not shown in: {message}"
    for fragment in accepted:
        assert fragment in message, f"{fragment!r} missing from: {message}"


def test_num_nodes_without_a_launcher_gives_the_command_to_use(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ValueError, match=r"num_nodes=2.*torchrun --nnodes=2.*srun --nodes=2"):
        tt.Trainer(**QUIET, num_nodes=2)


def test_unknown_strategy_lists_available():
    with pytest.raises(ValueError) as info:
        tt.Trainer(**QUIET, strategy="horovod")
    assert (
        "'auto'" in str(info.value)
        and "'ddp'" in str(info.value)
        and "'deepspeed_stage_3'" in str(info.value)
    )


def test_strategy_object_with_accelerator_conflicts():
    with pytest.raises(ValueError, match="accelerator='cpu'"):
        tt.Trainer(**QUIET, strategy=SingleDevice("cpu"), accelerator="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_accelerator_without_cuda():
    with pytest.raises(RuntimeError, match="accelerator='cuda'"):
        tt.Trainer(**QUIET, accelerator="cuda")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(max_epochs=0),
        dict(max_steps=0),
        dict(max_epochs=None, max_steps=None),
        dict(limit_val_batches=0),
        dict(limit_train_batches=0.5, limit_val_batches=1.0),
        dict(val_check_interval=0.25),
        dict(check_val_every_n_epoch=None),
        dict(gradient_clip_val=0.5, gradient_clip_algorithm="value"),
        dict(devices="auto"),
        dict(strategy="single", accelerator="cpu"),
        dict(strategy=SingleDevice("cpu")),
        dict(seed=0),
        dict(on_nonfinite_loss="skip"),
        dict(logger=[CSVLogger("memory://args-ok")]),
        dict(callbacks=[]),
        dict(callbacks=(EarlyStopping(),)),
    ],
)
def test_good_arguments_are_accepted(kwargs: dict[str, Any]):
    tt.Trainer(**{**QUIET, **kwargs})


def test_defaults_without_epochs_or_steps_train_one_epoch():
    trainer = tt.Trainer(**QUIET)
    assert trainer.fit_loop.max_epochs == 1
    assert trainer.fit_loop.max_steps is None
    trainer = tt.Trainer(**QUIET, max_steps=10)
    assert trainer.fit_loop.max_epochs is None


def test_default_callbacks_and_logger(tmp_path):
    from tasktrain.callbacks import ModelCheckpoint, ProgressBar

    trainer = tt.Trainer(default_root_dir=tmp_path)
    kinds = [type(cb) for cb in trainer.callbacks]
    assert ProgressBar in kinds and ModelCheckpoint in kinds
    assert len(trainer.loggers) == 1 and isinstance(trainer.loggers[0], CSVLogger)
    assert tt.Trainer(**QUIET).callbacks == []
    assert tt.Trainer(**QUIET).loggers == []
