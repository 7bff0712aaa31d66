"""``ParallelStrategy``: several processes, one process group, the collectives every parallel strategy shares."""

from __future__ import annotations

import atexit
import gc
import os
import re
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from lightning_utilities.core.rank_zero import rank_zero_only
from torch import Tensor

from tasktrain.data import with_distributed_sampler
from tasktrain.precision import Precision
from tasktrain.strategies.base import Strategy
from tasktrain.strategies.environment import ClusterEnvironment, detect_environment, export_environment
from tasktrain.strategies.heartbeat import COLLECTIVE_FAILURE, Heartbeat
from tasktrain.strategies.launcher import free_port

DEFAULT_TIMEOUT = timedelta(minutes=10)
_REDUCE_OPS = {
    "sum": dist.ReduceOp.SUM,
    "max": dist.ReduceOp.MAX,
    "min": dist.ReduceOp.MIN,
    "mean": dist.ReduceOp.SUM,
}


def as_timeout(owner: str, value: float | timedelta) -> timedelta:
    """A collective timeout given in seconds or as a ``timedelta``, checked (> 0).

    Example:
        >>> as_timeout("DDP", 90)
        datetime.timedelta(seconds=90)
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(
            f"{owner}(timeout={value!r}): accepted values are seconds (a number > 0) or a timedelta"
        )
    if not seconds > 0:
        raise ValueError(
            f"{owner}(timeout={value!r}): accepted values are seconds (a number > 0) or a timedelta"
        )
    return timedelta(seconds=seconds)


_PEER_CLOSED = re.compile(r"Connection (closed|reset) by peer|Broken pipe")


def _attempt_store(timeout: timedelta = DEFAULT_TIMEOUT) -> dist.Store | None:
    """Under a torchrun restart, the job's store keyed by attempt: the previous attempt's peer
    addresses are still in torchrun's store, and a rank that read them would connect to dead ranks."""
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if attempt == "0" or "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        return None
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        None,
        is_master=False,
        timeout=timeout,
        wait_for_workers=False,
    )
    return dist.PrefixStore(f"tasktrain/attempt_{attempt}", store)


class CollectiveError(RuntimeError):
    """A collective failed because another rank did not take part; the message names that rank."""


