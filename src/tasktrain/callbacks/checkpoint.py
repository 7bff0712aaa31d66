"""``ModelCheckpoint``: save checkpoints at the end of epochs and of fit."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fsspec.core import url_to_fs
from typing_extensions import override

from tasktrain.callbacks.base import Callback

if TYPE_CHECKING:
    from tasktrain.module import TaskModule
    from tasktrain.trainer import Trainer


class ModelCheckpoint(Callback):
    """Save ``{dirpath}/step={global_step:08d}`` every ``every_n_epochs`` epochs and at the end of fit.

    Only the newest ``keep_last`` checkpoints are kept (None keeps all).

    Args:
        dirpath: where to save (default ``{default_root_dir}/checkpoints``); any fsspec URL.
        every_n_epochs: save after every this many epochs (None: only at the end of fit).
        keep_last: how many of the newest checkpoints to keep.

    Example:
        >>> import tasktrain as tt
        >>> trainer = tt.Trainer(callbacks=[ModelCheckpoint(every_n_epochs=1, keep_last=3)])
    """

    def __init__(
        self, dirpath: str | None = None, every_n_epochs: int | None = 1, keep_last: int | None = 1
    ) -> None:
        if every_n_epochs is not None and every_n_epochs < 1:
            raise ValueError(f"ModelCheckpoint(every_n_epochs={every_n_epochs!r}): must be >= 1 or None")
        if keep_last is not None and keep_last < 1:
            raise ValueError(f"ModelCheckpoint(keep_last={keep_last!r}): must be >= 1 or None")
        self.dirpath = dirpath
        self.every_n_epochs = every_n_epochs
        self.keep_last = keep_last
        self.saved: list[str] = []
        self._last_saved_step = -1

    @override
    def on_train_epoch_end(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        n = self.every_n_epochs
        if n is not None and (trainer.state.epoch + 1) % n == 0:
            self._save(trainer)

    @override
    def on_fit_end(self, trainer: Trainer, module: TaskModule[Any]) -> None:
        self._save(trainer)

    def _save(self, trainer: Trainer) -> None:
        step = trainer.state.global_step
        if step == self._last_saved_step:
            return
        dirpath = self.dirpath or f"{trainer.default_root_dir}/checkpoints"
        path = f"{dirpath.rstrip('/')}/step={step:08d}"
        trainer.save_checkpoint(path)
        self._last_saved_step = step
        self.saved.append(path)
        if self.keep_last is not None and trainer.is_global_zero:
            while len(self.saved) > self.keep_last:
                old = self.saved.pop(0)
                fs, old_path = url_to_fs(old)
                if fs.exists(old_path):
                    fs.rm(old_path, recursive=True)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"saved": list(self.saved), "last_saved_step": self._last_saved_step}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.saved, self._last_saved_step = list(state["saved"]), int(state["last_saved_step"])
