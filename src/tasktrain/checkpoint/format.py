"""The on-disk checkpoint: a directory that never needs pickle to load.

::

    step=00000200/
        model.safetensors                 weights (tied tensors stored once, aliases in metadata)
        (or model-00001-of-00003.safetensors ... + model.safetensors.index.json when split)
        (or sharded/ .metadata __0_0.distcp __1_0.distcp ...: model and optimizer state as
         per-rank torch.distributed.checkpoint shards, from FSDP / tensor parallel; see sharded.py)
        optimizer.pt                      the state of every optimizer, by position (unless sharded);
                                          loaded with torch.load(weights_only=True)
        trainer_state.json                step, epoch, hparams, versions, strategy and world size, and
                                          "states": every Stateful's state_dict() by name (loops
                                          and the data position, schedulers, precision, callbacks,
                                          RNG...) as JSON
        states.safetensors                the tensors those states hold, and the states of ranks > 0
                                          where they differ from rank 0's (see checkpoint/codec.py)
        manifest.json                     written last: the file list with sizes and CRC-32
                                          checksums, checked before anything loads (see storage.py)

Format version 1 (before the states mapping) kept scheduler and precision state in
``optimizer.pt``, per-rank RNG snapshots in ``rng.safetensors`` and a fixed set of keys in
``trainer_state.json``; :mod:`tasktrain.checkpoint.legacy` reads it.
"""

from __future__ import annotations

import io
import json
import mmap
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import load_file as load_safetensors_file
from torch import Tensor

from tasktrain.checkpoint import codec
from tasktrain.checkpoint.errors import CheckpointError
from tasktrain.checkpoint.safetensors_io import write_safetensors
from tasktrain.checkpoint.sharded import SHARDED, is_sharded, read_sharded_weights, sharded_shapes
from tasktrain.checkpoint.storage import CheckpointWriter, verify
from tasktrain.rng import RngState

if TYPE_CHECKING:
    from tasktrain.module import TaskModule

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
OPTIMIZER = "optimizer.pt"
STATES = "states.safetensors"
RNG = "rng.safetensors"  # format_version 1
STATE = "trainer_state.json"
DEFAULT_SHARD_BYTES = 2 * 1024**3

M = TypeVar("M", bound="TaskModule[Any]")


def save_checkpoint(
    path: str,
    weights: Mapping[str, Tensor],
    optimizers: Sequence[Mapping[str, Any]] = (),
    trainer_state: Mapping[str, Any] | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> None:
    """Write a checkpoint directory of ``weights`` (and optimizer states) at ``path``; it appears atomically.

    The Trainer saves whole runs with :mod:`tasktrain.checkpoint.manager`; this writes just weights.

    Example:
        >>> save_checkpoint("memory://ckpt/step=1", {"w": torch.zeros(2)}, trainer_state={"global_step": 1})
    """
    trainer_state = dict(trainer_state or {})
    with open_checkpoint(path, trainer_state) as writer:
        write_checkpoint(
            writer, weights, optimizers, {"states": {}, **trainer_state}, {}, {}, max_shard_bytes
        )


def open_checkpoint(path: str, trainer_state: Mapping[str, Any]) -> CheckpointWriter:
    """The writer for a checkpoint of ``trainer_state`` at ``path`` (use it as a context manager)."""
    step = trainer_state.get("global_step")
    return CheckpointWriter(path, step=step if isinstance(step, int) else None)


def write_checkpoint(
    writer: CheckpointWriter,
    weights: Mapping[str, Tensor] | None,
    optimizers: Sequence[Mapping[str, Any]],
    trainer_state: Mapping[str, Any],
    state_tensors: Mapping[str, Tensor],
    state_metadata: Mapping[str, str],
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> None:
    """Write the files of a checkpoint into ``writer`` (``weights`` None: they are sharded)."""
    if weights is not None:
        _write_weights(writer, weights, max_shard_bytes)
    if optimizers:
        writer.write_with(OPTIMIZER, lambda f: torch.save({"optimizers": [dict(o) for o in optimizers]}, f))
    buffer = io.BytesIO()
    write_safetensors(buffer, dict(state_tensors), dict(state_metadata))
    writer.write_bytes(STATES, buffer.getvalue())
    state = {"format_version": FORMAT_VERSION, **trainer_state}
    writer.write_bytes(STATE, _strict_json(state, writer.path).encode())


def read_state(path: str) -> dict[str, Any]:
    """The ``trainer_state.json`` of the checkpoint at ``path``."""
    data = _read(path, STATE)
    try:
        state: dict[str, Any] = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}/{STATE} is not valid JSON ({err}); the checkpoint is corrupt") from err
    if state.get("format_version") not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{path}/{STATE}: checkpoint format version {state.get('format_version')!r}; "
            f"this tasktrain reads versions {list(READABLE_VERSIONS)}"
        )
    return state


