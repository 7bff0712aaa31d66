"""Checkpoint directories over fsspec: written whole or not at all, verified, found again by step.

A checkpoint directory is *complete* when its ``manifest.json`` exists and every file it lists
exists with the listed size (:func:`is_complete`, :func:`problems`: cheap, no file is read). It
*verifies* when, besides, every file has the checksum the manifest records (:func:`verify`: reads
each file once). The manifest is written last, and each file's checksum is computed as its bytes
stream out, so saving reads nothing back (DCP shards are hashed by the rank that wrote them,
just after, from the page cache, and the sums are sent to rank 0: :func:`describe`).

On a local filesystem the directory is written under a temporary name (``<final>.tmp-<8 hex>``)
and renamed into place. An existing checkpoint at the same path is first renamed aside
(``<final>.old-<8 hex>``) and deleted only once the new one is in place, so a kill at any moment
leaves a complete checkpoint at the path or, for the instant between the two renames, beside it:
:func:`checkpoints`, :func:`find_last` and :func:`resolve` find it there. Interrupted saves leave
only such directories behind; :func:`remove_leftovers` deletes them.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import uuid
import warnings
import zlib
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, Protocol, cast

import xxhash
from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from tasktrain.checkpoint.errors import CheckpointError

MANIFEST = "manifest.json"
# XXH3-64: 28 GB/s on one core of the reference machine, against 4.2 for zlib's CRC-32, 1.8 for
# sha1 and 0.8 for blake2b; saving and verifying a 381 MiB checkpoint then costs ~15 ms. It
# catches bit rot and partial copies; it is no defence against someone who rewrites the manifest
# too (nothing in the directory could be). CRC-32 is still read: earlier releases wrote it.
CHECKSUM = "xxh3_64"
_STEP_PATTERN = re.compile(r"step=(\d+)")
_TMP = re.compile(r"(?P<final>.+)\.tmp-[0-9a-f]{8}")
_OLD = re.compile(r"(?P<final>.+)\.old-[0-9a-f]{8}")
_PROBE = re.compile(r"\.tasktrain-probe-[0-9a-f]{8}")
_READ_CHUNK = 16 * 1024**2
_VERIFIED: dict[str, tuple[Any, ...]] = {}  # checkpoint URL -> what its files looked like when they verified
_VERIFIED_MAX = 16


class _Hash(Protocol):
    def update(self, data: Any, /) -> None: ...
    def hexdigest(self) -> str: ...


class _Crc32:
    """zlib's CRC-32 behind the hashlib interface (the checksum of format 2 before XXH3)."""

    def __init__(self) -> None:
        self.crc = 0

    def update(self, data: Any) -> None:
        self.crc = zlib.crc32(data, self.crc)

    def hexdigest(self) -> str:
        return f"{self.crc:08x}"


_HASHES: dict[str, Callable[[], _Hash]] = {"xxh3_64": xxhash.xxh3_64, "crc32": _Crc32}


