"""Sharded checkpoints: every rank writes its own shards with ``torch.distributed.checkpoint`` (DCP).

A sharded checkpoint keeps the model and optimizer state in a ``sharded/`` folder of the
checkpoint directory (DCP's ``.metadata`` plus one ``__<rank>_0.distcp`` file per rank); the
rest of the directory is as in :mod:`tasktrain.checkpoint.format`. DCP reshards on load, so a
checkpoint saved by N ranks loads under any world size, one process without a process group
included.

DCP itself reads its ``.metadata`` with ``pickle.load`` and non-tensor values with
``torch.load(weights_only=False)``; here both go through allow-lists instead, so loading a
checkpoint never runs code from the file.
"""

from __future__ import annotations

import io
import pickle
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from fsspec.core import url_to_fs
from torch import Tensor

from tasktrain.checkpoint.errors import CheckpointError

if TYPE_CHECKING:
    from torch.distributed.checkpoint.metadata import Metadata

SHARDED = "sharded"
_MODEL_PREFIX = "model."

# What DCP's ``.metadata`` pickle refers to (torch 2.4 - 2.13), and nothing else.
_METADATA_CLASSES = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata",
        "MetadataIndex",
        "StorageMeta",
        "TensorProperties",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata; any class outside the allow-list is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if name in _METADATA_CLASSES.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(
            f"{module}.{name} is not allowed in a checkpoint's DCP metadata (only DCP's own metadata classes are)"
        )


def is_sharded(path: str) -> bool:
    """Whether the checkpoint directory ``path`` keeps its weights as DCP shards."""
    fs, root = url_to_fs(path)
    return bool(fs.exists(f"{root.rstrip('/')}/{SHARDED}/.metadata"))


def save_sharded(directory: str, state: dict[str, Any]) -> None:
    """Write ``state`` (DTensors, tensors and plain values) with DCP; every rank must call it."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

    with _single_process_is_intended():
        dcp.save(state, storage_writer=FsspecWriter(directory), no_dist=not dist.is_initialized())


def own_shards(directory: str, rank: int) -> list[str]:
    """Names of the files in the DCP checkpoint ``directory`` that ``rank`` wrote.

    DCP names each rank's data files ``__<rank>_<n>.distcp``; the coordinator (rank 0) also
    writes ``.metadata``.
    """
    fs, root = url_to_fs(directory)
    names = [str(path).rstrip("/").rsplit("/", 1)[-1] for path in fs.ls(root, detail=False)]
    return sorted(
        name for name in names if name.startswith(f"__{rank}_") or (rank == 0 and name == ".metadata")
    )


def load_sharded(directory: str, state: dict[str, Any], *, local: bool = False) -> None:
    """Fill ``state`` in place from the DCP checkpoint in ``directory``, resharding as needed.

    ``state`` holds tensors/DTensors shaped like the target's (e.g. from
    ``get_model_state_dict``); every rank must call it unless ``local`` (this process reads
    everything by itself).
    """
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    no_dist = local or not dist.is_initialized()
    try:
        with _single_process_is_intended():
            dcp.load(state, storage_reader=_reader(directory), planner=_safe_planner(), no_dist=no_dist)
    except CheckpointException as err:  # a BaseException that wraps each rank's error
        causes = getattr(err, "failures", {}).values() or [err]
        reason = "; ".join(" ".join(str(cause).split()) for cause in causes)
        raise CheckpointError(
            f"{directory}: the sharded checkpoint could not be loaded safely: {reason}"
        ) from err


@contextmanager
def _single_process_is_intended() -> Iterator[None]:
    """Silence DCP's warning that it runs in one process: without a process group, that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to")
        yield


def sharded_shapes(directory: str) -> dict[str, torch.Size]:
    """The full shape of every model tensor in the DCP checkpoint, keyed by parameter name."""
    return {name: meta.size for name, meta in _model_entries(directory).items()}


def sharded_optimizer_count(directory: str) -> int:
    """How many optimizers the DCP checkpoint holds (its ``optimizer``, ``optimizer_1``, ... entries)."""
    tops = {key.split(".", 1)[0] for key in _read_metadata(directory).state_dict_metadata}
    return sum(1 for top in tops if top == "optimizer" or top.removeprefix("optimizer_").isdigit())


def read_sharded_weights(directory: str) -> dict[str, Tensor]:
    """The model's full tensors, assembled from every rank's shards in this one process."""
    model = {
        name: torch.empty(meta.size, dtype=meta.properties.dtype)
        for name, meta in _model_entries(directory).items()
    }
    load_sharded(directory, {"model": model}, local=True)
    return model


def _model_entries(directory: str) -> dict[str, Any]:
    """The metadata (``TensorStorageMetadata``) of every model tensor, keyed by parameter name."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    return {
        key.removeprefix(_MODEL_PREFIX): meta
        for key, meta in _read_metadata(directory).state_dict_metadata.items()
        if key.startswith(_MODEL_PREFIX) and isinstance(meta, TensorStorageMetadata)
    }


def _read_metadata(directory: str) -> Metadata:
    fs, root = url_to_fs(directory)
    try:
        with fs.open(f"{root.rstrip('/')}/.metadata", "rb") as f:
            metadata: Metadata = _MetadataUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as err:
        raise CheckpointError(f"{directory}/.metadata is corrupt or unsafe: {err}") from err
    return metadata


def _reader(directory: str) -> Any:
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

    class SafeReader(FsspecReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
            from torch.distributed.checkpoint.metadata import StorageMeta

            metadata = _read_metadata(directory)  # save_sharded writes one global .metadata
            storage_meta = metadata.storage_meta or StorageMeta()
            storage_meta.load_id = self.load_id
            metadata.storage_meta = storage_meta
            return metadata

    return SafeReader(directory)


def _safe_planner() -> Any:
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint._traverse import set_element

    class SafeLoadPlanner(DefaultLoadPlanner):
        """DCP's default planner, but non-tensor values (e.g. optimizer hyperparameters) load with
        ``weights_only=True`` (the default planner unpickles them unrestricted)."""

        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            loaded = torch.load(value, weights_only=True)
            fqn = read_item.dest_index.fqn
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[fqn], loaded)
            else:
                self.state_dict[fqn] = loaded

    return SafeLoadPlanner()
