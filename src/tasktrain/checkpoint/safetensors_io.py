"""Stream tensors into the safetensors format straight from their memory.

``safetensors.torch.save``/``save_file`` first copy every tensor into a ``bytes`` object, which
doubles the memory of a shard and costs a copy. The format is simple (an 8-byte header length,
a JSON header, then the raw little-endian data), so we write it tensor by tensor from the
tensors' own buffers. Reading stays with the safetensors library, which validates the file.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import IO

import torch
from torch import Tensor

_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}


def write_safetensors(file: IO[bytes], tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> None:
    """Write ``tensors`` (CPU, contiguous) and string ``metadata`` to ``file`` in safetensors format.

    Example:
        >>> import io
        >>> from safetensors.torch import load
        >>> buf = io.BytesIO(); write_safetensors(buf, {"w": torch.ones(2)}, {})
        >>> load(buf.getvalue())["w"].tolist()
        [1.0, 1.0]
    """
    if sys.byteorder != "little":
        raise RuntimeError("writing safetensors needs a little-endian machine")
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, tensor in tensors.items():
        if tensor.dtype not in _DTYPES:
            raise TypeError(f"cannot save {name!r}: dtype {tensor.dtype} has no safetensors equivalent")
        nbytes = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": _DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    file.write(len(encoded).to_bytes(8, "little"))
    file.write(encoded)
    for tensor in tensors.values():
        if tensor.numel():
            file.write(tensor.reshape(-1).view(torch.uint8).numpy().data)