class CheckpointWriter:
    """Collects the files of one checkpoint and commits them with a manifest of sizes and checksums.

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
        self._dir = f"{self._final}.tmp-{_hex8()}" if self._atomic_rename else self._final
        self._sizes: dict[str, int] = {}
        self._checksums: dict[str, str] = {}

    def __enter__(self) -> CheckpointWriter:
        if not self._atomic_rename and self.fs.exists(f"{self._final}/{MANIFEST}"):
            # Object stores have no rename: files are written in place, so the old checkpoint
            # stops counting before it is overwritten. A kill mid-save then leaves no complete
            # checkpoint at this path (older ones elsewhere still count): today's behaviour there.
            self.fs.rm(f"{self._final}/{MANIFEST}")
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

    def record(self, folder: str, described: Mapping[str, tuple[int, str]] | None = None) -> None:
        """Add every file under ``folder`` (written by others, e.g. other ranks) to the manifest.

        ``described`` maps file names (relative to ``folder``) to the size and checksum their
        writer found (:func:`describe`); a file it leaves out, or whose size has changed since,
        is read and hashed here.
        """
        base = f"{self._dir}/{folder}"
        found = self.fs.find(base, detail=True)
        sizes = {file[len(base) + 1 :]: int(info["size"]) for file, info in found.items()}
        known = {
            name: checksum for name, (size, checksum) in (described or {}).items() if sizes.get(name) == size
        }
        unknown = sorted(set(sizes) - set(known))
        known.update(
            zip(unknown, _checksum_files(self.fs, [f"{base}/{name}" for name in unknown]), strict=True)
        )
        for name in sorted(sizes):
            self._sizes[f"{folder}/{name}"] = sizes[name]
            self._checksums[f"{folder}/{name}"] = known[name]

    def write_bytes(self, name: str, data: bytes) -> None:
        self.write_with(name, lambda f: f.write(data))

    def write_with(self, name: str, writer: Callable[[IO[bytes]], Any]) -> None:
        """Open ``name`` for binary writing and hand the file object to ``writer``; its bytes are
        hashed as they are written."""
        file = f"{self._dir}/{name}"
        with self.fs.open(file, "wb") as f:
            hashing = _HashingFile(f)
            writer(cast(IO[bytes], hashing))
        self._sizes[name] = int(self.fs.size(file))
        # A writer that seeks back may overwrite what was hashed: then hash the file as it is.
        self._checksums[name] = _checksum_file(self.fs, file) if hashing.seeked else hashing.checksum()

    def commit(self) -> None:
        manifest = {"files": self._sizes, "checksums": self._checksums, "step": self.step}
        with self.fs.open(f"{self._dir}/{MANIFEST}", "w") as f:
            json.dump(manifest, f, indent=2)
        if not self._atomic_rename:
            return
        # Rename aside, rename in, then delete: between the two renames the old checkpoint is
        # complete at <final>.old-*, which lookups count while <final> is missing.
        aside = None
        if os.path.lexists(self._final):
            aside = f"{self._final}.old-{_hex8()}"
            os.rename(self._final, aside)
        os.rename(self._dir, self._final)
        if aside is not None:
            _remove(self.fs, aside)


class _HashingFile:
    """A binary file object that keeps the checksum of everything written through it."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self._hash = _HASHES[CHECKSUM]()
        self.seeked = False

    def write(self, data: Any) -> int:
        self._hash.update(data)
        return self._file.write(data)

    def checksum(self) -> str:
        return f"{CHECKSUM}:{self._hash.hexdigest()}"

    def seek(self, *args: Any) -> int:
        self.seeked = True
        return self._file.seek(*args)

    def __getattr__(self, name: str) -> Any:  # flush, tell, closed, ...
        return getattr(self._file, name)


def is_complete(path: str) -> bool:
    """Whether ``path`` holds a committed checkpoint (manifest present, every listed file whole)."""
    return not problems(path)


def problems(path: str) -> list[str]:
    """What makes ``path`` not a complete checkpoint (empty when it is one); compares sizes only."""
    fs, root = url_to_fs(path)
    return _problems(fs, root.rstrip("/"))


