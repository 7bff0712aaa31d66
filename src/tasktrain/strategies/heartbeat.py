"""Which rank made a collective fail: every rank says, every few seconds, where its main thread is.

A collective that times out tells the waiting rank only that *someone* did not come. Each rank
of a job therefore runs a daemon thread that writes, every ``interval`` seconds, a small record
(time, host, pid and the main thread's innermost Python frame) to the job's key-value store (the
``TCPStore`` at ``MASTER_ADDR:MASTER_PORT`` that torchrun or rank 0 hosts). When a collective
fails, :meth:`Heartbeat.blame` reads the other ranks' records and names those that were not
waiting inside torch (hung in user code) or stopped writing (dead or frozen). It costs one small
TCP write per rank every few seconds, off the training thread: no device read, no collective.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import threading
import time
from datetime import timedelta
from typing import Any

#: Seconds between two records of one rank.
INTERVAL_S = 2.0
#: What the error of a rank whose collective failed because of another rank looks like.
COLLECTIVE_FAILURE = re.compile(
    r"DistBackendError|DistNetworkError|DistStoreError|Timed out|timed out|Connection closed by peer|"
    r"Connection reset by peer|Broken pipe|ProcessGroupGloo|ProcessGroupNCCL|gloo/transport"
)
_KEY = "tasktrain/heartbeat/{rank}"


class Heartbeat:
    """The heartbeat thread of one rank, and the reader that blames the others.

    Example:
        >>> beat = Heartbeat.start(rank=0, world_size=2, host="127.0.0.1", port=29500)  # doctest: +SKIP
        >>> beat.blame()  # after a collective failed                                   # doctest: +SKIP
        'rank 1 (node02, pid 4242) was not in a collective: in training_step (train.py:31), 0.4 s ago'
    """

    def __init__(self, store: Any, rank: int, world_size: int, interval: float = INTERVAL_S) -> None:
        self.store = store
        self.rank = rank
        self.world_size = world_size
        self.interval = interval
        self._stop = threading.Event()
        self._main = threading.main_thread().ident
        self._host = socket.gethostname()
        self._thread = threading.Thread(target=self._run, name="tasktrain-heartbeat", daemon=True)

    @classmethod
    def start(
        cls, rank: int, world_size: int, host: str, port: int, interval: float = INTERVAL_S
    ) -> Heartbeat | None:
        """Connect to the job's store and start beating; None when the store cannot be reached."""
        import torch.distributed as dist

        try:
            store = dist.TCPStore(host, port, world_size, is_master=False, timeout=timedelta(seconds=10))
        except Exception:  # no store to reach (e.g. a process group made some other way): no heartbeat
            return None
        beat = cls(store, rank, world_size, interval)
        beat._thread.start()
        return beat

    def stop(self) -> None:
        """End the thread (before the process group is destroyed)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2 * self.interval)

    def _run(self) -> None:
        while True:
            try:
                self._write()
            except Exception:  # the store went away (rank 0 or the agent ended): nothing left to tell
                return
            if self._stop.wait(self.interval):
                return

    def _write(self) -> None:
        frame = sys._current_frames().get(self._main) if self._main is not None else None
        record = {
            "time": time.time(),
            "host": self._host,
            "pid": os.getpid(),
            "where": None,
            "in_torch": False,
        }
        if frame is not None:
            code = frame.f_code
            record["where"] = f"{code.co_name} ({os.path.basename(code.co_filename)}:{frame.f_lineno})"
            record["in_torch"] = f"{os.sep}torch{os.sep}" in code.co_filename
        self.store.set(_KEY.format(rank=self.rank), json.dumps(record))

    def records(self) -> dict[int, dict[str, Any]]:
        """The latest record of every other rank that wrote one."""
        out: dict[int, dict[str, Any]] = {}
        for rank in range(self.world_size):
            key = _KEY.format(rank=rank)
            if rank == self.rank:
                continue
            try:
                if self.store.check([key]):
                    out[rank] = json.loads(self.store.get(key))
            except Exception:
                continue
        return out

    def blame(self, peer_closed: bool = False) -> str | None:
        """The ranks that did not take part in the failed collective, as one sentence (None: no one to name).

        ``peer_closed``: the collective failed because a connection closed (a peer died); every
        other rank's last position is listed, since a rank that just died still looks fresh.
        """
        now = time.time()
        stale_after = 3 * self.interval + 1.0
        suspects = []
        for rank, record in sorted(self.records().items()):
            age = now - float(record["time"])
            who = f"rank {rank} ({record['host']}, pid {record['pid']})"
            if age > stale_after:
                suspects.append(
                    f"{who} stopped responding {age:.0f} s ago (dead or frozen), last in {record['where']}"
                )
            elif peer_closed:
                suspects.append(f"{who} was last seen {age:.1f} s ago in {record['where']}")
            elif not record["in_torch"]:
                suspects.append(f"{who} was not in a collective but in {record['where']} ({age:.1f} s ago)")
        if peer_closed and suspects:
            return (
                "a peer's connection closed (it probably died; its own exit status says how): "
                + "; ".join(suspects)
            )
        return "; ".join(suspects) or None