def read_weights(path: str) -> dict[str, Tensor]:
    """The full weights of the checkpoint at ``path`` (all files or rank shards), tied tensors restored.

    This reads files as they are; :func:`~tasktrain.checkpoint.storage.verify` checks them first.
    """
    if is_sharded(path):
        return read_sharded_weights(f"{path.rstrip('/')}/{SHARDED}")
    fs, root = url_to_fs(path)
    root = root.rstrip("/")
    if fs.exists(f"{root}/{WEIGHTS_INDEX}"):
        index = json.loads(_read(path, WEIGHTS_INDEX))
        files = sorted(set(index["weight_map"].values()))
    else:
        files = [WEIGHTS]
    tensors: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    for name in files:
        loaded, metadata = _load_safetensors(path, name)
        tensors.update(loaded)
        aliases.update(json.loads(metadata.get("tasktrain.aliases", "{}")))
    tensors.update({alias: tensors[source] for alias, source in aliases.items()})
    return tensors


#: What ``load_from_checkpoint(weights=...)`` and ``tasktrain export --weights`` accept.
WEIGHT_KINDS = ("model", "ema")


def read_weights_of(path: str, weights: str = "model") -> dict[str, Tensor]:
    """The trained weights (``"model"``) or the averaged ones of the EMA callback (``"ema"``).

    The averaged weights are the EMA callback's averages of the parameters, with the module's own
    buffers (buffers are not averaged).

    Raises:
        CheckpointError: ``"ema"`` for a checkpoint saved without the EMA callback (or before its first update).
    """
    if weights not in WEIGHT_KINDS:
        raise ValueError(f"weights={weights!r}: accepted values are {list(WEIGHT_KINDS)}")
    model = read_weights(path)
    if weights == "model":
        return model
    state = read_state(path).get("states", {})
    names = [name for name, value in state.items() if name.startswith("callbacks.") and _is_ema_state(value)]
    if len(names) != 1:
        raise CheckpointError(
            f"{path} holds no EMA weights: it was saved without the tasktrain.callbacks.EMA callback; "
            "load weights='model' instead"
            if not names
            else f"{path} holds the state of several EMA callbacks ({names}); export one of them by hand"
        )
    tensors, _ = read_state_tensors(path)
    own = {key.partition(".")[2]: t for key, t in tensors.items() if key.partition(".")[0] == "0"}
    averaged: dict[str, Tensor] = codec.decode(state[names[0]], own)["weights"]
    if not averaged:
        raise CheckpointError(
            f"{path} was saved before the first EMA update: it holds no averaged weights yet"
        )
    # A tied weight is one tensor under several names (aliases): each name gets the average.
    averaged_by_tensor = {id(model[name]): value for name, value in averaged.items() if name in model}
    return {**{name: averaged_by_tensor.get(id(t), t) for name, t in model.items()}, **averaged}


def _is_ema_state(value: Any) -> bool:
    """Whether a saved callback state is an EMA's (whatever its key: a subclass has its own)."""
    return isinstance(value, dict) and {"decay", "every_n_steps", "n_averaged", "weights"} <= set(value)


def read_optimizer_state(path: str) -> dict[str, Any]:
    """The contents of ``optimizer.pt``, loaded with ``weights_only=True`` (no code runs); {} if absent.

    A local file is memory-mapped, privately (copy-on-write): its tensors are read from the page
    cache as they are first used, with no whole-file copy in between, and writing to them (an
    optimizer step) never changes the file. Other filesystems are read into memory first.
    """
    if not _exists(path, OPTIMIZER):
        return {}
    fs, root = url_to_fs(path)
    source: str | io.BytesIO
    if isinstance(fs, LocalFileSystem):
        source = f"{root.rstrip('/')}/{OPTIMIZER}"
    else:
        source = io.BytesIO(_read(path, OPTIMIZER))
    try:
        state: dict[str, Any] = _load_torch(source)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        raise CheckpointError(
            f"{path}/{OPTIMIZER} could not be loaded safely ({type(err).__name__}: {err}); it is corrupt, "
            "truncated, or holds objects other than tensors and plain data"
        ) from err
    return state