def verify(path: str) -> None:
    """Check every file of the checkpoint at ``path`` against its manifest, reading each file once.

    Every listed file must exist with the listed size and, where the manifest records a
    checksum, have that checksum (older manifests, format_version 1 ones among them, record sizes
    only). A checkpoint that verified in this process is not read again while its files are
    unchanged (same inode, size and change time; local filesystems only), so ``"last"`` followed
    by the load reads the files once.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: a file is missing, truncated or corrupt (each one is named).

    Example:
        >>> with CheckpointWriter("memory://verify/step=1") as w:
        ...     w.write_bytes("a.bin", b"123")
        >>> verify("memory://verify/step=1")  # returns None, or raises
    """
    fs, root = url_to_fs(path)
    root = root.rstrip("/")
    manifest = _read_manifest(fs, root)
    if manifest is None:
        if not fs.exists(root):
            raise FileNotFoundError(f"{path} does not exist")
        raise CheckpointError(f"{path} is not a complete checkpoint: {_problems(fs, root)[0]}")
    issues = _problems(fs, root, manifest)
    if issues:
        raise CheckpointError(f"{path} is not a complete checkpoint: {'; '.join(issues)}")
    checksums = manifest.get("checksums")
    checksums = checksums if isinstance(checksums, dict) else {}
    names = [name for name in manifest["files"] if name in checksums]
    key = str(fs.unstrip_protocol(root))
    fingerprint = _fingerprint(fs, root, manifest)
    if fingerprint is not None and _VERIFIED.get(key) == fingerprint:
        return
    algorithms = {name: str(checksums[name]).partition(":")[0] for name in names}
    for name, algorithm in algorithms.items():
        if algorithm not in _HASHES:
            raise CheckpointError(
                f"{path}/{name}: {MANIFEST} records a {algorithm!r} checksum; this tasktrain checks "
                f"{sorted(_HASHES)} (a checkpoint of a newer tasktrain?)"
            )
    actual = _checksum_files(fs, [f"{root}/{name}" for name in names], [algorithms[name] for name in names])
    corrupt = [
        f"{path}/{name} is corrupt: its {algorithms[name]} is {found.partition(':')[2]}, "
        f"{MANIFEST} records {str(checksums[name]).partition(':')[2]}"
        for name, found in zip(names, actual, strict=True)
        if found != checksums[name]
    ]
    if corrupt:
        _VERIFIED.pop(key, None)
        raise CheckpointError(
            f"{'; '.join(corrupt)} (the bytes changed after the checkpoint was saved: disk or copy "
            "errors); nothing was loaded from it"
        )
    if fingerprint is not None:
        if len(_VERIFIED) >= _VERIFIED_MAX:
            _VERIFIED.pop(next(iter(_VERIFIED)))
        _VERIFIED[key] = fingerprint


def describe(directory: str, names: list[str]) -> dict[str, tuple[int, str]]:
    """Size and checksum of the files ``names`` in ``directory``, for :meth:`CheckpointWriter.record`.

    Each rank of a sharded save describes the shards it wrote, so no rank reads another's.

    Example:
        >>> import fsspec
        >>> fsspec.filesystem("memory").pipe("/describe/a.bin", b"123")
        >>> describe("memory://describe", ["a.bin"])["a.bin"][0]
        3
    """
    fs, root = url_to_fs(directory)
    files = [f"{root.rstrip('/')}/{name}" for name in names]
    sizes = [int(fs.size(file)) for file in files]
    return dict(zip(names, zip(sizes, _checksum_files(fs, files), strict=True), strict=True))


def checkpoints(directory: str) -> list[str]:
    """Every complete checkpoint anywhere under ``directory``, the newest (highest step) first.

    Temporary directories of unfinished saves never count. A ``<final>.old-*`` directory (the
    previous checkpoint of a path whose replacement was interrupted) counts while ``<final>``
    is not a complete checkpoint, in its place. Equal steps: the latest written first.

    Example:
        >>> checkpoints("runs/checkpoints")  # doctest: +SKIP
        ['runs/checkpoints/step=00000200', 'runs/checkpoints/step=00000100']
    """
    fs, root = url_to_fs(directory)
    root = root.rstrip("/")
    if not fs.exists(root):
        return []
    found: list[tuple[int, bool, float, str]] = []
    for manifest in fs.glob(f"{root}/**/{MANIFEST}"):
        folder = manifest.rsplit("/", 1)[0]
        if ".tmp-" in folder[len(root) :]:
            continue
        old = _OLD.fullmatch(folder)
        if old is not None and not _problems(fs, old["final"]):
            continue  # superseded: the checkpoint at its path is complete
        step = _manifest_step(fs, folder)
        if step is None or _problems(fs, folder):
            continue
        found.append((step, old is None, _written(fs, manifest), folder))
    found.sort(reverse=True)
    return [fs.unstrip_protocol(f) if "://" in directory else f for *_, f in found]


