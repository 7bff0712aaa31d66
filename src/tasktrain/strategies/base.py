"""The ``Strategy`` interface: where tensors live and how gradients are synchronised.

Loops talk to a strategy only through these methods, so a new strategy never touches a loop.
A strategy owns a :class:`~tasktrain.precision.Precision` plugin and delegates autocast,
backward and the optimizer step to it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from lightning_utilities.core.rank_zero import rank_zero_only
from torch import Tensor, nn
from torch.optim import Optimizer

from tasktrain.precision import Precision
from tasktrain.strategies.named_optim import is_plain, load_named_state_dict, named_state_dict


def _rank_from_environment() -> int:
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


_NO_CONTEXT = nullcontext()  # reusable; saves an allocation per micro-batch


@dataclass
class ModelState:
    """What a strategy saves of a module and its optimizers (see :meth:`Strategy.get_state`).

    ``model`` maps parameter and buffer names to tensors; ``optimizers`` holds one state dict
    per optimizer, by position, keyed by parameter name; ``sharded`` says whether the tensors
    are this rank's shards (DTensors) rather than whole tensors.
    """

    model: dict[str, Any]
    optimizers: list[dict[str, Any]] = field(default_factory=list)
    sharded: bool = False


# Rank-zero-only helpers need a rank before any strategy is set up; strategies update it.
if not hasattr(rank_zero_only, "rank"):
    rank_zero_only.rank = _rank_from_environment()  # type: ignore[attr-defined]


class Strategy:
    """Base strategy: one process, one device. Subclasses override what differs.

    Example:
        >>> from tasktrain.strategies import SingleDevice
        >>> strategy = SingleDevice(torch.device("cpu"))
        >>> strategy.reduce(torch.tensor(2.0), "sum")
        tensor(2.)
    """

    #: Name used in ``Trainer(strategy=...)``.
    name = "base"

    def __init__(self, device: torch.device | str = "cpu", precision: Precision | None = None) -> None:
        self.root_device = torch.device(device)
        self.precision_given = precision is not None  # else the Trainer's ``precision`` decides
        self.precision = precision if precision is not None else Precision()

    # -- topology --------------------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        return 1

    @property
    def global_rank(self) -> int:
        return 0

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    @property
    def data_parallel_size(self) -> int:
        """How many ranks read different data (gradients are averaged over them)."""
        return self.world_size

    @property
    def data_parallel_rank(self) -> int:
        """Which share of the data this rank reads (ranks of one tensor-parallel group share one)."""
        return self.global_rank

    # -- setup -----------------------------------------------------------------------------------
    def setup_environment(self) -> None:
        """Prepare the process (device selection, process group). Called first in every run."""
        rank_zero_only.rank = self.global_rank  # type: ignore[attr-defined]
        self.precision.setup(self.root_device)

    @property
    def processes_to_launch(self) -> int:
        """How many processes ``fit`` must start to run the job (``launcher.spawn``); 0: run here."""
        return 0

    def process_dataloader(self, dataloader: Any, seed: int = 0) -> Any:
        """The training or evaluation dataloader as this rank should read it (data-parallel strategies shard it)."""
        return dataloader

    def check_module(self, module: nn.Module) -> None:
        """Fail early (before any process starts) if ``module`` cannot run under this strategy."""

    def setup_module(self, module: nn.Module) -> nn.Module:
        """Move (and, in subclasses, shard) the module in place, and return it.

        Loops always call the user's module; a strategy that needs a wrapper (DDP) keeps the
        wrapper itself and routes steps through it in :meth:`forward_step`.
        """
        return self.precision.convert_module(module).to(self.root_device)

    def configure(
        self, accumulate_grad_batches: int, gradient_clip_val: float | None, gradient_clip_algorithm: str
    ) -> None:
        """Take the Trainer settings a strategy that runs its own step needs (DeepSpeed); a no-op here."""

    def setup_optimizers(self, optimizers: Sequence[Optimizer]) -> list[Optimizer]:
        """Prepare every optimizer of the fit, in order (a strategy that runs one engine refuses several)."""
        return [self.setup_optimizer(optimizer) for optimizer in optimizers]

    def setup_optimizer(self, optimizer: Optimizer) -> Optimizer:
        return optimizer

    def batch_to_device(self, batch: Any) -> Any:
        """Move every tensor of a nested batch to the device and precision of this strategy."""
        if self.root_device.type != "cpu":
            batch = apply_to_collection(batch, Tensor, Tensor.to, self.root_device, non_blocking=True)
        return self.precision.convert_input(batch)

    def teardown(self) -> None:
        """Release what ``setup_environment`` acquired (e.g. the process group).

        The launcher calls it when a spawned rank finishes. A process started by torchrun keeps
        its process group across ``fit``/``validate`` calls; call this at the end of the script.
        """

    def explain_failure(self, error: BaseException) -> BaseException | None:
        """An error that says more than ``error`` about why the run failed (e.g. which rank hung), or None."""
        return None

    # -- one training step -----------------------------------------------------------------------
    def forward_step(self, step: Callable[[Any, int], Any], batch: Any, batch_idx: int) -> Any:
        """Call a module step (``training_step``, ``validation_step``, ...) the way this strategy needs.

        It runs under the precision plugin's autocast. Wrapping strategies (DDP) route it through
        the wrapper's ``forward`` so their hooks run: they override :meth:`_call_step`.
        """
        with self.precision.autocast():
            return self._call_step(step, batch, batch_idx)

    def _call_step(self, step: Callable[[Any, int], Any], batch: Any, batch_idx: int) -> Any:
        return step(batch, batch_idx)

    def no_backward_sync(self, enabled: bool) -> AbstractContextManager[Any]:
        """Skip gradient synchronisation in backward while ``enabled`` (all but the last micro-batch)."""
        return _NO_CONTEXT

    def backward(self, loss: Tensor) -> None:
        self.precision.backward(loss)

    def manual_optimization(self) -> AbstractContextManager[Any]:
        """Where a ``training_step`` under manual optimization runs: gradients synchronised in every
        backward (the strategy's own way), unless the strategy leaves that to :meth:`sync_gradients`."""
        return self.no_backward_sync(False)

    def sync_gradients(self, optimizer: Optimizer) -> None:
        """Manual optimization, before ``optimizer`` steps: make its gradients the data-parallel mean
        where backward did not (DDP). A no-op where backward synchronises."""

    def clip_gradients(
        self, module: nn.Module, optimizer: Optimizer, value: float | None, algorithm: str = "norm"
    ) -> Tensor | None:
        """Make the gradients true-scale (mixed precision), then clip them when ``value`` is given.

        Clips by total norm (returns the norm before clipping) or by value (returns None).
        """
        self.precision.unscale_gradients(optimizer)
        if value is None:
            return None
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if algorithm == "norm":
            return torch.nn.utils.clip_grad_norm_(params, value)
        torch.nn.utils.clip_grad_value_(params, value)
        return None

    def optimizer_step(self, optimizer: Optimizer) -> bool:
        """Step; return False if the precision plugin skipped it (non-finite gradients)."""
        return self.precision.optimizer_step(optimizer)

    # -- collectives (identity on one process) ---------------------------------------------------
    def reduce(self, tensor: Tensor, op: str = "mean", data_parallel: bool = False) -> Tensor:
        """Reduce ``tensor`` over all ranks with ``op`` in {"sum", "mean", "max", "min"}.

        ``data_parallel=True`` reduces over the data-parallel ranks only, counting each batch
        once (ranks of one tensor-parallel group see the same batches).
        """
        return tensor

    def any_rank(self, flag: bool | Tensor) -> bool:
        """Whether ``flag`` (a bool, or a 0-d tensor: read once) is set on any rank (a collective when there are several)."""
        return bool(flag)

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Collect a picklable object from every rank (rank order)."""
        return [obj]

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return obj

    def barrier(self) -> None:
        pass

    # -- checkpoints ----------------------------------------------------------------------------
    def get_state(
        self, module: nn.Module, optimizers: Sequence[Optimizer] = (), sharded: bool | None = None
    ) -> ModelState | None:
        """The module's (and optimizers') state to save, or a template to load a sharded one into.

        Full states hold whole tensors keyed by parameter name, on the CPU, for every strategy: a
        checkpoint saved under one strategy and world size loads under any other. Sharded states
        hold this rank's shards (DTensors), as ``torch.distributed.checkpoint`` saves and fills
        them. ``sharded=None`` picks this strategy's own checkpoint layout. Sharded strategies
        gather or communicate here, so every rank must call it. None: this strategy cannot give
        a sharded state (it then loads a sharded checkpoint as full weights). For a plain module
        (no DTensors, see :func:`~tasktrain.strategies.named_optim.is_plain`) the optimizer states
        are built without DCP and hold the optimizer's own CPU tensors: write them before the next step.
        """
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        sharded = self._saves_sharded if sharded is None else sharded
        options = None if sharded else StateDictOptions(full_state_dict=True, cpu_offload=True)
        if not sharded and is_plain(module):  # no DCP: it would copy, or create state that does not exist
            optimizer_states = [named_state_dict(module, opt) for opt in optimizers]
        else:
            optimizer_states = [get_optimizer_state_dict(module, opt, options=options) for opt in optimizers]
        return ModelState(
            model=get_model_state_dict(module, options=options), optimizers=optimizer_states, sharded=sharded
        )

    def set_state(self, module: nn.Module, optimizers: Sequence[Optimizer], state: ModelState) -> None:
        """Load a state as :meth:`get_state` returns it (full, or filled in by DCP) into module and optimizers."""
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        set_model_state_dict(module, dict(state.model))
        plain = not state.sharded and is_plain(module)
        for optimizer, saved in zip(optimizers, state.optimizers, strict=True):
            if plain:  # the loaded tensors themselves, not DCP's zero-initialised state and then a copy
                load_named_state_dict(module, optimizer, saved)
            else:
                set_optimizer_state_dict(module, optimizer, saved)

    @property
    def _saves_sharded(self) -> bool:
        """Whether this strategy's checkpoints are per-rank DCP shards (else full safetensors weights)."""
        return False

    @contextmanager
    def module_init_context(self) -> Iterator[None]:
        """Where ``configure_model`` builds layers (e.g. on the meta device for sharded strategies)."""
        yield