def read_state_tensors(path: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors of the saved states and the file's metadata (empty when there is no such file)."""
    if not _exists(path, STATES):
        return {}, {}
    return _load_safetensors(path, STATES)


def read_rng(path: str) -> list[dict[str, RngState]]:
    """Per rank, the named RNG snapshots of a format_version 1 checkpoint (empty if none were saved)."""
    if not _exists(path, RNG):
        return []
    tensors, metadata = _load_safetensors(path, RNG)
    layout: list[list[str]] = json.loads(metadata["layout"])
    return [
        {name: RngState.from_tensors(tensors, metadata, f"{rank}.{name}.") for name in names}
        for rank, names in enumerate(layout)
    ]


def consolidate(src: str, dst: str, weights: str = "model") -> None:
    """Write the weights of the checkpoint ``src`` (any strategy, sharded or not) as one safetensors file.

    Checkpoints already hold full tensors, so this merges weight shards into a single file that
    any safetensors reader (e.g. Hugging Face's) loads. Tied weights are stored once.
    ``weights="ema"`` writes the EMA callback's averaged weights instead of the trained ones.

    Example:
        >>> consolidate("runs/checkpoints/step=00001000", "model.safetensors")  # doctest: +SKIP
    """
    verify(src)
    unique, aliases = _deduplicate(read_weights_of(src, weights))
    metadata = {"tasktrain.aliases": json.dumps(aliases), "format": "pt"}
    fs, path = url_to_fs(dst)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as f:
        write_safetensors(f, _contiguous_cpu(unique), metadata)


def load_module(cls: type[M], path: str, overrides: Mapping[str, Any], weights: str = "model") -> M:
    """Build ``cls(**hparams, **overrides)`` and load the checkpoint's weights into it (strictly).

    Every file of the checkpoint is verified against its manifest first. ``weights="ema"`` loads
    the EMA callback's averaged weights.
    """
    if weights not in WEIGHT_KINDS:
        raise ValueError(
            f"load_from_checkpoint(weights={weights!r}): accepted values are {list(WEIGHT_KINDS)}"
        )
    verify(path)
    from tasktrain.module import decode_hparams

    hparams = decode_hparams(read_state(path).get("hparams", {}))  # transformers configs as objects
    module = cls(**{**hparams, **overrides})
    load_weights_into(module, read_weights_of(path, weights), path)
    return module


def check_readable(path: str) -> None:
    """Raise a CheckpointError unless what every load reads first parses: ``trainer_state.json``
    (with a readable format version), each safetensors header and DCP's ``.metadata``.

    Cheap (no tensor data is read); with :func:`~tasktrain.checkpoint.storage.verify` it decides
    whether ``"last"`` may pick a checkpoint, also for checkpoints whose manifest has no checksums.
    """
    read_state(path)
    fs, root = url_to_fs(path)
    root = root.rstrip("/")
    for file in sorted(fs.glob(f"{root}/*.safetensors")):
        _check_safetensors_header(fs, file, f"{path}/{file.rsplit('/', 1)[-1]}")
    if is_sharded(path):
        sharded_shapes(f"{path.rstrip('/')}/{SHARDED}")


def load_weights_into(
    module: torch.nn.Module,
    weights: dict[str, Tensor],
    path: str,
    load: Callable[[torch.nn.Module, dict[str, Tensor]], None] | None = None,
) -> None:
    """Load ``weights`` into ``module`` (with ``load``, default ``load_state_dict``), after checking
    that they fit (:func:`check_fits`)."""
    check_fits(module, {name: t.shape for name, t in weights.items()}, path)
    if load is None:
        module.load_state_dict(weights)
    else:
        load(module, weights)


def check_fits(module: torch.nn.Module, shapes: Mapping[str, torch.Size], path: str) -> None:
    """Raise a CheckpointError naming every missing, unexpected or misshapen tensor, instead of a partial load."""
    expected = {name: _full_shape(t) for name, t in module.state_dict(keep_vars=True).items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong_shape = [
        f"{k}: checkpoint {tuple(shapes[k])} vs model {tuple(expected[k])}"
        for k in expected
        if k in shapes and tuple(shapes[k]) != tuple(expected[k])
    ]
    if missing or unexpected or wrong_shape:
        raise CheckpointError(
            f"{path}: the weights do not fit {type(module).__name__} (a checkpoint of another model?): "
            f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}, shape mismatches {wrong_shape[:5]}"
        )


def _full_shape(tensor: Tensor) -> torch.Size:
    """A DTensor's ``shape`` is already global; a ZeRO-3 partitioned parameter keeps it in ``ds_shape``."""
    return getattr(tensor, "ds_shape", tensor.shape)


# -- weights ------------------------------------------------------------------------------------
def _write_weights(writer: CheckpointWriter, weights: Mapping[str, Tensor], max_shard_bytes: int) -> None:
    unique, aliases = _deduplicate(weights)
    shards = _plan_shards(unique, max_shard_bytes)
    metadata = {"tasktrain.aliases": json.dumps(aliases), "format": "pt"}
    if len(shards) == 1:
        writer.write_with(
            WEIGHTS, partial(write_safetensors, tensors=_contiguous_cpu(unique), metadata=metadata)
        )
        return
    weight_map: dict[str, str] = {}
    for i, names in enumerate(shards, start=1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        # Tensors stream from their own memory; only device (or non-contiguous) tensors are copied
        # to host, one shard at a time, so peak extra memory is at most one shard.
        shard = _contiguous_cpu({name: unique[name] for name in names})
        writer.write_with(file, partial(write_safetensors, tensors=shard, metadata=metadata))
        del shard
        weight_map.update(dict.fromkeys(names, file))
    total = sum(t.numel() * t.element_size() for t in unique.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    writer.write_bytes(WEIGHTS_INDEX, json.dumps(index, indent=2).encode())


def _deduplicate(weights: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors that share storage (tied weights) are stored once; the others become aliases."""
    unique: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[Any, ...], str] = {}
    for name, tensor in weights.items():
        key = (
            tensor.device,
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tensor.stride(),
        )
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            unique[name] = tensor
    return unique, aliases


def _plan_shards(tensors: Mapping[str, Tensor], max_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _contiguous_cpu(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {name: t.detach().contiguous().cpu() for name, t in tensors.items()}


def _strict_json(state: Mapping[str, Any], path: str) -> str:
    try:
        return json.dumps(state, indent=2, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"saving {path}: the trainer state must be plain JSON (callback state_dict()s and hparams included): {err}"
        ) from err


# -- reading files -------------------------------------------------------------------------------
def _exists(path: str, name: str) -> bool:
    fs, root = url_to_fs(path)
    return bool(fs.exists(f"{root.rstrip('/')}/{name}"))


def _read(path: str, name: str) -> bytes:
    fs, root = url_to_fs(path)
    file = f"{root.rstrip('/')}/{name}"
    if not fs.exists(file):
        hint = "" if fs.exists(root) else " (the directory does not exist)"
        raise FileNotFoundError(f"{path}: no {name}{hint}; is this a complete tasktrain checkpoint?")
    with fs.open(file, "rb") as f:
        data: bytes = f.read()
    return data


def _load_torch(source: str | io.BytesIO) -> Any:
    """``torch.load`` of plain data and tensors onto the CPU; a file name is memory-mapped (MAP_PRIVATE)."""
    if isinstance(source, io.BytesIO):
        return torch.load(source, weights_only=True, map_location="cpu")
    with torch.serialization.set_default_mmap_options(mmap.MAP_PRIVATE):
        return torch.load(source, mmap=True, weights_only=True, map_location="cpu")


def _load_safetensors(path: str, name: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    fs, root = url_to_fs(path)
    file = f"{root.rstrip('/')}/{name}"
    try:
        if isinstance(fs, LocalFileSystem) and fs.exists(file):
            from safetensors import safe_open

            with safe_open(file, framework="pt") as f:
                metadata = f.metadata() or {}
            return load_safetensors_file(file), metadata  # memory-mapped: the fastest local read
        data = _read(path, name)
        return load_safetensors_bytes(data), _safetensors_metadata(data)
    except (SafetensorError, ValueError, json.JSONDecodeError, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise CheckpointError(
            f"{path}/{name} is not a readable safetensors file ({err}); it is corrupt or truncated"
        ) from err


def _check_safetensors_header(fs: Any, file: str, name: str) -> None:
    """Parse the header of a safetensors file and check that its tensors lie within the file."""
    size = int(fs.size(file))
    try:
        with fs.open(file, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if length > size - 8:
                raise ValueError(f"a header of {length} bytes in a file of {size}")
            header = json.loads(f.read(length))
        ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
        raise CheckpointError(
            f"{name} is not a readable safetensors file ({err}); it is corrupt or truncated"
        ) from err
    if max(ends, default=0) > size - 8 - length:
        raise CheckpointError(f"{name}: its tensors end beyond the file; it is corrupt or truncated")


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    header_len = int.from_bytes(data[:8], "little")
    metadata: dict[str, str] = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
    return metadata
