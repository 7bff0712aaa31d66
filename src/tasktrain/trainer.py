"""``Trainer``: validates its arguments, builds strategy, loops, callbacks and loggers, and delegates."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from lightning_utilities.core.overrides import is_overridden
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from tasktrain.callbacks import Callback, ModelCheckpoint, Preemption, ProgressBar
from tasktrain.callbacks.checkpoint import best_checkpoint_path, monitoring_checkpoint
from tasktrain.checkpoint import manager
from tasktrain.checkpoint.background import BackgroundWriter
from tasktrain.checkpoint.errors import CheckpointError
from tasktrain.compile import apply_compile
from tasktrain.data import gather_predictions, sampler_generator, shard_for_prediction
from tasktrain.log_buffer import LogBuffer
from tasktrain.loggers import CSVLogger, Logger
from tasktrain.loggers.base import logger_states
from tasktrain.loops import (
    AccumulationLoop,
    Cadence,
    EpochLoop,
    EvaluationLoop,
    FitLoop,
    HookDispatcher,
    LoopContext,
    OptimizationStep,
    PredictionLoop,
    SanityCheck,
)
from tasktrain.loops.cadence import global_mean
from tasktrain.loops.epoch import num_batches, steps_per_epoch
from tasktrain.loops.evaluation import EvalLoaders, map_dataloaders, named_dataloaders
from tasktrain.loops.sanity import SANITY_CHECK_STAGE
from tasktrain.module import TaskModule
from tasktrain.optim import OptimizerSetup, SchedulerConfig, parse_optimizers
from tasktrain.precision import build_precision
from tasktrain.preflight import preflight
from tasktrain.rng import ProcessRng
from tasktrain.seed import seed_everything
from tasktrain.state import Stateful, TrainState
from tasktrain.strategies import DDP, SingleDevice, Strategy
from tasktrain.strategies.base import ModelState
from tasktrain.strategies.environment import check_num_nodes, detect_environment
from tasktrain.strategies.launcher import spawn
from tasktrain.strategies.single import default_device
from tasktrain.totals import TrainTotals
from tasktrain.trainer_args import DEEPSPEED_STAGES, TrainerArgs, with_fast_dev_run

#: What ``fit(val_dataloaders=...)``, ``validate`` and ``test`` take: one loader, ``{name: loader}``
#: (metrics named ``val/<name>/...``), or a list of DataLoaders (named ``"0"``, ``"1"``, ...).
EvalDataloaders = DataLoader[Any] | Mapping[str, DataLoader[Any]] | Sequence[DataLoader[Any]]


@dataclass
class FitResult:
    """What ``Trainer.fit`` returns.

    ``metrics`` holds ``train_runtime`` (s), ``train_samples_per_second``,
    ``train_steps_per_second``, ``train_tokens_per_second`` (when the module defines
    ``count_items``), and the last value of every logged metric. ``best_model_path`` and
    ``best_model_score`` name the best checkpoint of the first ``ModelCheckpoint`` with a
    ``monitor`` (None without one, or before any checkpoint had a score).
    """

    global_step: int
    train_loss: float
    metrics: dict[str, float] = field(default_factory=dict)
    best_model_path: str | None = None
    best_model_score: float | None = None


class Trainer:
    """Runs a :class:`~tasktrain.TaskModule`: ``fit``, ``validate``, ``test``, ``predict``.

    Every argument is checked here, with a message naming the argument, the value and what is
    accepted. See ``docs/concepts/trainer.md`` for each argument.

    Example:
        >>> import tasktrain as tt
        >>> trainer = tt.Trainer(max_steps=100, accumulate_grad_batches=4, logger=False)
        >>> trainer.fit_loop.epoch_loop.accumulate_grad_batches
        4
    """

    def __init__(
        self,
        max_epochs: int | None = None,
        max_steps: int | None = None,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
        precision: str = "32-true",
        strategy: str | Strategy = "auto",
        devices: int | str = 1,
        num_nodes: int = 1,
        accelerator: str = "auto",
        callbacks: Sequence[Callback] | None = None,
        logger: bool | Logger | Sequence[Logger] = True,
        default_root_dir: str | os.PathLike[str] = "runs",
        val_check_interval: int | float | None = None,
        check_val_every_n_epoch: int | None = 1,
        log_every_n_steps: int = 50,
        enable_progress_bar: bool = True,
        enable_checkpointing: bool = True,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        seed: int | None = None,
        deterministic: bool = False,
        compile: bool | Mapping[str, Any] = False,
        on_nonfinite_loss: str = "raise",
        num_sanity_val_steps: int = 0,
        fast_dev_run: bool | int = False,
    ) -> None:
        given = TrainerArgs(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})
        args = with_fast_dev_run(given)
        self.args = args
        self.default_root_dir = str(args.default_root_dir)
        self.log_every_n_steps = args.log_every_n_steps
        self.strategy = _build_strategy(args)
        self.strategy.configure(
            args.accumulate_grad_batches, args.gradient_clip_val, args.gradient_clip_algorithm
        )
        self.callbacks = _build_callbacks(args)
        self.loggers = _build_loggers(args)
        self.state = TrainState()
        self.totals = TrainTotals()
        self.fit_loop = FitLoop(
            max_epochs=args.max_epochs if args.max_epochs is not None or args.max_steps is not None else 1,
            max_steps=args.max_steps,
            epoch_loop=EpochLoop(
                accumulate_grad_batches=args.accumulate_grad_batches,
                limit_batches=args.limit_train_batches,
                accumulation=AccumulationLoop(args.on_nonfinite_loss),
                optimization=OptimizationStep(args.gradient_clip_val, args.gradient_clip_algorithm),
                cadence=Cadence(
                    val_check_interval=args.val_check_interval,
                    check_val_every_n_epoch=args.check_val_every_n_epoch,
                    log_every_n_steps=args.log_every_n_steps,
                    val_loop=EvaluationLoop("validate", args.limit_val_batches),
                ),
            ),
        )
        self.sanity_check = SanityCheck(args.num_sanity_val_steps, args.limit_val_batches)
        dev_batches = int(args.fast_dev_run) or None
        self.validate_loop = EvaluationLoop("validate", args.limit_val_batches)
        self.test_loop = EvaluationLoop("test", dev_batches)
        self.predict_loop = PredictionLoop(dev_batches)
        self.logs = LogBuffer(self.loggers, reduce=self.strategy.reduce)
        self.module: TaskModule[Any] | None = None
        self.train_dataloader: DataLoader[Any] | None = None
        self.val_dataloader: EvalLoaders | None = None  # one loader, or {name: loader}
        self._optim: OptimizerSetup | None = None
        self._per_rank_batch_size: int | None = None  # of the current or last fit's training loader
        self._setup_done_for: TaskModule[Any] | None = None
        self._background = BackgroundWriter()  # the async_save in flight, if any

    # -- what callbacks and users read -----------------------------------------------------------
    @property
    def callback_metrics(self) -> dict[str, float]:
        """The latest value of every logged metric."""
        return self.logs.callback_metrics

    @property
    def progress_bar_metrics(self) -> dict[str, float]:
        return self.logs.progress_bar_metrics

    @property
    def logged_metrics(self) -> dict[str, float]:
        """The latest value of every metric written to the loggers (not those logged with ``logger=False``).

        Filled whether or not a logger is configured, so it shows what a logger would receive.
        """
        return self.logs.logged_metrics

    @property
    def global_step(self) -> int:
        """Completed optimizer steps (``trainer.state.global_step``); ``training_step`` calls under manual optimization."""
        return self.state.global_step

    @property
    def current_epoch(self) -> int:
        """Index of the current epoch (``trainer.state.epoch``)."""
        return self.state.epoch

    @property
    def checkpoint_callback(self) -> ModelCheckpoint | None:
        """The first :class:`~tasktrain.callbacks.ModelCheckpoint` among the callbacks (None without one)."""
        return next(iter(self.checkpoint_callbacks), None)

    @property
    def checkpoint_callbacks(self) -> list[ModelCheckpoint]:
        """Every :class:`~tasktrain.callbacks.ModelCheckpoint` among the callbacks, in order."""
        return [cb for cb in self.callbacks if isinstance(cb, ModelCheckpoint)]

    @property
    def total_train_batch_size(self) -> int | None:
        """Samples per optimizer step over all ranks: per-rank batch × accumulation × data-parallel size.

        The per-rank batch is the training dataloader's ``batch_size`` (of the current or last
        ``fit``); None before ``fit`` or when the loader has no fixed batch size.

        Example:
            >>> trainer.total_train_batch_size  # batch_size=8, accumulate_grad_batches=4, 2 ranks  # doctest: +SKIP
            64
        """
        per_rank = self._per_rank_batch_size
        if per_rank is None:
            return None
        return per_rank * self.args.accumulate_grad_batches * self.strategy.data_parallel_size

    @property
    def fast_dev_run(self) -> int:
        """How many batches of each stage ``fast_dev_run`` runs (0: off)."""
        return int(self.args.fast_dev_run)

    @property
    def sanity_checking(self) -> bool:
        """Whether the validation batches before training (``num_sanity_val_steps``) are running."""
        return self.state.stage == SANITY_CHECK_STAGE

    @property
    def is_global_zero(self) -> bool:
        return self.strategy.is_global_zero

    @property
    def steps_per_epoch(self) -> int | None:
        """Optimizer steps per epoch (None when the training dataloader has no length)."""
        if self.train_dataloader is None:
            return None
        batches = num_batches(self.train_dataloader, self.args.limit_train_batches)
        return None if batches is None else steps_per_epoch(batches, self.args.accumulate_grad_batches)

    @property
    def estimated_stepping_batches(self) -> int | None:
        """Total optimizer steps this fit will take (for schedulers such as OneCycleLR)."""
        per_epoch, max_epochs, max_steps = (
            self.steps_per_epoch,
            self.fit_loop.max_epochs,
            self.fit_loop.max_steps,
        )
        by_epochs = per_epoch * max_epochs if per_epoch is not None and max_epochs is not None else None
        candidates = [n for n in (by_epochs, max_steps) if n is not None]
        return min(candidates) if candidates else None

    @property
    def samples_seen(self) -> int:
        """Training samples seen on this rank, over the whole run (resumes included)."""
        return self.totals.samples.value

    @property
    def items_seen(self) -> int:
        """Loss items (``count_items``) seen on this rank, over the whole run."""
        return self.totals.items.value

    @property
    def counts_items(self) -> bool:
        """Whether the module defines ``count_items``."""
        return self.module is not None and is_overridden("count_items", self.module, parent=TaskModule)

    @property
    def optimizers(self) -> list[Optimizer]:
        """The optimizers of the current (or last) fit, in ``configure_optimizers`` order."""
        return [] if self._optim is None else self._optim.optimizers

    @property
    def optimizer(self) -> Optimizer | None:
        """The first optimizer (None before ``fit``)."""
        return self.optimizers[0] if self.optimizers else None

    @property
    def lr_scheduler_configs(self) -> list[SchedulerConfig]:
        """The LR schedulers of the current (or last) fit, with when they step."""
        return [] if self._optim is None else self._optim.schedulers

    # -- entry points ----------------------------------------------------------------------------
    def fit(
        self,
        module: TaskModule[Any],
        train_dataloaders: DataLoader[Any] | None = None,
        val_dataloaders: EvalDataloaders | None = None,
        ckpt_path: str | None = None,
    ) -> FitResult:
        """Train ``module``; return the final step, the mean training loss and speed metrics.

        ``val_dataloaders`` (or the module's ``val_dataloader()``) may be ``{name: loader}``:
        each set is validated in turn and its metrics are named ``val/<name>/...``; a list of
        DataLoaders gets the names ``"0"``, ``"1"``, ...

        Example:
            >>> result = Trainer(max_steps=10).fit(model, loader)  # doctest: +SKIP
            >>> result.metrics["train_steps_per_second"]            # doctest: +SKIP
        """
        self.strategy.check_module(module)
        if isinstance(module, TaskModule) and not module.automatic_optimization:
            _check_manual_optimization(self.args, type(module).__name__)
        if ckpt_path == "best":
            raise ValueError(
                "Trainer.fit(ckpt_path='best'): 'best' is for validate/test/predict (the weights of the best "
                "checkpoint); fit resumes a whole run: pass ckpt_path='last' or a checkpoint path"
            )
        if processes := self.strategy.processes_to_launch:  # devices=N: run this fit in N new processes
            payload = spawn(
                _fit_in_worker, (self, module, train_dataloaders, val_dataloaders, ckpt_path), processes
            )
            return self._adopt_worker_result(module, payload)
        with self._run(module, "fit", ckpt_path) as path:
            seed = self.args.seed or 0
            train = train_dataloaders if train_dataloaders is not None else module.train_dataloader()
            self._per_rank_batch_size = _batch_size(train)
            val = val_dataloaders if val_dataloaders is not None else module.val_dataloader()
            self.train_dataloader = self.strategy.process_dataloader(train, seed)
            self.val_dataloader = self._eval_dataloaders(val, "fit(val_dataloaders=...)")
            if self.args.gradient_clip_val is None:
                # the module's own default (HFTask: 1.0; None for most), for strategies that clip
                # inside their step (DeepSpeed, set up with the optimizers); set on every fit, so it
                # never outlives its module
                self.strategy.configure(
                    self.args.accumulate_grad_batches, module.default_gradient_clip_val, "norm"
                )
            self._optim = self._setup_optimizers(module)
            if path is not None:  # resolved and agreed by every rank in the preflight
                saved = manager.load(path, self._states(), module, self.optimizers, self.strategy)
                _check_scheduler_count(path, saved, len(self.lr_scheduler_configs))
                self._call("on_load_checkpoint", saved)
            for logger in self.loggers:
                logger.log_hyperparams(dict(module.hparams))
            ctx = self._context(module)
            self.logs.begin("train")
            self.state.should_stop = False
            self._call("on_fit_start")
            self.sanity_check.run(ctx)
            start = time.perf_counter()
            before = (self.state.global_step, self.samples_seen, self.items_seen)
            self.fit_loop.run(ctx)
            runtime = time.perf_counter() - start
            self._call("on_fit_end")
            self._background.wait()  # fit returns with every checkpoint it wrote complete
            done = (self.state.global_step, self.samples_seen, self.items_seen)
            return self._fit_result(runtime, *(now - then for now, then in zip(done, before, strict=True)))

    def validate(
        self,
        module: TaskModule[Any],
        dataloaders: EvalDataloaders | None = None,
        ckpt_path: str | None = None,
    ) -> list[dict[str, float]]:
        """Run the validation loop once; return ``[metrics]`` logged with their epoch values.

        ``ckpt_path`` loads weights first: a checkpoint path, ``"last"``, or ``"best"`` (the best
        checkpoint of this trainer's monitoring ``ModelCheckpoint``; test and predict alike).

        Example:
            >>> trainer.fit(model, train, val)                            # doctest: +SKIP
            >>> trainer.test(model, test_loader, ckpt_path="best")        # doctest: +SKIP
        """
        return self._evaluate(module, dataloaders, ckpt_path, "validate", self.validate_loop)

    def test(
        self,
        module: TaskModule[Any],
        dataloaders: EvalDataloaders | None = None,
        ckpt_path: str | None = None,
    ) -> list[dict[str, float]]:
        """Run the test loop once; return ``[metrics]``."""
        return self._evaluate(module, dataloaders, ckpt_path, "test", self.test_loop)

    def predict(
        self,
        module: TaskModule[Any],
        dataloaders: DataLoader[Any] | None = None,
        ckpt_path: str | None = None,
    ) -> list[Any]:
        """Return ``predict_step``'s output for every batch, in dataset order.

        Under several data-parallel ranks each rank predicts a contiguous slice of the dataset
        and the outputs of all ranks come back concatenated in order (so the batches may be cut
        differently than in one process); a loader that shards itself is left as it is.
        """
        self.strategy.check_module(module)
        ckpt_path = self._best_if_asked(ckpt_path, "predict")
        if processes := self.strategy.processes_to_launch:
            payload = spawn(_call_in_worker, (self, "predict", module, dataloaders, ckpt_path), processes)
            return payload["result"]
        with self._run(module, "predict", ckpt_path) as path:
            self._load_weights(path)
            strategy = self.strategy
            loader, shard = shard_for_prediction(
                dataloaders if dataloaders is not None else module.predict_dataloader(),
                strategy.data_parallel_size,
                strategy.data_parallel_rank,
            )
            return gather_predictions(self.predict_loop.run(self._context(module), loader), shard, strategy)

    def save_checkpoint(
        self, path: str, max_shard_bytes: int | None = None, async_save: bool = False
    ) -> None:
        """Save everything needed to resume exactly to the directory ``path`` (local path or URL).

        Weights larger than ``max_shard_bytes`` (default 2 GiB) are split into safetensors shards.
        ``async_save=True`` returns once the tensors are copied off the training path; a
        background thread writes the files (the checkpoint appears, complete, when it is done).
        At most one save is in flight; ``fit`` waits for it before it returns, and so does
        :meth:`wait_for_checkpoint`. Sharded checkpoints (FSDP/TP ``checkpoint="sharded"``) are
        written synchronously.

        Example:
            >>> trainer.save_checkpoint("runs/checkpoints/manual")                    # doctest: +SKIP
            >>> trainer.save_checkpoint("runs/checkpoints/bg", async_save=True)     # doctest: +SKIP
            >>> trainer.wait_for_checkpoint()                                         # doctest: +SKIP
        """
        module = self._require_module("save_checkpoint")
        self.totals.nonfinite.raise_if_any(self.strategy, self.state.global_step)  # never save NaN weights
        metadata = {
            "global_step": self.state.global_step,
            "epoch": self.state.epoch,
            "hparams": dict(module.hparams),
        }
        manager.save(
            path,
            self._states(),
            module,
            self.optimizers,
            self.strategy,
            metadata,
            on_save=lambda checkpoint: self._call("on_save_checkpoint", checkpoint),
            max_shard_bytes=max_shard_bytes,
            background=self._background if async_save else None,
        )
        if not async_save:
            self._background.wait()  # keeps save order: an earlier background save is committed too
        for logger in self.loggers:
            logger.after_save_checkpoint(path)

    def wait_for_checkpoint(self) -> None:
        """Block until the background save in flight (``async_save=True``) is complete; raise its error."""
        self._background.wait()

    # -- internals -------------------------------------------------------------------------------
    def _setup_optimizers(self, module: TaskModule[Any]) -> OptimizerSetup:
        """``configure_optimizers`` parsed and checked against the module's optimization mode, each
        optimizer set up by the strategy."""
        setup = parse_optimizers(module.configure_optimizers())
        setup.check_mode(module.automatic_optimization, type(module).__name__)
        prepared = self.strategy.setup_optimizers(setup.optimizers)
        for config, optimizer in zip(setup.configs, prepared, strict=True):
            config.optimizer = optimizer
        return setup

    def _states(self) -> dict[str, Stateful]:
        """Everything that resumes, by the name it has in checkpoints (pinned by tests/checkpoint/test_golden.py).

        The RNGs come last: loading the others draws nothing, so they continue from the saved point.
        """
        states: dict[str, Stateful] = {
            "trainer": self.state,
            "fit_loop": self.fit_loop,
            "totals": self.totals,
            "logs": self.logs,
            "precision": self.strategy.precision,
        }
        states.update({f"lr_scheduler.{i}": c.scheduler for i, c in enumerate(self.lr_scheduler_configs)})
        states.update({f"callbacks.{cb.state_key}": cb for cb in self.callbacks})
        states.update(logger_states(self.loggers))  # trackers' run identity (MLflow, W&B)
        states["rng"] = ProcessRng(lambda: sampler_generator(self.train_dataloader))
        return states

    def _adopt_worker_result(self, module: TaskModule[Any], payload: dict[str, Any]) -> FitResult:
        """Make this (launching) process hold what rank 0 held after the fit: weights, optimizer and
        scheduler state, loops, callbacks, metrics (not its RNGs or data position)."""
        self.module = module
        self._optim = parse_optimizers(module.configure_optimizers())
        self._per_rank_batch_size = payload["per_rank_batch_size"]
        model = ModelState(payload["model"]["weights"], payload["model"]["optimizers"])
        SingleDevice("cpu").set_state(module, self.optimizers, model)  # full tensors into a plain module
        for name, state in self._states().items():
            if name in payload["states"] and name != "rng":
                state.load_state_dict(payload["states"][name])
        return FitResult(**payload["result"])

    @contextmanager
    def _run(self, module: TaskModule[Any], stage: str, ckpt_path: str | None = None) -> Iterator[str | None]:
        """Attach the module, set up the strategy, check the ranks agree, run, and always clean up
        (hooks see failures). Gives ``ckpt_path`` resolved ("last", "auto": by rank 0, for all)."""
        if not isinstance(module, TaskModule):
            raise TypeError(f"Trainer.{stage}() expects a TaskModule, got {type(module).__name__}")
        if self.args.seed is not None:
            seed_everything(self.args.seed)
        previous_determinism = torch.are_deterministic_algorithms_enabled()
        if self.args.deterministic:
            torch.use_deterministic_algorithms(True)
        self.state.stage = stage
        try:
            yield self._attach(module, stage, ckpt_path)
        except BaseException as error:
            self._call("on_exception", error)
            explained = self.strategy.explain_failure(error)  # e.g. which rank made a collective time out
            if explained is not None:
                raise explained from error
            raise
        finally:
            for logger in self.loggers:
                logger.finalize()
            self.state.stage = None
            module._log_buffer = None
            torch.use_deterministic_algorithms(previous_determinism)

    def _attach(self, module: TaskModule[Any], stage: str, ckpt_path: str | None) -> str | None:
        """Set the strategy up for ``module`` (once per module); return ``ckpt_path`` as the preflight resolved it."""
        self.module = module
        module._trainer = self
        module._log_buffer = self.logs
        self.hooks = HookDispatcher(self, module, self.callbacks)
        first = self._setup_done_for is not module
        if first:
            self.strategy.setup_environment()
        if stage == "fit":  # a SIGTERM from here on (preflight, model set-up, restore) is not lost
            for callback in self.callbacks:
                if isinstance(callback, Preemption):
                    callback.arm()
        # Before any collective of the strategy's own: ranks that disagree fail here, in seconds.
        path = preflight(
            self.strategy, self.args, module, ckpt_path, self.default_root_dir, f"Trainer.{stage}"
        )
        if first:
            with self.strategy.module_init_context():
                module.configure_model()
            self.strategy.setup_module(module)
            if self.args.compile_options is not None:  # after wrapping/sharding, inside any wrapper
                apply_compile(module, self.args.compile_options)
            self._setup_done_for = module
        return path

    def _context(self, module: TaskModule[Any]) -> LoopContext:
        return LoopContext(
            module=module,
            strategy=self.strategy,
            hooks=self.hooks,
            state=self.state,
            logs=self.logs,
            totals=self.totals,
            optim=self._optim,
            train_dataloader=self.train_dataloader,
            val_dataloader=self.val_dataloader,
        )

    def _evaluate(
        self,
        module: TaskModule[Any],
        dataloaders: EvalDataloaders | None,
        ckpt_path: str | None,
        stage: str,
        loop: EvaluationLoop,
    ) -> list[dict[str, float]]:
        self.strategy.check_module(module)
        ckpt_path = self._best_if_asked(ckpt_path, stage)
        if processes := self.strategy.processes_to_launch:  # devices=N: evaluate in N new processes
            payload = spawn(_call_in_worker, (self, stage, module, dataloaders, ckpt_path), processes)
            return payload["result"]
        with self._run(module, stage, ckpt_path) as path:
            self._load_weights(path)
            hook = module.val_dataloader if stage == "validate" else module.test_dataloader
            loader = dataloaders if dataloaders is not None else hook()
            if loader is None:
                raise ValueError(
                    f"Trainer.{stage}(): no dataloader; pass dataloaders= or implement {type(module).__name__}.val_dataloader()"
                )
            loader = self._eval_dataloaders(loader, f"{stage}(dataloaders=...)")
            return [loop.run(self._context(module), loader)]

    def _eval_dataloaders(self, dataloaders: Any, who: str) -> Any:
        """One evaluation loader or ``{name: loader}`` (a list of DataLoaders gets index names),
        each as this rank reads it (its own shard)."""
        if dataloaders is None:
            return None
        named = named_dataloaders(dataloaders, f"Trainer.{who}")
        return map_dataloaders(named, lambda d: self.strategy.process_dataloader(d, self.args.seed or 0))

    def _fit_result(self, runtime: float, steps: int, samples: int, items: int) -> FitResult:
        if self.strategy.world_size > 1:  # every rank's samples and items: totals, as one big job
            local = torch.tensor([samples, items], dtype=torch.float64, device=self.strategy.root_device)
            samples, items = (int(v) for v in self.strategy.reduce(local, "sum").tolist())
        metrics = dict(self.callback_metrics)
        metrics["train_runtime"] = runtime
        metrics["train_samples_per_second"] = samples / runtime if runtime > 0 else 0.0
        metrics["train_steps_per_second"] = steps / runtime if runtime > 0 else 0.0
        if self.counts_items:
            metrics["train_tokens_per_second"] = items / runtime if runtime > 0 else 0.0
        train_loss = global_mean(self.strategy, self.totals.losses.mean)
        metrics["train_loss"] = train_loss
        checkpoint = monitoring_checkpoint(self.callbacks)
        best = checkpoint.best if checkpoint is not None else None
        return FitResult(
            global_step=self.state.global_step,
            train_loss=train_loss,
            metrics=metrics,
            best_model_path=best["path"] if best is not None else None,
            best_model_score=best["score"] if best is not None else None,
        )

    def _best_if_asked(self, ckpt_path: str | None, stage: str) -> str | None:
        """``"best"``: the path of the monitored ModelCheckpoint's best checkpoint, as this trainer knows it."""
        return best_checkpoint_path(self.callbacks, f"Trainer.{stage}") if ckpt_path == "best" else ckpt_path

    def _load_weights(self, path: str | None) -> None:
        if path is not None:  # resolved in the preflight
            manager.load_weights(path, self._require_module("load weights"), self.strategy)

    def _call(self, hook: str, *args: Any) -> None:
        self.hooks.call(hook, *args)

    def _require_module(self, what: str) -> TaskModule[Any]:
        if self.module is None:
            raise RuntimeError(f"Trainer.{what}() needs a module: call fit/validate/test/predict first")
        return self.module


def _fit_in_worker(
    trainer: Trainer,
    module: TaskModule[Any],
    train_dataloaders: DataLoader[Any] | None,
    val_dataloaders: EvalDataloaders | None,
    ckpt_path: str | None,
) -> dict[str, Any]:
    """One rank's fit, started by :func:`~tasktrain.strategies.launcher.spawn`; returns plain data."""
    try:
        result = trainer.fit(module, train_dataloaders, val_dataloaders, ckpt_path)
        model = trainer.strategy.get_state(module, trainer.optimizers, sharded=False)  # every rank gathers
        assert model is not None
        return {
            "result": asdict(result),
            "model": {"weights": model.model, "optimizers": model.optimizers},  # plain data for the launcher
            "states": {name: state.state_dict() for name, state in trainer._states().items()},
            "per_rank_batch_size": trainer._per_rank_batch_size,
        }
    finally:
        trainer.strategy.teardown()


def _call_in_worker(
    trainer: Trainer,
    method: str,
    module: TaskModule[Any],
    dataloaders: Any,
    ckpt_path: str | None,
) -> dict[str, Any]:
    """One rank's validate/test/predict, started by :func:`~tasktrain.strategies.launcher.spawn`."""
    try:
        return {"result": getattr(trainer, method)(module, dataloaders, ckpt_path)}
    finally:
        trainer.strategy.teardown()


def _check_manual_optimization(args: TrainerArgs, module_name: str) -> None:
    """Refuse the Trainer settings that belong to automatic optimization (the user owns the step)."""
    refused = []
    if args.accumulate_grad_batches > 1:
        refused.append(
            f"accumulate_grad_batches={args.accumulate_grad_batches} (accumulate yourself: step every n-th batch)"
        )
    if args.gradient_clip_val is not None:
        refused.append(
            f"gradient_clip_val={args.gradient_clip_val} (call self.clip_gradients(opt, gradient_clip_val=...) "
            "before opt.step())"
        )
    if refused:
        raise ValueError(
            f"{module_name} has automatic_optimization = False, so training_step steps the optimizers; "
            f"Trainer({', '.join(r.split(' (')[0] for r in refused)}) is for automatic optimization. Instead: "
            + "; ".join(refused)
        )


def _check_scheduler_count(path: str, saved: Mapping[str, Any], count: int) -> None:
    """Schedulers resume by position: a checkpoint with another number of them is refused."""
    saved_count = sum(1 for name in saved if name.startswith("lr_scheduler."))
    if saved_count != count:
        raise CheckpointError(
            f"{path} holds the state of {saved_count} LR scheduler(s), but this run's configure_optimizers() "
            f"returned {count}; schedulers are restored by position, so the counts must match"
        )


def _batch_size(loader: Any) -> int | None:
    """A loader's fixed batch size: its ``batch_size``, else its batch sampler's (None if neither)."""
    for holder in (loader, getattr(loader, "batch_sampler", None)):
        size = getattr(holder, "batch_size", None)
        if isinstance(size, int) and not isinstance(size, bool):
            return size
    return None


def _build_strategy(args: TrainerArgs) -> Strategy:
    if isinstance(args.strategy, Strategy):
        check_num_nodes(args.num_nodes, detect_environment())
        return _adopt_strategy(args)
    devices = args.devices if isinstance(args.devices, int) else 1
    precision = build_precision(args.precision)
    environment = detect_environment()  # torchrun / SLURM: the environment decides
    check_num_nodes(args.num_nodes, environment)
    launched_ranks = environment.world_size
    name = "ddp" if args.strategy == "auto" and max(devices, launched_ranks) > 1 else args.strategy
    if name in ("auto", "single"):
        return SingleDevice(default_device(args.accelerator), precision)
    if name == "ddp":
        return DDP(devices, args.accelerator, precision)
    if name == "fsdp":  # the sharded strategies are imported on use: their torch modules are slow to import
        from tasktrain.strategies.fsdp import FSDP

        return FSDP(devices, args.accelerator, precision)
    if name == "tp":
        from tasktrain.strategies.tensor_parallel import TensorParallel

        return TensorParallel(devices, args.accelerator, precision)
    from tasktrain.strategies.deepspeed import DeepSpeed

    return DeepSpeed(devices, args.accelerator, precision, stage=DEEPSPEED_STAGES[name])


def _adopt_strategy(args: TrainerArgs) -> Strategy:
    """A user's Strategy object: give it the Trainer's precision unless it brought its own."""
    strategy = args.strategy
    assert isinstance(strategy, Strategy)
    if not strategy.precision_given:
        strategy.precision = build_precision(args.precision)
    elif args.precision not in ("32-true", strategy.precision.name):
        raise ValueError(
            f"Trainer(precision={args.precision!r}) conflicts with the strategy's own precision plugin "
            f"{strategy.precision.name!r}; give precision in one place"
        )
    return strategy


def _build_callbacks(args: TrainerArgs) -> list[Callback]:
    callbacks = list(args.callbacks or [])
    if args.enable_progress_bar and not any(isinstance(cb, ProgressBar) for cb in callbacks):
        callbacks.append(ProgressBar())
    if args.enable_checkpointing and not any(isinstance(cb, ModelCheckpoint) for cb in callbacks):
        callbacks.append(ModelCheckpoint())
    if args.enable_checkpointing and not any(isinstance(cb, Preemption) for cb in callbacks):
        callbacks.append(Preemption())
    return callbacks


def _build_loggers(args: TrainerArgs) -> list[Logger]:
    if args.logger is True:
        return [CSVLogger(str(args.default_root_dir))]
    if args.logger is False:
        return []
    loggers = [args.logger] if isinstance(args.logger, Logger) else list(args.logger)
    for logger in loggers:
        logger.set_default_root_dir(str(args.default_root_dir))
    return loggers
