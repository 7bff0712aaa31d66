"""``TaskModule``: what to train. The user's model, its loss, its optimizers, and optional hooks."""

from __future__ import annotations

import inspect
import itertools
import json
import warnings
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import torch
from torch import Tensor, nn

from tasktrain.log_buffer import check_loggable

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh
    from torch.optim import Optimizer
    from torch.utils.data import DataLoader

    from tasktrain.log_buffer import LogBuffer
    from tasktrain.loops.manual import ManualOptimizer, _ManualStep
    from tasktrain.trainer import Trainer

BatchT = TypeVar("BatchT")


class HParams(dict[str, Any]):
    """The saved constructor arguments: a dict that also reads as attributes (``hparams.lr``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"hparams has no {name!r}; saved: {sorted(self)}") from None


class TaskModule(nn.Module, Generic[BatchT]):
    """Subclass this to say *what* to train; the :class:`~tasktrain.Trainer` decides *how*.

    Implement ``compute_loss`` (or ``training_step``) and ``configure_optimizers``; every
    other hook is optional. ``TaskModule[BatchT]`` types the batch your hooks receive.

    Example:
        >>> class Regressor(TaskModule):
        ...     def __init__(self, lr: float = 0.1):
        ...         super().__init__()
        ...         self.save_hyperparameters()
        ...         self.net = torch.nn.Linear(3, 1)
        ...     def compute_loss(self, batch):
        ...         x, y = batch
        ...         return torch.nn.functional.mse_loss(self.net(x), y)
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
        >>> Regressor().hparams.lr
        0.1
    """

    #: The gradient clipping threshold (total 2-norm) this module asks for when the Trainer sets
    #: none (``Trainer(gradient_clip_val=None)``); e.g. ``HFTask`` clips at 1.0 like ``TrainingArguments``.
    default_gradient_clip_val: float | None = None

    #: False hands the optimizer steps to ``training_step`` (``self.optimizers()``,
    #: ``self.manual_backward(loss)``, ``opt.step()``): see "Several optimizers and manual optimization".
    automatic_optimization: bool = True

    def __init__(self) -> None:
        super().__init__()
        self.hparams: HParams = HParams()
        self._trainer: Trainer | None = None
        self._log_buffer: LogBuffer | None = None
        self._warned_unattached_log = False
        self._manual_optimization: _ManualStep | None = None  # bound by the manual-optimization loop

    # -- read-only views of the run ------------------------------------------------------------
    @property
    def trainer(self) -> Trainer:
        """The trainer running this module (only while attached)."""
        if self._trainer is None:
            raise RuntimeError(
                f"{type(self).__name__} is not attached to a Trainer; call Trainer.fit/validate."
            )
        return self._trainer

    @property
    def global_step(self) -> int:
        """Completed optimizer steps (0 when not attached to a trainer); under manual optimization
        (``automatic_optimization = False``) completed ``training_step`` calls."""
        return self._trainer.state.global_step if self._trainer is not None else 0

    @property
    def current_epoch(self) -> int:
        """Index of the current epoch (0 when not attached to a trainer)."""
        return self._trainer.state.epoch if self._trainer is not None else 0

    @property
    def device(self) -> torch.device:
        """The device of the module's first parameter or buffer (CPU if it has none)."""
        for tensor in itertools.chain(self.parameters(), self.buffers()):
            return tensor.device
        return torch.device("cpu")

    # -- manual optimization (automatic_optimization = False) -----------------------------------
    def optimizers(self) -> ManualOptimizer | list[ManualOptimizer]:
        """The optimizers, in ``configure_optimizers`` order (one: itself, several: a list).

        Each one's ``step()`` and ``zero_grad()`` go through the strategy and precision plugin.

        Example:
            >>> opt_g, opt_d = self.optimizers()  # doctest: +SKIP
        """
        handles = self._manual().handles
        return handles[0] if len(handles) == 1 else list(handles)

    def lr_schedulers(self) -> Any:
        """The LR schedulers, in ``configure_optimizers`` order: None, one, or a list.

        Those with ``interval="step"`` step by themselves when their optimizer steps, those with
        ``interval="epoch"`` at each epoch end: step one here only if you configured neither.
        """
        schedulers = [config.scheduler for config in self._manual().schedulers]
        if not schedulers:
            return None
        return schedulers[0] if len(schedulers) == 1 else schedulers

    def manual_backward(self, loss: Tensor) -> None:
        """Backward through the precision plugin (loss scaling) and the strategy, with the backward hooks.

        Example:
            >>> self.manual_backward(d_loss)  # doctest: +SKIP
        """
        self._manual().backward(loss)

    def clip_gradients(
        self,
        optimizer: Any,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
    ) -> Tensor | None:
        """Clip ``optimizer``'s gradients (unscaled and, under DDP, averaged over the ranks first).

        Returns the total norm before clipping with ``"norm"``, else None.

        Example:
            >>> self.clip_gradients(opt_d, gradient_clip_val=1.0)  # doctest: +SKIP
        """
        if gradient_clip_algorithm not in ("norm", "value"):
            raise ValueError(
                f"clip_gradients(gradient_clip_algorithm={gradient_clip_algorithm!r}): accepted values are 'norm', 'value'"
            )
        return self._manual().handle(optimizer).clip_gradients(gradient_clip_val, gradient_clip_algorithm)

    def _manual(self) -> _ManualStep:
        if self._manual_optimization is None:
            raise RuntimeError(
                f"{type(self).__name__}: optimizers(), lr_schedulers(), manual_backward() and clip_gradients() are "
                "for manual optimization: set `automatic_optimization = False` on the class, and call them while "
                "Trainer.fit trains"
            )
        return self._manual_optimization

    # -- hyperparameters -----------------------------------------------------------------------
    def save_hyperparameters(self, *names: str, ignore: Iterable[str] = ()) -> None:
        """Record the arguments of the calling ``__init__`` in ``self.hparams`` (and in checkpoints).

        Every saved value must be plain JSON (what ``json.dumps(allow_nan=False)`` accepts: None,
        bools, numbers, str, lists, tuples and dicts of them), because hparams are written to
        every checkpoint and rebuild the module in ``load_from_checkpoint``. Tuples come back as
        lists. A ``transformers`` config (``PretrainedConfig``, e.g. ``BertConfig``) is stored as
        its dict (with its class name under ``"__config_class__"``) and ``load_from_checkpoint``
        passes the rebuilt config object back.

        Args:
            names: save only these arguments (default: all).
            ignore: arguments not to save (e.g. a whole sub-model).

        Raises:
            ValueError: a name is not an argument of ``__init__``.
            TypeError: a saved value is not plain JSON (NaN and infinity included); the message
                names the argument and suggests ``ignore=[...]``.
        """
        frame = inspect.currentframe()
        caller = frame.f_back if frame is not None else None
        if caller is None:
            raise RuntimeError("save_hyperparameters() must be called from __init__")
        init_args = _init_arguments(caller.f_locals, type(self))
        wanted = set(names) or set(init_args)
        unknown = wanted - set(init_args)
        if unknown:
            raise ValueError(
                f"save_hyperparameters(): {sorted(unknown)} are not arguments of "
                f"{type(self).__name__}.__init__; its arguments are {sorted(init_args)}"
            )
        if isinstance(ignore, str):  # ignore="config" would otherwise ignore "c", "o", ...
            ignore = [ignore]
        skipped = set(ignore)
        saved = {k: encode_hparam(v) for k, v in init_args.items() if k in wanted and k not in skipped}
        for name, value in saved.items():
            _check_plain_json(name, value)
        self.hparams.update(saved)

    # -- logging -------------------------------------------------------------------------------
    def log(
        self,
        name: str,
        value: Any,
        *,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        prog_bar: bool = False,
        sync_dist: bool = False,
        batch_size: int | None = None,
        logger: bool = True,
    ) -> None:
        """Log a float, a tensor or a torchmetrics ``Metric`` under ``name``.

        Defaults: during training ``on_step=True, on_epoch=False``; during evaluation
        ``on_step=False, on_epoch=True`` (a batch-size-weighted mean over the epoch). A ``Metric``
        is computed and reset at the end of the epoch. Logging a tensor never syncs the device:
        values are read only at the logging interval. With ``logger=False`` the value reaches
        ``trainer.callback_metrics`` (and the progress bar with ``prog_bar=True``), so callbacks
        can monitor it, but is not written to the loggers nor to ``trainer.logged_metrics``.

        The name and value are checked here, at the call (metadata only, no device sync): the
        value must be a number (bools count as 0/1), a tensor with exactly one element, or a
        ``Metric``.

        Raises:
            TypeError: the name is not a str, or the value is e.g. a str, None, a list or a dict.
            ValueError: the name is empty, or the tensor holds other than one element.

        Example:
            >>> self.log("val/acc", self.accuracy, prog_bar=True)  # doctest: +SKIP
        """
        check_loggable(name, value)
        if self._log_buffer is None:
            if not self._warned_unattached_log:
                warnings.warn(
                    f"{type(self).__name__}.log({name!r}) called outside a Trainer run: the value is dropped",
                    stacklevel=2,
                )
                self._warned_unattached_log = True
            return
        self._log_buffer.log(
            name,
            value,
            on_step=on_step,
            on_epoch=on_epoch,
            prog_bar=prog_bar,
            sync_dist=sync_dist,
            batch_size=batch_size,
            logger=logger,
        )

    def log_dict(self, values: Mapping[str, Any], **kwargs: Any) -> None:
        """Log every ``name: value`` of ``values`` with the same options as :meth:`log`."""
        for name, value in values.items():
            self.log(name, value, **kwargs)

    # -- the user's hooks ------------------------------------------------------------------------
    def compute_loss(self, batch: BatchT) -> Tensor | tuple[Tensor, Any]:
        """Return the mean loss of one micro-batch (optionally ``(loss, outputs)``)."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement compute_loss(batch) or override training_step(batch, batch_idx)"
        )

    def training_step(self, batch: BatchT, batch_idx: int) -> Tensor | Mapping[str, Any]:
        """Return the loss of one micro-batch, or a mapping with key ``"loss"``.

        The default calls :meth:`compute_loss`. The trainer logs ``train/loss`` (the mean over
        the optimizer steps since the last log) unless you log that name yourself.
        """
        return self.compute_loss(batch)  # type: ignore[return-value]

    def validation_step(self, batch: BatchT, batch_idx: int) -> Any:
        """Evaluate one batch. The default logs ``compute_loss`` as ``val/loss`` (synced over ranks).

        With several named validation sets (``{name: loader}``), what is logged is named
        ``val/<name>/...``; declare a ``dataloader_name`` parameter to learn which set ``batch``
        is from (it is passed only to a step that declares it).

        Example:
            >>> def validation_step(self, batch, batch_idx, dataloader_name=None):  # doctest: +SKIP
            ...     self.log("val/acc", self.accuracy[dataloader_name](batch))
        """
        return self._default_eval_step(batch, "val/loss")

    def test_step(self, batch: BatchT, batch_idx: int) -> Any:
        """Evaluate one test batch. The default logs ``compute_loss`` as ``test/loss``."""
        return self._default_eval_step(batch, "test/loss")

    def predict_step(self, batch: BatchT, batch_idx: int) -> Any:
        """Return the prediction for one batch. The default is ``self(batch)``."""
        return self(batch)

    def count_items(self, batch: BatchT) -> int | Tensor | None:
        """How many loss items (e.g. non-padding tokens) ``batch`` holds; ``None`` to weight batches equally.

        When this returns a number, each micro-batch of an optimizer step is weighted by its
        share of the items in the whole step (all micro-batches, all ranks), so the update equals
        the one from a single big batch. A micro-batch with 0 items is skipped when its count is
        an int or a CPU tensor; a count on an accelerator is not read back (that would sync the
        device), so there a 0-item micro-batch's loss must itself be finite (e.g. a sum, not a mean).
        """
        return None

    def configure_optimizers(self) -> Any:
        """Return an optimizer, ``(optimizer, scheduler)``, ``{"optimizer": ..., "lr_scheduler": ...}``,
        or several: a list of optimizers or of such dicts (``automatic_optimization = False``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement configure_optimizers() to be fitted")

    def configure_model(self) -> None:
        """Build large layers late (called once before the strategy wraps the module)."""

    def parallelize(self, mesh: DeviceMesh) -> None:
        """Apply this model's tensor-parallel plan over ``mesh`` (needed by ``strategy="tp"``).

        Example:
            >>> def parallelize(self, mesh):  # doctest: +SKIP
            ...     parallelize_module(self.mlp, mesh, {"up": ColwiseParallel(), "down": RowwiseParallel()})
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no tensor-parallel plan: implement parallelize(mesh)"
        )

    def train_dataloader(self) -> DataLoader[Any]:
        raise NotImplementedError(
            f"no training data: pass train_dataloaders to fit() or implement {type(self).__name__}.train_dataloader()"
        )

    def val_dataloader(self) -> DataLoader[Any] | Mapping[str, DataLoader[Any]] | None:
        """The validation data: a loader, ``{name: loader}`` (metrics named ``val/<name>/...``), or None."""
        return None

    def test_dataloader(self) -> DataLoader[Any]:
        raise NotImplementedError(
            f"no test data: pass dataloaders to test() or implement {type(self).__name__}.test_dataloader()"
        )

    def predict_dataloader(self) -> DataLoader[Any]:
        raise NotImplementedError(
            f"no predict data: pass dataloaders to predict() or implement {type(self).__name__}.predict_dataloader()"
        )

    # -- lifecycle hooks (same names as on Callback; order in tasktrain.loops.hooks) -------------
    def on_fit_start(self) -> None: ...
    def on_fit_end(self) -> None: ...
    def on_train_start(self) -> None: ...
    def on_train_end(self) -> None: ...
    def on_train_epoch_start(self) -> None: ...
    def on_train_epoch_end(self) -> None: ...
    def on_train_batch_start(self, batch: BatchT, batch_idx: int) -> None: ...
    def on_before_backward(self, loss: Tensor) -> None: ...
    def on_after_backward(self) -> None: ...
    def on_train_batch_end(self, outputs: Any, batch: BatchT, batch_idx: int) -> None: ...
    def on_before_optimizer_step(self, optimizer: Optimizer) -> None: ...
    def on_before_zero_grad(self, optimizer: Optimizer) -> None: ...
    def on_train_step_end(self) -> None: ...
    def on_validation_start(self) -> None: ...
    def on_validation_end(self) -> None: ...
    def on_validation_epoch_start(self) -> None: ...
    def on_validation_epoch_end(self) -> None: ...
    def on_validation_batch_start(self, batch: BatchT, batch_idx: int) -> None: ...
    def on_validation_batch_end(self, outputs: Any, batch: BatchT, batch_idx: int) -> None: ...
    def on_test_start(self) -> None: ...
    def on_test_end(self) -> None: ...
    def on_test_epoch_start(self) -> None: ...
    def on_test_epoch_end(self) -> None: ...
    def on_test_batch_start(self, batch: BatchT, batch_idx: int) -> None: ...
    def on_test_batch_end(self, outputs: Any, batch: BatchT, batch_idx: int) -> None: ...
    def on_predict_start(self) -> None: ...
    def on_predict_end(self) -> None: ...
    def on_predict_epoch_start(self) -> None: ...
    def on_predict_epoch_end(self) -> None: ...
    def on_predict_batch_start(self, batch: BatchT, batch_idx: int) -> None: ...
    def on_predict_batch_end(self, outputs: Any, batch: BatchT, batch_idx: int) -> None: ...
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None: ...
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None: ...
    def on_exception(self, error: BaseException) -> None: ...

    # -- checkpoints -----------------------------------------------------------------------------
    @classmethod
    def load_from_checkpoint(cls, path: str, weights: str = "model", **overrides: Any) -> TaskModule[Any]:
        """Rebuild the module from a checkpoint directory: ``cls(**hparams, **overrides)`` + weights.

        ``weights="ema"`` loads the averaged weights of the :class:`~tasktrain.callbacks.EMA`
        callback (with the module's buffers) instead of the trained ones.

        Example:
            >>> model = Regressor.load_from_checkpoint("runs/checkpoints/step=200")  # doctest: +SKIP
            >>> averaged = Regressor.load_from_checkpoint("runs/checkpoints/step=200", weights="ema")  # doctest: +SKIP
        """
        from tasktrain.checkpoint.format import load_module

        return load_module(cls, path, overrides, weights)

    def _default_eval_step(self, batch: BatchT, name: str) -> Tensor:
        out = self.compute_loss(batch)
        loss = out[0] if isinstance(out, tuple) else out
        self.log(name, loss, prog_bar=True, sync_dist=True)  # the global mean under data parallelism
        return loss


CONFIG_CLASS_KEY = "__config_class__"  # marks a transformers config stored as its dict


def encode_hparam(value: Any) -> Any:
    """A transformers ``PretrainedConfig`` as its plain dict, marked with its class; anything else as is."""
    if not _is_hf_config(value):
        return value
    import transformers

    name = type(value).__name__
    if getattr(transformers, name, None) is not type(value):
        return value  # a config class of its own: refused as not plain JSON, naming the argument
    return {**json.loads(value.to_json_string(use_diff=False)), CONFIG_CLASS_KEY: name}


def decode_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor arguments ``hparams`` describe: marked dicts rebuilt as their transformers configs."""
    return {name: _decode_hparam(name, value) for name, value in hparams.items()}


def _decode_hparam(name: str, value: Any) -> Any:
    if not (isinstance(value, Mapping) and CONFIG_CLASS_KEY in value):
        return value
    import transformers

    cls = getattr(transformers, str(value[CONFIG_CLASS_KEY]), None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PretrainedConfig)):
        raise ValueError(
            f"hparams[{name!r}] names the config class {value[CONFIG_CLASS_KEY]!r}, which this transformers "
            f"({transformers.__version__}) does not have"
        )
    return cls.from_dict({k: v for k, v in value.items() if k != CONFIG_CLASS_KEY})


def _is_hf_config(value: Any) -> bool:
    """Whether ``value`` is a transformers config, without importing transformers when it is not loaded."""
    return any(
        c.__name__ in ("PretrainedConfig", "PreTrainedConfig") and c.__module__.startswith("transformers")
        for c in type(value).__mro__
    )


def _check_plain_json(name: str, value: Any) -> None:
    """Refuse a hyperparameter the checkpoint's strict JSON could not hold, naming the argument."""
    if _is_plain_json(value):
        return
    where, bad = _first_non_json(value, name)
    what = _describe(value) if where == name else f"{_describe(value)} whose {where} is {_describe(bad)}"
    raise TypeError(
        f"save_hyperparameters(): argument {name!r} is {what}, which is not plain JSON (hparams are "
        "written to every checkpoint, as strict JSON: no NaN or infinity); pass it as plain values or "
        f"save_hyperparameters(ignore=[{name!r}])"
    )


def _is_plain_json(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)  # as the checkpoint writes it
    except (TypeError, ValueError):  # ValueError: NaN, infinity, a circular reference
        return False
    return True


def _first_non_json(value: Any, where: str, depth: int = 0) -> tuple[str, Any]:
    """The path and value of the first item of ``value`` strict JSON cannot hold (``value`` itself if none)."""
    if isinstance(value, (list, tuple)):
        items: Iterable[tuple[Any, Any]] = enumerate(value)
    elif isinstance(value, dict):
        items = value.items()
    else:
        return where, value
    for key, item in items:
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            return f"key {key!r}", key
        if depth < 10 and not _is_plain_json(item):  # the depth bounds a circular reference
            return _first_non_json(item, f"{where}[{key!r}]", depth + 1)
    return where, value


def _describe(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)  # nan, inf
    kind = type(value).__name__
    return f"{'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind}"


def _init_arguments(frame_locals: Mapping[str, Any], cls: type) -> dict[str, Any]:
    """The arguments of ``cls.__init__`` as found in the calling frame (``**kwargs`` flattened)."""
    params = inspect.signature(cls.__init__).parameters  # type: ignore[misc]
    args: dict[str, Any] = {}
    for name, param in list(params.items())[1:]:
        if name not in frame_locals:
            continue
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            args.update(frame_locals[name])
        elif param.kind is not inspect.Parameter.VAR_POSITIONAL:
            args[name] = frame_locals[name]
    return args
