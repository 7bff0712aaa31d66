"""``Preemption``: a termination signal finishes the optimizer step, saves a checkpoint and exits 99."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import tasktrain as tt
from tasktrain.callbacks import Callback, ModelCheckpoint, Preemption
from tasktrain.callbacks.preemption import EXIT_PREEMPTED
from tasktrain.checkpoint import find_last, is_complete, read_state

# The run of the subprocess test: 50 samples, batches of 4, accumulation 2 -> 7 steps per epoch.
# SIGTERM arrives while step 10 is being accumulated (its second micro-batch); step 10 completes,
# is checkpointed, and the process exits 99. Another process resumes from "last" to step 20.
CHILD = textwrap.dedent(
    """
    import os
    import signal
    import sys

    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    import tasktrain as tt
    from tasktrain.callbacks import Callback


    class Net(tt.TaskModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(4, 16), torch.nn.Dropout(0.3), torch.nn.ReLU(), torch.nn.Linear(16, 1)
            )

        def compute_loss(self, batch):
            x, y = batch
            return F.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=1e-2)
            return opt, {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 3, 0.5), "interval": "step"}


    class SigtermAt(Callback):
        def __init__(self, step):
            self.step = step

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.state.global_step == self.step and batch_idx % 2 == 1:
                os.kill(os.getpid(), signal.SIGTERM)


    def fit(root, ckpt_path=None, sigterm_at=-1, seed=0):
        torch.manual_seed(seed)
        module = Net()
        g = torch.Generator().manual_seed(1)
        x = torch.randn(50, 4, generator=g)
        ds = TensorDataset(x, x.sum(1, keepdim=True))
        trainer = tt.Trainer(
            max_steps=20, accumulate_grad_batches=2, val_check_interval=3, default_root_dir=root,
            logger=False, enable_progress_bar=False, accelerator="cpu", callbacks=[SigtermAt(sigterm_at)],
        )
        trainer.fit(module, DataLoader(ds, batch_size=4, shuffle=True), DataLoader(ds, batch_size=8), ckpt_path)
        return module


    if __name__ == "__main__":
        root, ckpt_path, sigterm_at, seed, out = sys.argv[1:]
        module = fit(root, None if ckpt_path == "-" else ckpt_path, int(sigterm_at), int(seed))
        torch.save(module.state_dict(), out)
    """
)


def _load_script(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("tasktrain_preemption_child", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sigterm_in_a_subprocess_exits_99_and_the_next_process_resumes_exactly(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    root = tmp_path / "run"

    def run(*args: Any) -> subprocess.Popen:
        cmd = [sys.executable, str(script), str(root), *map(str, args)]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    interrupted = run("-", 9, 0, tmp_path / "interrupted.pt")
    # The uninterrupted run, from the same script, while the child works.
    reference = _load_script(script).fit(str(tmp_path / "reference")).state_dict()
    output = interrupted.communicate(timeout=120)[0].decode()
    assert interrupted.returncode == EXIT_PREEMPTED == 99, output
    assert not (tmp_path / "interrupted.pt").exists()  # fit did not return
    last = find_last(str(root))
    assert last is not None and Path(last).name == "step=00000010" and is_complete(last)
    assert read_state(last)["global_step"] == 10

    resumed = run("last", -1, 1234, tmp_path / "resumed.pt")
    output = resumed.communicate(timeout=120)[0].decode()
    assert resumed.returncode == 0, output
    final = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert final.keys() == reference.keys()
    assert all(torch.equal(final[k], reference[k]) for k in reference), "the resumed run differs"


# -- in-process ------------------------------------------------------------------------------------
class Net(tt.TaskModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(2, 1)
        self.micro_batches = 0

    def compute_loss(self, batch):
        self.micro_batches += 1
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(
        TensorDataset(torch.randn(16, 2, generator=g), torch.randn(16, 1, generator=g)), batch_size=2
    )


class SignalAt(Callback):
    """Send ``sig`` to this process at the start of micro-batch ``batch_idx`` while ``step`` is accumulated."""

    def __init__(self, step: int, batch_idx: int, sig: signal.Signals = signal.SIGTERM) -> None:
        self.step, self.batch_idx, self.sig = step, batch_idx, sig

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.state.global_step == self.step and batch_idx == self.batch_idx:
            os.kill(os.getpid(), self.sig)


def _trainer(tmp_path: Path, callbacks: list[Callback], **kwargs: Any) -> tt.Trainer:
    args: dict[str, Any] = dict(
        max_steps=20, logger=False, enable_progress_bar=False, accelerator="cpu", default_root_dir=tmp_path
    )
    return tt.Trainer(callbacks=callbacks, **{**args, **kwargs})


def test_sigterm_finishes_the_accumulating_step_then_saves_and_exits(tmp_path):
    previous = signal.getsignal(signal.SIGTERM)
    module = Net()
    trainer = _trainer(tmp_path, [SignalAt(step=2, batch_idx=1)], accumulate_grad_batches=4)
    with pytest.raises(SystemExit) as exit_info:
        trainer.fit(module, _loader())
    assert exit_info.value.code == 99
    assert trainer.state.global_step == 3
    assert module.micro_batches == 12  # the step's 4 micro-batches all ran, nothing after
    last = find_last(str(tmp_path))
    assert last == str(tmp_path / "checkpoints" / "step=00000003") and is_complete(last)
    assert signal.getsignal(signal.SIGTERM) is previous

    resumed = _trainer(tmp_path, [], accumulate_grad_batches=4, max_steps=4)
    resumed.fit(Net(), _loader(), ckpt_path="last")
    assert resumed.state.global_step == 4


def test_other_signals_and_exit_codes_and_the_users_checkpoint_callback(tmp_path):
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "mine"), filename="preempted-step={step}")
    callbacks = [
        SignalAt(step=5, batch_idx=5, sig=signal.SIGUSR1),
        ckpt,
        Preemption(("SIGUSR1",), exit_code=42),
    ]
    trainer = _trainer(tmp_path, callbacks)
    with pytest.raises(SystemExit) as exit_info:
        trainer.fit(Net(), _loader())
    assert exit_info.value.code == 42
    assert ckpt.last == str(tmp_path / "mine" / "preempted-step=6") and is_complete(ckpt.last)
    assert not (tmp_path / "checkpoints").exists()


def test_without_a_checkpoint_callback_it_saves_under_default_root_dir(tmp_path):
    trainer = _trainer(tmp_path, [SignalAt(step=1, batch_idx=1), Preemption()], enable_checkpointing=False)
    with pytest.raises(SystemExit):
        trainer.fit(Net(), _loader())
    assert find_last(str(tmp_path)) == str(tmp_path / "checkpoints" / "step=00000002")


class SigtermInValidation(Callback):
    def on_validation_start(self, trainer, module):
        os.kill(os.getpid(), signal.SIGTERM)


def test_a_signal_during_the_final_validation_still_checkpoints_and_exits(tmp_path):
    trainer = _trainer(tmp_path, [SigtermInValidation()], max_steps=None, max_epochs=1)
    g = torch.Generator().manual_seed(0)
    val = DataLoader(
        TensorDataset(torch.randn(4, 2, generator=g), torch.randn(4, 1, generator=g)), batch_size=2
    )
    with pytest.raises(SystemExit) as exit_info:
        trainer.fit(Net(), _loader(), val)
    assert exit_info.value.code == 99
    last = find_last(str(tmp_path))
    assert last is not None and read_state(last)["global_step"] == 8


class Fails(Callback):
    def on_train_step_end(self, trainer, module):
        raise RuntimeError("boom")


def test_handlers_are_installed_only_during_fit(tmp_path):
    previous = signal.getsignal(signal.SIGTERM)
    seen: list[Any] = []

    class Look(Callback):
        def on_train_step_end(self, trainer, module):
            seen.append(signal.getsignal(signal.SIGTERM))

    trainer = _trainer(tmp_path, [Look()], max_steps=1)
    trainer.fit(Net(), _loader())
    (preemption,) = [cb for cb in trainer.callbacks if isinstance(cb, Preemption)]
    assert seen == [preemption._handle]
    assert signal.getsignal(signal.SIGTERM) is previous

    with pytest.raises(RuntimeError, match="boom"):
        _trainer(tmp_path, [Fails()], max_steps=1).fit(Net(), _loader())
    assert signal.getsignal(signal.SIGTERM) is previous


def test_fit_in_another_thread_installs_no_handler(tmp_path):
    previous = signal.getsignal(signal.SIGTERM)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            _trainer(tmp_path, [], max_steps=2).fit(Net(), _loader())
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert errors == []
    assert signal.getsignal(signal.SIGTERM) is previous


def test_installed_by_default_only_with_checkpointing(tmp_path):
    def count(**kwargs: Any) -> int:
        trainer = tt.Trainer(logger=False, enable_progress_bar=False, default_root_dir=tmp_path, **kwargs)
        return sum(isinstance(cb, Preemption) for cb in trainer.callbacks)

    assert count() == 1
    assert count(enable_checkpointing=False) == 0
    assert count(callbacks=[Preemption(("SIGUSR2",))]) == 1


def test_unknown_signal_names_are_refused():
    with pytest.raises(ValueError, match=r"SIGNOPE"):
        Preemption(signals=("SIGTERM", "SIGNOPE"))


# -- signals during set-up and restore, and requeueing ----------------------------------------------
class SigtermOnLoad(Callback):
    """A SIGTERM while the checkpoint is being restored (the handler is armed by then)."""

    def on_load_checkpoint(self, trainer, module, checkpoint):
        os.kill(os.getpid(), signal.SIGTERM)


def test_a_sigterm_during_restore_exits_99_without_a_new_checkpoint(tmp_path):
    _trainer(tmp_path, [], max_steps=2).fit(Net(), _loader())
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    previous = signal.getsignal(signal.SIGTERM)
    trainer = _trainer(tmp_path, [SigtermOnLoad()], max_steps=6)
    with pytest.raises(SystemExit) as exit_info:
        trainer.fit(Net(), _loader(), ckpt_path="auto")
    assert exit_info.value.code == EXIT_PREEMPTED
    assert trainer.state.global_step == 2  # restored, not trained: nothing new to save
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before
    assert signal.getsignal(signal.SIGTERM) is previous


def test_a_sigterm_during_set_up_of_a_fresh_run_exits_99_and_writes_nothing(tmp_path):
    class SigtermInConfigureModel(Net):
        def configure_model(self):
            os.kill(os.getpid(), signal.SIGTERM)

    trainer = _trainer(tmp_path, [], max_steps=6)
    with pytest.raises(SystemExit) as exit_info:
        trainer.fit(SigtermInConfigureModel(), _loader())
    assert exit_info.value.code == EXIT_PREEMPTED and trainer.state.global_step == 0
    assert find_last(str(tmp_path)) is None


def test_a_second_fit_signalled_at_start_saves_what_the_first_trained(tmp_path):
    class SigtermAtFitStart(Callback):
        def __init__(self) -> None:
            self.fits = 0

        def on_fit_start(self, trainer, module):
            self.fits += 1
            if self.fits == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    # Checkpointing off: the first fit's 3 steps live only in memory; Preemption alone saves them.
    trainer = _trainer(tmp_path, [SigtermAtFitStart(), Preemption()], max_steps=3, enable_checkpointing=False)
    module = Net()
    trainer.fit(module, _loader())
    assert find_last(str(tmp_path)) is None
    trainer.fit_loop.max_steps = 6
    with pytest.raises(SystemExit):
        trainer.fit(module, _loader())
    assert trainer.state.global_step == 3
    assert read_state(find_last(str(tmp_path)))["global_step"] == 3


def test_requeue_runs_scontrol_on_rank_zero_after_the_checkpoint(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "scontrol.args"
    stand_in = bin_dir / "scontrol"
    stand_in.write_text(f'#!/bin/sh\necho "$@" >> {record}\n')
    stand_in.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "31337")
    trainer = _trainer(tmp_path, [SignalAt(step=1, batch_idx=1), Preemption(requeue=True)])
    with pytest.raises(SystemExit) as exit_info:
        trainer.fit(Net(), _loader())
    assert exit_info.value.code == EXIT_PREEMPTED
    assert record.read_text() == "requeue 31337\n"
    assert find_last(str(tmp_path)) is not None

    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "900")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    with pytest.raises(SystemExit):
        _trainer(tmp_path / "array", [SignalAt(step=1, batch_idx=1), Preemption(requeue=True)]).fit(
            Net(), _loader()
        )
    assert record.read_text().splitlines()[-1] == "requeue 900_7"


def test_requeue_outside_slurm_warns_and_still_exits_99(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    trainer = _trainer(tmp_path, [SignalAt(step=1, batch_idx=1), Preemption(requeue=True)])
    with pytest.warns(UserWarning, match="SLURM_JOB_ID is not set"), pytest.raises(SystemExit) as exit_info:
        trainer.fit(Net(), _loader())
    assert exit_info.value.code == EXIT_PREEMPTED
