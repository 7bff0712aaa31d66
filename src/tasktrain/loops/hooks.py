"""The one ordered list of hook points, and the dispatcher that calls them.

Every hook exists twice with the same name: on :class:`~tasktrain.callbacks.Callback` as
``hook(trainer, module, *args)`` and on :class:`~tasktrain.TaskModule` as ``hook(*args)``.
For each hook the module's method runs first, then the callbacks' in the order they were given,
so callbacks see what the module logged in the same hook.

Order during ``fit`` (accumulation N, validation at epoch end)::

    on_fit_start
    on_train_start
    for epoch:
        on_train_epoch_start
        for each optimizer step:
            for each of the N micro-batches:
                on_train_batch_start(batch, batch_idx)
                on_before_backward(loss)
                on_after_backward()
                on_train_batch_end(outputs, batch, batch_idx)
            on_before_optimizer_step(optimizer)   # gradients final (unscaled, clipped)
            on_before_zero_grad(optimizer)        # stepped; global_step not yet incremented
            [logs written, every log_every_n_steps]
            [validation, when val_check_interval says so]
            on_train_step_end()                   # global_step incremented; this step's logs and
                                                  # validation done: the place to save or stop
        [validation, when check_val_every_n_epoch says so]
        on_train_epoch_end
    on_train_end
    on_fit_end

With ``automatic_optimization = False`` (manual optimization) each batch is one step, and the
optimizer hooks fire from inside ``training_step``, as the user calls them::

        for each batch:
            on_train_batch_start(batch, batch_idx)
            training_step(batch, batch_idx):
                self.manual_backward(loss)   -> on_before_backward(loss); on_after_backward()
                opt.step()                   -> on_before_optimizer_step(optimizer)
                opt.zero_grad()              -> on_before_zero_grad(optimizer)
            on_train_batch_end(outputs, batch, batch_idx)
            [logs, validation]; on_train_step_end()   # global_step incremented once per batch

Validation (and ``test``, ``predict`` with their prefixes)::

    on_validation_start
    on_validation_epoch_start
    for batch: on_validation_batch_start(batch, batch_idx); on_validation_batch_end(outputs, batch, batch_idx)
    on_validation_epoch_end
    on_validation_end

``on_save_checkpoint(checkpoint)`` and ``on_load_checkpoint(checkpoint)`` run around checkpoint
I/O, and ``on_exception(error)`` when a run fails.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

from lightning_utilities.core.overrides import is_overridden

if TYPE_CHECKING:
    from tasktrain.callbacks.base import Callback
    from tasktrain.module import TaskModule

#: Every hook, in the order they first fire during ``fit`` then evaluation.
HOOKS: tuple[str, ...] = (
    "on_fit_start",
    "on_train_start",
    "on_train_epoch_start",
    "on_train_batch_start",
    "on_before_backward",
    "on_after_backward",
    "on_train_batch_end",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_train_step_end",
    "on_train_epoch_end",
    "on_train_end",
    "on_fit_end",
    "on_validation_start",
    "on_validation_epoch_start",
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_validation_epoch_end",
    "on_validation_end",
    "on_test_start",
    "on_test_epoch_start",
    "on_test_batch_start",
    "on_test_batch_end",
    "on_test_epoch_end",
    "on_test_end",
    "on_predict_start",
    "on_predict_epoch_start",
    "on_predict_batch_start",
    "on_predict_batch_end",
    "on_predict_epoch_end",
    "on_predict_end",
    "on_save_checkpoint",
    "on_load_checkpoint",
    "on_exception",
)


class HookDispatcher:
    """Calls one hook on the module and on every callback that overrides it.

    Which callbacks override which hook is worked out once, at construction, so a hook nobody
    overrides costs one dict lookup and an empty loop per call.

    Example:
        >>> hooks = HookDispatcher(trainer, module, callbacks)  # doctest: +SKIP
        >>> hooks.call("on_train_start")                        # doctest: +SKIP
    """

    def __init__(self, trainer: Any, module: TaskModule, callbacks: Iterable[Callback]) -> None:
        from tasktrain.callbacks.base import Callback
        from tasktrain.module import TaskModule

        self._targets: dict[str, tuple[Callable[..., Any], ...]] = {}
        for name in HOOKS:
            targets: list[Callable[..., Any]] = []
            if is_overridden(name, module, parent=TaskModule):
                targets.append(getattr(module, name))
            targets.extend(
                partial(getattr(cb, name), trainer, module)
                for cb in callbacks
                if is_overridden(name, cb, parent=Callback)
            )
            self._targets[name] = tuple(targets)

    def call(self, name: str, *args: Any) -> None:
        """Run hook ``name`` with ``args`` (the callback form also receives trainer and module)."""
        for fn in self._targets[name]:
            fn(*args)

    def has(self, name: str) -> bool:
        """Whether anyone overrides ``name``: lets loops skip work only a hook would need."""
        return bool(self._targets[name])