def find_last(directory: str) -> str | None:
    """The complete checkpoint with the highest step anywhere under ``directory``, or None."""
    found = checkpoints(directory)
    return found[0] if found else None


def resolve(path: str, name: str | None = None) -> str:
    """Where the checkpoint of ``path`` is: ``path`` itself, or its ``.old-*`` sibling when a
    replacement of ``path`` was interrupted between its two renames (with a warning).

    ``name`` is how errors refer to ``path`` (default: the path itself).

    Raises:
        FileNotFoundError: nothing is at ``path``.
        CheckpointError: ``path`` is not a complete checkpoint.

    Example:
        >>> resolve("runs/checkpoints/step=00000200")  # doctest: +SKIP
        'runs/checkpoints/step=00000200'
    """
    what = name or path
    fs, root = url_to_fs(path)
    root = root.rstrip("/")
    if not fs.exists(root):
        parent, _, base = root.rpartition("/")
        aside = [
            f"{parent}/{entry}"
            for entry in _names(fs, parent)
            if entry.startswith(f"{base}.old-")
            and _OLD.fullmatch(entry)
            and not _problems(fs, f"{parent}/{entry}")
        ]
        if not aside:
            raise FileNotFoundError(f"{what} does not exist")
        chosen = max(aside, key=lambda folder: _written(fs, f"{folder}/{MANIFEST}"))
        url = str(fs.unstrip_protocol(chosen)) if "://" in path else chosen
        warnings.warn(
            f"{what} is missing because a save that replaced it was interrupted; "
            f"using the checkpoint it replaced, kept at {url}",
            stacklevel=2,
        )
        return url
    issues = _problems(fs, root)
    if issues:
        raise CheckpointError(f"{what} is not a complete checkpoint: {'; '.join(issues)}")
    return path


def remove(path: str) -> None:
    """Delete a checkpoint directory: its manifest first, so a half-deleted one never looks complete."""
    fs, root = url_to_fs(path)
    _remove(fs, root.rstrip("/"))


def remove_leftovers(directory: str) -> list[str]:
    """Delete what interrupted saves left directly in ``directory``; return what was deleted.

    That is ``*.tmp-<8 hex>`` directories, ``*.old-<8 hex>`` directories whose checkpoint is
    complete again at its own path, and write probes. Nothing else is touched; an ``.old-*``
    directory that is the only copy of its checkpoint is kept. Call it when no save into
    ``directory`` is in flight (ModelCheckpoint does, on rank 0, at fit start).

    Example:
        >>> remove_leftovers("runs/checkpoints")  # doctest: +SKIP
        ['runs/checkpoints/step=00000300.tmp-1a2b3c4d']
    """
    fs, root = url_to_fs(directory)
    root = root.rstrip("/")
    if not fs.isdir(root):
        return []
    removed = []
    for info in fs.ls(root, detail=True):
        entry = str(info["name"]).rstrip("/")
        name = entry.rsplit("/", 1)[-1]
        old = _OLD.fullmatch(name)
        if info["type"] == "directory" and (
            _TMP.fullmatch(name) or (old is not None and not _problems(fs, f"{root}/{old['final']}"))
        ):
            _remove(fs, entry)
        elif info["type"] == "file" and _PROBE.fullmatch(name):
            fs.rm(entry)
        else:
            continue
        removed.append(str(fs.unstrip_protocol(entry)) if "://" in directory else entry)
    return removed


def check_writable(directory: str) -> None:
    """Create ``directory`` (if needed) and a probe file in it, and delete the probe.

    Raises:
        OSError: naming ``directory``, when either cannot be written.
    """
    fs, root = url_to_fs(directory)
    try:
        write_probe(fs, root.rstrip("/"))
    except Exception as err:  # OSError locally; object stores raise types of their own
        raise OSError(f"cannot write checkpoints to {directory!r}: {type(err).__name__}: {err}") from err


