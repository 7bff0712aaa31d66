"""Read a W&B offline run file (``run-<id>.wandb``) back: its records, as W&B wrote them.

The file is W&B's LevelDB-style log: a 7-byte header (``:W&B``, magic 0xBEE1, version 0), then
32 KiB blocks of chunks, each ``crc32 (4) | length (2, little-endian) | type (1) | data``, where
type 1 is a whole record and 2/3/4 the first/middle/last piece of one split over blocks; each
record is a ``wandb_internal_pb2.Record`` protobuf. This reader is the tests' own, written from
that layout, so the tests do not depend on W&B's private reader classes.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wait_until_complete(path: Path, timeout: float = 30.0) -> None:
    """Wait for the run's ``exit`` record: W&B's core process may still be writing when ``finish()`` returns."""
    deadline = time.monotonic() + timeout
    while not _has_exit(path):
        assert time.monotonic() < deadline, f"{path}: no exit record after {timeout} s"
        time.sleep(0.1)


def _has_exit(path: Path) -> bool:
    try:
        return any(r.WhichOneof("record_type") == "exit" for r in records(path))
    except Exception:  # a record still being written does not parse yet
        return False


def records(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    out: list[Any] = []
    pos, pieces = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the block's tail is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
            continue
        pieces = chunk if kind in (FULL, FIRST) else pieces + chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pieces)
            out.append(record)
            pieces = b""
    return out


def history(path: Path) -> list[dict[str, Any]]:
    """The history rows of a run file: ``{key: value}`` with ``_step``, in order."""
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
    return rows


def config(path: Path) -> dict[str, Any]:
    """The run's config as its records set it (later updates win)."""
    values: dict[str, Any] = {}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        updates = (
            record.config.update if kind == "config" else record.run.config.update if kind == "run" else []
        )
        for item in updates:
            values[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return values


def run_id(path: Path) -> str:
    found = records(path)
    ids = [r.run.run_id for r in found if r.WhichOneof("record_type") == "run"]
    assert ids, (
        f"{path} ({path.stat().st_size} bytes) has no run record: {[r.WhichOneof('record_type') for r in found]}"
    )
    return ids[0]
