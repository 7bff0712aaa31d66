"""The on-disk checkpoint: a directory that never needs pickle to load.

::

    step=00000200/
        model.safetensors     weights (tied tensors stored once, aliases in the metadata)
        optimizer.pt          optimizer (+ scheduler, precision) state, loaded with weights_only=True
        trainer_state.json    step, epoch, loop progress, callback states, hparams, versions

The directory is written under a temporary name and renamed last, so a checkpoint either
exists whole or not at all.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from fsspec.core import url_to_fs
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

if TYPE_CHECKING:
    from tasktrain.module import TaskModule

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.pt"
STATE = "trainer_state.json"

M = TypeVar("M", bound="TaskModule[Any]")


def save_checkpoint(
    path: str,
    weights: Mapping[str, Tensor],
    optimizer_state: Mapping[str, Any],
    trainer_state: Mapping[str, Any],
) -> None:
    """Write a checkpoint directory at ``path`` (a local path or fsspec URL), atomically."""
    fs, root = url_to_fs(path)
    root = root.rstrip("/")
    tmp = f"{root}.tmp-{uuid.uuid4().hex[:8]}"
    fs.makedirs(tmp, exist_ok=True)
    with fs.open(f"{tmp}/{WEIGHTS}", "wb") as f:
        f.write(_weights_bytes(weights))
    buffer = io.BytesIO()
    torch.save(dict(optimizer_state), buffer)
    with fs.open(f"{tmp}/{OPTIMIZER}", "wb") as f:
        f.write(buffer.getvalue())
    with fs.open(f"{tmp}/{STATE}", "w") as f:
        json.dump({"format_version": FORMAT_VERSION, **trainer_state}, f, indent=2)
    if fs.exists(root):
        fs.rm(root, recursive=True)
    fs.mv(tmp, root, recursive=True)


def read_weights(path: str) -> dict[str, Tensor]:
    """The weights of the checkpoint at ``path``, tied tensors restored."""
    fs, root = url_to_fs(path)
    file = f"{root.rstrip('/')}/{WEIGHTS}"
    if not fs.exists(file):
        raise FileNotFoundError(f"{path}: no {WEIGHTS} (is this a tasktrain checkpoint directory?)")
    with fs.open(file, "rb") as f:
        data = f.read()
    try:
        tensors = load_safetensors(data)
        aliases = _read_aliases(data)
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{file} is not a readable safetensors file: {err}") from err
    tensors.update({alias: tensors[source] for alias, source in aliases.items()})
    return tensors


def read_state(path: str) -> dict[str, Any]:
    """The ``trainer_state.json`` of the checkpoint at ``path``."""
    fs, root = url_to_fs(path)
    file = f"{root.rstrip('/')}/{STATE}"
    if not fs.exists(file):
        raise FileNotFoundError(f"{path}: no {STATE} (is this a tasktrain checkpoint directory?)")
    with fs.open(file, "r") as f:
        try:
            state: dict[str, Any] = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{file} is not valid JSON: {err}") from err
    if state.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{file}: checkpoint format version {state.get('format_version')!r}, this tasktrain reads {FORMAT_VERSION}"
        )
    return state


def load_module(cls: type[M], path: str, overrides: Mapping[str, Any]) -> M:
    """Build ``cls(**hparams, **overrides)`` and load the checkpoint's weights into it (strictly)."""
    hparams = read_state(path).get("hparams", {})
    module = cls(**{**hparams, **overrides})
    weights = read_weights(path)
    expected = module.state_dict()
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    wrong_shape = [k for k in expected if k in weights and weights[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"{path}: weights do not match {cls.__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shape {wrong_shape[:5]}"
        )
    module.load_state_dict(weights)
    return module


def _weights_bytes(weights: Mapping[str, Tensor]) -> bytes:
    """safetensors bytes; tensors sharing storage (tied weights) are stored once, aliases in metadata."""
    unique: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[Any, ...], str] = {}
    for name, tensor in weights.items():
        key = (
            tensor.device,
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tensor.shape,
            tensor.stride(),
        )
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            unique[name] = tensor.detach().contiguous().cpu()
    return save_safetensors(unique, metadata={"tasktrain.aliases": json.dumps(aliases)})


def _read_aliases(data: bytes) -> dict[str, str]:
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    aliases: dict[str, str] = json.loads(header.get("__metadata__", {}).get("tasktrain.aliases", "{}"))
    return aliases
