"""Start N processes on this machine for ``devices=N``, and bring rank 0's result back.

Under torchrun (or SLURM) the processes already exist and nothing is started here. Spawned
processes re-import the user's script, so the script must create the Trainer under
``if __name__ == "__main__":``.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable
from typing import Any

import torch
import torch.multiprocessing as mp

_RESULT = "result.pt"
_PAYLOAD = "payload.pkl"


def spawn(fn: Callable[..., dict[str, Any]], args: tuple[Any, ...], nprocs: int) -> dict[str, Any]:
    """Run ``fn(*args)`` in ``nprocs`` fresh processes (ranks 0..N-1); return what rank 0 returned.

    The result must hold only tensors and plain data: it travels through a file loaded with
    ``torch.load(weights_only=True)``. A failure in any rank is raised here with its traceback.

    Example:
        >>> result = spawn(train_one_rank, (module, loader), nprocs=2)  # doctest: +SKIP
    """
    with tempfile.TemporaryDirectory(prefix="tasktrain-") as tmp:
        # Plain pickle, not torch.multiprocessing's: that would put the tensors in memory shared by
        # all ranks, and every rank's optimizer would then step the same parameters. Through a file,
        # not an argument: spawn writes arguments into a 64 KiB pipe that a child drains only after
        # importing the user's script, which would start the ranks one after another.
        payload = os.path.join(tmp, _PAYLOAD)
        with open(payload, "wb") as f:
            pickle.dump((fn, args), f)
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(nprocs)}
        context = mp.start_processes(
            _worker, args=(payload, env, nprocs, tmp), nprocs=nprocs, join=False, start_method="spawn"
        )
        _join(context)
        result: dict[str, Any] = torch.load(os.path.join(tmp, _RESULT), weights_only=True)
    return result


def _join(context: mp.ProcessContext) -> None:
    """Wait for every rank. A SIGTERM sent to this process goes on to the ranks (they checkpoint and
    exit :data:`~tasktrain.callbacks.preemption.EXIT_PREEMPTED`), and so does their exit status."""
    from tasktrain.callbacks.preemption import EXIT_PREEMPTED

    def forward(signum: int, frame: Any) -> None:
        for process in context.processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signum)

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, forward) if in_main_thread else None
    try:
        while not context.join():
            pass
    except mp.ProcessExitedException as error:
        if error.exit_code == EXIT_PREEMPTED:
            raise SystemExit(EXIT_PREEMPTED) from None
        raise
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _worker(rank: int, payload: str, env: dict[str, str], nprocs: int, tmp: str) -> None:
    os.environ.update(env, RANK=str(rank), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(nprocs))
    # N processes on N cores: the default thread count oversubscribes and runs many times slower.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // nprocs))
    with open(payload, "rb") as f:
        fn, args = pickle.load(f)  # written by our own launcher a moment ago
    try:
        result = fn(*args)
        if rank == 0:
            torch.save(result, os.path.join(tmp, _RESULT))
    except SystemExit as stop:  # e.g. Preemption's EXIT_PREEMPTED: keep the status, skip the teardown below
        _exit_now(stop.code if isinstance(stop.code, int) else 1)
    _exit_now(0)


def _exit_now(status: int) -> None:
    """End a rank whose work is done without interpreter shutdown.

    At shutdown, gloo's background threads are sometimes destroyed while joinable, which aborts
    the process (SIGABRT, "terminate called without an active exception") after it finished its
    work; the launcher would then report a failure. Errors raised by ``fn`` never get here: they
    propagate to torch's wrapper, which reports them with their traceback.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
