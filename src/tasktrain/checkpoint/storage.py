"""Checkpoint directories over fsspec: written whole or not at all, found again by step.

A checkpoint directory is *complete* when its ``manifest.json`` exists and every file it lists
exists with the listed size. The manifest is written last. On a local filesystem the directory
is also written under a temporary name and renamed into place, so an interrupted save leaves
only a ``*.tmp-*`` directory that nothing ever picks.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from typing import IO, Any

from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

MANIFEST = "manifest.json"
_STEP_PATTERN = re.compile(r"step=(\d+)")


class CheckpointWriter:
    """Collects the files of one checkpoint and commits them with a manifest.

    Example:
        >>> with CheckpointWriter("memory://ckpt/step=1") as w:
        ...     w.write_bytes("a.bin", b"123")
        >>> is_complete("memory://ckpt/step=1")
        True
    """

    def __init__(self, path: str, step: int | None = None) -> None:
        self.path = path.rstrip("/")
        self.step = step
        self.fs, self._final = url_to_fs(self.path)
        self._final = self._final.rstrip("/")
        self._atomic_rename = isinstance(self.fs, LocalFileSystem)
        self._dir = f"{self._final}.tmp-{uuid.uuid4().hex[:8]}" if self._atomic_rename else self._final
        self._sizes: dict[str, int] = {}

    def __enter__(self) -> CheckpointWriter:
        if not self._atomic_rename and self.fs.exists(f"{self._final}/{MANIFEST}"):
            self.fs.rm(
                f"{self._final}/{MANIFEST}"
            )  # the old checkpoint stops counting before we overwrite it
        self.fs.makedirs(self._dir, exist_ok=True)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.commit()
        elif self._atomic_rename and self.fs.exists(self._dir):
            self.fs.rm(self._dir, recursive=True)

    @property
    def directory(self) -> str:
        """Where the files go until commit (a URL when the filesystem is not local)."""
        return self._dir if self._atomic_rename else str(self.fs.unstrip_protocol(self._dir))

    def record(self, folder: str) -> None:
        """Add every file under ``folder`` (written by others, e.g. other ranks) to the manifest."""
        base = f"{self._dir}/{folder}"
        for file, info in self.fs.find(base, detail=True).items():
            self._sizes[f"{folder}/{file[len(base) + 1 :]}"] = int(info["size"])

    def write_bytes(self, name: str, data: bytes) -> None:
        self.write_with(name, lambda f: f.write(data))

    def write_with(self, name: str, writer: Callable[[IO[bytes]], Any]) -> None:
        """Open ``name`` for binary writing and hand the file object to ``writer``."""
        with self.fs.open(f"{self._dir}/{name}", "wb") as f:
            writer(f)
        self._sizes[name] = int(self.fs.size(f"{self._dir}/{name}"))

    def commit(self) -> None:
        with self.fs.open(f"{self._dir}/{MANIFEST}", "w") as f:
            json.dump({"files": self._sizes, "step": self.step}, f, indent=2)
        if self._atomic_rename:
            if self.fs.exists(self._final):
                self.fs.rm(self._final, recursive=True)
            self.fs.mv(self._dir, self._final, recursive=True)


def is_complete(path: str) -> bool:
    """Whether ``path`` holds a committed checkpoint (manifest present, every listed file whole)."""
    return not problems(path)


def problems(path: str) -> list[str]:
    """What makes ``path`` not a complete checkpoint (empty when it is one)."""
    fs, root = url_to_fs(path)
    return _problems(fs, root.rstrip("/"))


def find_last(directory: str) -> str | None:
    """The complete checkpoint with the highest step anywhere under ``directory``, or None."""
    fs, root = url_to_fs(directory)
    if not fs.exists(root):
        return None
    best: tuple[int, str] | None = None
    for manifest in fs.glob(f"{root.rstrip('/')}/**/{MANIFEST}"):
        folder = manifest.rsplit("/", 1)[0]
        step = _manifest_step(fs, folder)
        if step is None or ".tmp-" in folder or _problems(fs, folder):
            continue
        if best is None or step > best[0]:
            best = (step, folder)
    if best is None:
        return None
    return fs.unstrip_protocol(best[1]) if "://" in directory else best[1]


def remove(path: str) -> None:
    """Delete a checkpoint directory: its manifest first, so a half-deleted one never looks complete."""
    fs, root = url_to_fs(path)
    root = root.rstrip("/")
    if fs.exists(f"{root}/{MANIFEST}"):
        fs.rm(f"{root}/{MANIFEST}")
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _read_manifest(fs: AbstractFileSystem, root: str) -> dict[str, Any] | None:
    try:
        with fs.open(f"{root}/{MANIFEST}", "r") as f:
            manifest: dict[str, Any] = json.load(f)
    except (FileNotFoundError, ValueError):
        return None
    return manifest if isinstance(manifest.get("files"), dict) else None


def _manifest_step(fs: AbstractFileSystem, root: str) -> int | None:
    manifest = _read_manifest(fs, root)
    if manifest is None:
        return None
    if isinstance(manifest.get("step"), int):
        return int(manifest["step"])
    match = _STEP_PATTERN.search(root.rsplit("/", 1)[-1])  # checkpoints written without a step
    return int(match.group(1)) if match else None


def _problems(fs: AbstractFileSystem, root: str) -> list[str]:
    manifest = _read_manifest(fs, root)
    if manifest is None:
        return [f"{MANIFEST} is missing or unreadable (an interrupted save?)"]
    found = []
    for name, size in manifest["files"].items():
        file = f"{root}/{name}"
        if not fs.exists(file):
            found.append(f"{name} is missing")
        elif (actual := int(fs.size(file))) != size:
            found.append(f"{name} has {actual} bytes, the manifest says {size}")
    return found
