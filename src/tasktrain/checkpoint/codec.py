"""State dicts as JSON plus tensors: lossless for plain data, and no pickle anywhere.

A state dict may hold ``None``, bools, ints, floats (NaN and infinities too), strings, lists,
tuples, dicts (with any such keys) and tensors. :func:`encode` turns it into strict JSON, with
each tensor replaced by a reference into a separate ``{key: tensor}`` mapping that is written
as safetensors; :func:`decode` puts it back together. JSON's own types stay as they are, so
``trainer_state.json`` reads naturally; only what JSON cannot say is tagged::

    {"__tensor__": "3"}  {"__float__": "inf"}  {"__tuple__": [...]}  {"__items__": [[key, value], ...]}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

_TAGS = ("__tensor__", "__float__", "__tuple__", "__items__")


class StateEncodingError(TypeError):
    """A state dict holds a value that is neither plain data nor a tensor."""


def encode(state: Any, tensors: dict[str, Tensor], where: str) -> Any:
    """``state`` as JSON-ready data; its tensors are added to ``tensors`` under new keys.

    ``where`` names the state in error messages (e.g. ``"callbacks.ModelCheckpoint"``).

    Example:
        >>> tensors = {}
        >>> encode({"step": 3, "best": float("inf"), "t": torch.zeros(2)}, tensors, "demo")
        {'step': 3, 'best': {'__float__': 'inf'}, 't': {'__tensor__': '0'}}
    """
    if state is None or isinstance(state, (bool, int, str)):
        return state
    if isinstance(state, float):
        return state if math.isfinite(state) else {"__float__": repr(state)}
    if isinstance(state, Tensor):
        key = str(len(tensors))
        tensors[key] = state.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(state, tuple):
        return {"__tuple__": [encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(state)]}
    if isinstance(state, list):
        return [encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(state)]
    if isinstance(state, Mapping):
        if all(isinstance(k, str) and k not in _TAGS for k in state):
            return {k: encode(v, tensors, f"{where}.{k}") for k, v in state.items()}
        return {
            "__items__": [
                [encode(k, tensors, where), encode(v, tensors, f"{where}[{k!r}]")] for k, v in state.items()
            ]
        }
    raise StateEncodingError(
        f"the checkpointed state {where} holds a value of type {type(state).__name__} ({state!r:.60}); state_dict() may hold "
        "only plain data (None, bool, int, float, str, list, tuple, dict) and tensors"
    )


def decode(data: Any, tensors: Mapping[str, Tensor] | Callable[[str], Tensor]) -> Any:
    """The state :func:`encode` turned into ``data``, with its tensors looked up in ``tensors``."""
    lookup = tensors.__getitem__ if isinstance(tensors, Mapping) else tensors
    return _decode(data, lookup)


def _decode(data: Any, lookup: Callable[[str], Tensor]) -> Any:
    if isinstance(data, list):
        return [_decode(v, lookup) for v in data]
    if not isinstance(data, dict):
        return data
    if len(data) == 1:
        ((tag, value),) = data.items()
        if tag == "__tensor__":
            return lookup(value)
        if tag == "__float__":
            return float(value)
        if tag == "__tuple__":
            return tuple(_decode(v, lookup) for v in value)
        if tag == "__items__":
            return {_hashable(_decode(k, lookup)): _decode(v, lookup) for k, v in value}
    return {k: _decode(v, lookup) for k, v in data.items()}


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key