class ParallelStrategy(Strategy):
    """Base for strategies over a process group: rank bookkeeping, process-group setup, collectives.

    Ranks come from the environment: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` as torchrun and the
    tasktrain launcher set them, or SLURM's ``SLURM_PROCID``, ``SLURM_NTASKS``, ... under ``srun``
    (see :func:`~tasktrain.strategies.environment.detect_environment`). The backend is NCCL on
    CUDA and gloo on CPU.

    Args:
        num_processes: how many processes to start when not launched by torchrun (``devices=N``).
        accelerator: "cpu", "cuda" or "auto".
        timeout: how long a collective may wait, in seconds or as a ``timedelta`` (default 10
            minutes), before the run fails; the launcher then names the rank that did not respond.
    """

    def __init__(
        self,
        num_processes: int = 1,
        accelerator: str = "auto",
        precision: Precision | None = None,
        timeout: float | timedelta = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__("cpu", precision)
        self._num_processes = num_processes
        self.accelerator = accelerator
        self.timeout = as_timeout(type(self).__name__, timeout)
        self._heartbeat: Heartbeat | None = None

    @property
    def environment(self) -> ClusterEnvironment:
        """This process's place in the launched job, read from the environment (see ``environment.py``)."""
        return detect_environment()

    @property
    def world_size(self) -> int:
        env = self.environment
        return env.world_size if env.launched else self._num_processes

    @property
    def global_rank(self) -> int:
        return self.environment.rank

    @property
    def local_rank(self) -> int:
        return self.environment.local_rank

    @property
    def launched(self) -> bool:
        """Whether this process is already one rank of the job (torchrun, SLURM, or our launcher)."""
        return self.environment.launched

    @property
    def processes_to_launch(self) -> int:
        return 0 if self.launched or self._num_processes <= 1 else self._num_processes

    def process_dataloader(self, dataloader: Any, seed: int = 0) -> Any:
        return with_distributed_sampler(dataloader, self.data_parallel_size, self.data_parallel_rank, seed)

    def setup_environment(self) -> None:
        use_cuda = self.accelerator == "cuda" or (self.accelerator == "auto" and torch.cuda.is_available())
        self.root_device = torch.device("cuda", self.local_rank) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(self.root_device)
        env = self.environment
        export_environment(env)  # SLURM's variables as torch's (RANK, MASTER_ADDR, ...)
        if not dist.is_initialized():
            # One process started without a launcher (devices=1): a group of one on loopback.
            store = _attempt_store(self.timeout) if env.launcher == "torchrun" else None
            init_method = None if env.launched else f"tcp://127.0.0.1:{free_port()}"
            dist.init_process_group(
                backend="nccl" if use_cuda else "gloo",
                init_method=None if store is not None else init_method,
                store=store,
                rank=self.global_rank,
                world_size=self.world_size,
                timeout=self.timeout,
            )
            if env.launched and self.world_size > 1 and env.master_port is not None:
                self._heartbeat = Heartbeat.start(
                    self.global_rank, self.world_size, env.master_addr, env.master_port
                )
            # What we created goes at exit, in order (heartbeat, then group), also when the script
            # never calls teardown: left to interpreter shutdown, the group's threads may abort it.
            atexit.register(self.teardown)
        rank_zero_only.rank = self.global_rank  # type: ignore[attr-defined]
        self.precision.setup(self.root_device)

    def teardown(self) -> None:
        if self._heartbeat is not None:  # before the group: it writes to the group's store
            self._heartbeat.stop()
            self._heartbeat = None
        if dist.is_initialized():
            gc.collect()  # wrappers and meshes that referenced the group, before the group itself
            dist.destroy_process_group()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_heartbeat"] = None  # a thread and a connection of this process: not for another one
        return state

    def explain_failure(self, error: BaseException) -> BaseException | None:
        """A collective that failed because of another rank: an error naming that rank (from the heartbeats)."""
        if self._heartbeat is None or not COLLECTIVE_FAILURE.search(f"{type(error).__name__}: {error}"):
            return None
        blame = self._heartbeat.blame(peer_closed=bool(_PEER_CLOSED.search(str(error))))
        if blame is None:
            return None
        return CollectiveError(
            f"rank {self.global_rank}'s collective failed because another rank did not take part: {blame}. "
            f"The collective's own error: {type(error).__name__}: {error}"
        )

    # -- collectives -----------------------------------------------------------------------------
    def reduce(self, tensor: Tensor, op: str = "mean", data_parallel: bool = False) -> Tensor:
        if op not in _REDUCE_OPS:
            raise ValueError(f"reduce(op={op!r}): accepted values are {sorted(_REDUCE_OPS)}")
        result = tensor.to(self.root_device, copy=True)  # NCCL refuses CPU tensors (e.g. logged floats)
        group = self._data_parallel_group() if data_parallel else None
        dist.all_reduce(result, op=_REDUCE_OPS[op], group=group)
        size = dist.get_world_size(group)
        return result / size if op == "mean" else result

    def _data_parallel_group(self) -> dist.ProcessGroup | None:
        """The ranks that read different data (None: all of them)."""
        return None

    def all_gather_object(self, obj: Any) -> list[Any]:
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        holder = [obj]
        dist.broadcast_object_list(holder, src=src)
        return holder[0]

    def barrier(self) -> None:
        dist.barrier()

    def any_rank(self, flag: bool | Tensor) -> bool:
        local = torch.as_tensor(flag, device=self.root_device).to(torch.float32).reshape(())
        return bool(self.reduce(local, "max").item())
