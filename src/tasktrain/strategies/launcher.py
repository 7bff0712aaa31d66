"""Start N processes on this machine for ``devices=N``, and bring rank 0's result back.

Under torchrun (or SLURM) the processes already exist and nothing is started here. Spawned
processes re-import the user's script, so the script must create the Trainer under
``if __name__ == "__main__":``.
"""

from __future__ import annotations

import multiprocessing.connection
import os
import pickle
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.multiprocessing as mp

from tasktrain.strategies.heartbeat import COLLECTIVE_FAILURE

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
        with _forwarding(signal.SIGTERM) as forwarder:
            context = mp.start_processes(
                _worker, args=(payload, env, nprocs, tmp), nprocs=nprocs, join=False, start_method="spawn"
            )
            forwarder.attach(context.processes)
            _join(context, preempting=lambda: bool(forwarder.received))
        result: dict[str, Any] = torch.load(os.path.join(tmp, _RESULT), weights_only=True)
    return result


#: After one rank fails, how long the others get to fail on their own (a peer's collective error
#: follows within a second or two) before the launcher kills them and names the ones still running.
FAILURE_GRACE_S = 5.0
PREEMPTED_GRACE_S = 60.0


class RankFailedError(RuntimeError):
    """A spawned rank failed, died or stopped responding; the message names that rank.

    ``rank`` is the rank to blame, ``kind`` one of ``"raised"``, ``"died"``, ``"not responding"``.
    """

    def __init__(self, message: str, rank: int, kind: str) -> None:
        super().__init__(message)
        self.rank = rank
        self.kind = kind


class _Forwarder:
    """Sends a signal this process receives on to the ranks (also one that came while they started)."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.processes: list[Any] = []

    def __call__(self, signum: int, frame: Any) -> None:
        self.received.append(signum)
        self._send(signum)

    def attach(self, processes: list[Any]) -> None:
        self.processes = processes
        for signum in self.received[-1:]:  # arrived while the ranks were being started
            self._send(signum)

    def _send(self, signum: int) -> None:
        for process in self.processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signum)


@contextmanager
def _forwarding(sig: signal.Signals) -> Iterator[_Forwarder]:
    """While the ranks run, ``sig`` sent to this process goes on to them (main thread only)."""
    forwarder = _Forwarder()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(sig, forwarder) if in_main_thread else None
    try:
        yield forwarder
    finally:
        if in_main_thread:
            signal.signal(sig, previous)


def _join(context: mp.ProcessContext, preempting: Callable[[], bool] = lambda: False) -> None:
    """Wait for every rank; when one fails, name the rank to blame and leave none running.

    Ranks asked to stop (a SIGTERM forwarded to them: they checkpoint and exit
    :data:`~tasktrain.callbacks.preemption.EXIT_PREEMPTED`) make this process exit 99 too.
    When a rank fails, the others get :data:`FAILURE_GRACE_S` to fail too, then are killed
    (SIGKILL: Preemption's handler would take a SIGTERM for a request to checkpoint). The rank
    blamed is, in order: one that raised an error of its own; one that died (a signal, or an exit
    status without a Python error); one still running when a peer's collective failed (it hung);
    else the first to fail.
    """
    from tasktrain.callbacks.preemption import EXIT_PREEMPTED

    try:
        failure = _wait_for_all_or_a_failure(context.processes)
        if failure is None:
            return
        failed_at, code = failure
        # A preempted rank exits after the others finished the same checkpoint: give them time to follow.
        grace = PREEMPTED_GRACE_S if code == EXIT_PREEMPTED else FAILURE_GRACE_S
        hung = _reap(context.processes, failed_at + grace)
        _raise_failure(context, hung, preempting=preempting())
    finally:
        for process in context.processes:  # whatever happened here, no rank outlives the launcher
            if process.is_alive():
                process.kill()
                process.join()


def _wait_for_all_or_a_failure(processes: list[Any]) -> tuple[float, int] | None:
    """None when every rank exited 0; else when the first failure was seen, and its exit status."""
    running = {process.sentinel: process for process in processes}
    while running:
        for sentinel in multiprocessing.connection.wait(list(running)):
            process = running.pop(sentinel)
            process.join()
            if process.exitcode != 0:
                return time.monotonic(), process.exitcode
    return None


def _reap(processes: list[Any], deadline: float) -> set[int]:
    """Wait until ``deadline`` for the ranks still running to end, then kill them; return those killed."""
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    hung = {rank for rank, process in enumerate(processes) if process.is_alive()}
    for rank in hung:
        processes[rank].kill()
        processes[rank].join()
    return hung


def _raise_failure(context: mp.ProcessContext, hung: set[int], preempting: bool) -> None:
    from tasktrain.callbacks.preemption import EXIT_PREEMPTED

    codes = {rank: p.exitcode for rank, p in enumerate(context.processes) if rank not in hung}
    errors = {rank: _read_error(context.error_files[rank]) for rank in codes}
    failed = {rank: code for rank, code in codes.items() if code != 0}
    stopped = (EXIT_PREEMPTED, -signal.SIGTERM) if preempting else (EXIT_PREEMPTED,)
    if not hung and all(code in stopped for code in failed.values()):
        raise SystemExit(EXIT_PREEMPTED)
    own = [r for r in failed if errors[r] and not COLLECTIVE_FAILURE.search(errors[r] or "")]
    died = [r for r in failed if not errors[r] and failed[r] != EXIT_PREEMPTED]
    others = "".join(
        f"\n\n-- rank {r} (exit status {failed[r]}) failed as a consequence:\n{errors[r]}"
        for r in failed
        if errors[r] and r not in own
    )
    if own:
        rank = own[0]
        raise RankFailedError(
            f"rank {rank} failed:\n\n-- rank {rank}'s error:\n{errors[rank]}{others}", rank, "raised"
        )
    if died:
        rank = died[0]
        raise RankFailedError(f"rank {rank} died ({_describe_exit(failed[rank])}){others}", rank, "died")
    if hung:
        rank = min(hung)
        names = " and ".join(f"rank {r}" for r in sorted(hung))
        peers = " and ".join(f"rank {r}" for r in sorted(failed))
        raise RankFailedError(
            f"rank {rank} stopped responding: {names} still ran {FAILURE_GRACE_S:.0f} s after the collective of "
            f"{peers} failed (the strategy's timeout ran out waiting), and was killed{others}",
            rank,
            "not responding",
        )
    rank = min(failed)
    raise RankFailedError(f"rank {rank} failed ({_describe_exit(failed[rank])}){others}", rank, "raised")


def _read_error(path: str | None) -> str | None:
    """The traceback torch's process wrapper wrote for a rank that raised (None: it did not raise)."""
    if path is None or not os.access(path, os.R_OK) or os.path.getsize(path) == 0:
        return None
    with open(path, "rb") as f:
        text: str = pickle.load(f)  # written by torch's spawn wrapper in our own child process
    return text


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _worker(rank: int, payload: str, env: dict[str, str], nprocs: int, tmp: str) -> None:
    from tasktrain.callbacks.preemption import catch_early_signals

    catch_early_signals()  # a SIGTERM before fit's Preemption is armed still ends in a clean exit 99
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