def write_probe(fs: AbstractFileSystem, directory: str) -> None:
    """Create ``directory`` (if needed), write a probe file in it and delete it; whatever the
    filesystem raises is raised (callers name the directory and what it is for)."""
    probe = f"{directory}/.tasktrain-probe-{_hex8()}"
    fs.makedirs(directory, exist_ok=True)
    with fs.open(probe, "wb") as f:
        f.write(b"tasktrain checks that this directory can be written")
    fs.rm(probe)


# -- internals -----------------------------------------------------------------------------------
def _hex8() -> str:
    return uuid.uuid4().hex[:8]


def _checksum_file(fs: AbstractFileSystem, file: str, algorithm: str = CHECKSUM) -> str:
    hashed = _HASHES[algorithm]()
    if isinstance(fs, LocalFileSystem):
        with open(file, "rb") as f:
            if os.fstat(f.fileno()).st_size:  # mmap refuses empty files
                with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
                    if hasattr(view, "madvise"):
                        view.madvise(mmap.MADV_SEQUENTIAL)  # read ahead, as a plain read would
                    hashed.update(view)  # no copy; the hash releases the GIL while it reads
    else:
        with fs.open(file, "rb") as f:
            while chunk := f.read(_READ_CHUNK):
                hashed.update(chunk)
    return f"{algorithm}:{hashed.hexdigest()}"


def _checksum_files(
    fs: AbstractFileSystem, files: list[str], algorithms: list[str] | None = None
) -> list[str]:
    """The checksums of ``files``, several at a time (hashing and reading release the GIL)."""
    jobs = list(zip(files, algorithms or [CHECKSUM] * len(files), strict=True))
    workers = min(len(files), os.cpu_count() or 1, 8)
    if workers <= 1:
        return [_checksum_file(fs, file, algorithm) for file, algorithm in jobs]
    with ThreadPoolExecutor(workers, thread_name_prefix="tasktrain-checksum") as pool:
        return list(pool.map(lambda job: _checksum_file(fs, *job), jobs))


def _fingerprint(fs: AbstractFileSystem, root: str, manifest: dict[str, Any]) -> tuple[Any, ...] | None:
    """What the files of a checkpoint look like now (local only: other stores lack change times)."""
    if not isinstance(fs, LocalFileSystem):
        return None
    stats = []
    for name in [MANIFEST, *manifest["files"]]:
        st = os.stat(f"{root}/{name}")
        stats.append((name, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(stats)


def _remove(fs: AbstractFileSystem, root: str) -> None:
    if fs.exists(f"{root}/{MANIFEST}"):
        fs.rm(f"{root}/{MANIFEST}")
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _names(fs: AbstractFileSystem, directory: str) -> list[str]:
    try:
        return [str(e).rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(directory, detail=False)]
    except (OSError, ValueError):  # no such directory
        return []


def _written(fs: AbstractFileSystem, file: str) -> float:
    """When ``file`` was written, where the filesystem says (0.0 where it does not)."""
    try:
        info = fs.info(file)
    except FileNotFoundError:
        return 0.0
    stamp = info.get("mtime", info.get("created", 0.0))
    return stamp.timestamp() if hasattr(stamp, "timestamp") else float(stamp or 0.0)


def _read_manifest(fs: AbstractFileSystem, root: str) -> dict[str, Any] | None:
    try:
        with fs.open(f"{root}/{MANIFEST}", "r") as f:
            manifest: dict[str, Any] = json.load(f)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("files"), dict) else None


def _manifest_step(fs: AbstractFileSystem, root: str) -> int | None:
    manifest = _read_manifest(fs, root)
    if manifest is None:
        return None
    if isinstance(manifest.get("step"), int):
        return int(manifest["step"])
    match = _STEP_PATTERN.search(root.rsplit("/", 1)[-1])  # checkpoints written without a step
    return int(match.group(1)) if match else None


def _problems(fs: AbstractFileSystem, root: str, manifest: dict[str, Any] | None = None) -> list[str]:
    manifest = manifest if manifest is not None else _read_manifest(fs, root)
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
