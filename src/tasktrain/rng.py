"""Random-number-generator state of one process, saved without pickle.

Python's and NumPy's states are plain data; torch's (CPU and every CUDA device) are uint8
tensors, so a snapshot is checkpointed as JSON plus safetensors like any other state.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class RngState:
    """A snapshot of every generator this process uses.

    Example:
        >>> state = RngState.capture()
        >>> a = torch.rand(1); state.restore(); b = torch.rand(1)
        >>> bool(a == b)
        True
    """

    python: Any
    numpy: Any | None
    torch_cpu: Tensor
    torch_cuda: list[Tensor] = field(default_factory=list)
    generator: Tensor | None = None  # a dedicated generator's state, e.g. the sampler's

    @classmethod
    def capture(cls, generator: torch.Generator | None = None) -> RngState:
        """Snapshot the global generators, and ``generator`` too when given."""
        return cls(
            python=random.getstate(),
            numpy=_numpy_state(),
            torch_cpu=torch.get_rng_state(),
            torch_cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            generator=generator.get_state() if generator is not None else None,
        )

    def restore(self, generator: torch.Generator | None = None) -> None:
        """Put every global generator (and ``generator``, if its state was captured) back."""
        if generator is not None and self.generator is not None:
            generator.set_state(self.generator)
        random.setstate(_as_tuples(self.python))
        if self.numpy is not None:
            import numpy as np

            kind, keys, pos, has_gauss, gauss = self.numpy
            np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(self.torch_cpu)
        if self.torch_cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self.torch_cuda)

    def state_dict(self) -> dict[str, Any]:
        """The snapshot as plain data and tensors (see :mod:`tasktrain.checkpoint.codec`).

        The Mersenne Twister words of Python and NumPy (624 each) travel as int64 tensors, so a
        checkpoint's ``trainer_state.json`` stays short.
        """
        version, words, gauss = self.python
        numpy = None
        if self.numpy is not None:
            kind, keys, pos, has_gauss, cached = self.numpy
            numpy = [kind, _words(keys), pos, has_gauss, cached]
        return {
            "python": [version, _words(words), gauss],
            "numpy": numpy,
            "torch_cpu": self.torch_cpu,
            "torch_cuda": list(self.torch_cuda),
            "generator": self.generator,
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> RngState:
        version, words, gauss = state["python"]
        numpy = state["numpy"]
        if numpy is not None:
            kind, keys, pos, has_gauss, cached = numpy
            numpy = [kind, _ints(keys), pos, has_gauss, cached]
        return cls(
            python=(version, tuple(_ints(words)), gauss),
            numpy=numpy,
            torch_cpu=state["torch_cpu"],
            torch_cuda=list(state.get("torch_cuda", [])),
            generator=state.get("generator"),
        )

    # -- the rng.safetensors file of format_version 1 checkpoints --------------------------------
    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], metadata: dict[str, str], prefix: str) -> RngState:
        cuda = [
            tensors[f"{prefix}torch_cuda.{i}"]
            for i in range(_count_prefixed(tensors, f"{prefix}torch_cuda."))
        ]
        return cls(
            python=json.loads(metadata[f"{prefix}python"]),
            numpy=json.loads(metadata[f"{prefix}numpy"]),
            torch_cpu=tensors[f"{prefix}torch_cpu"],
            torch_cuda=cuda,
            generator=tensors.get(f"{prefix}generator"),
        )


class ProcessRng:
    """This process's random generators as one Stateful: captured when saved, restored when loaded.

    Args:
        generator: returns the dedicated generator to include (e.g. the training sampler's), if any.

    Example:
        >>> rng = ProcessRng()
        >>> state = rng.state_dict(); a = torch.rand(1)
        >>> rng.load_state_dict(state); bool(torch.rand(1) == a)
        True
    """

    def __init__(self, generator: Callable[[], torch.Generator | None] = lambda: None) -> None:
        self.generator = generator

    def state_dict(self) -> dict[str, Any]:
        return RngState.capture(self.generator()).state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        RngState.from_state_dict(state).restore(self.generator())


def _words(values: Any) -> Tensor:
    return values if isinstance(values, Tensor) else torch.tensor(list(values), dtype=torch.int64)


def _ints(values: Any) -> list[int]:
    return values.tolist() if isinstance(values, Tensor) else [int(v) for v in values]


def _numpy_state() -> Any | None:
    try:
        import numpy as np
    except ImportError:
        return None
    state: Any = np.random.get_state()
    kind, keys, pos, has_gauss, gauss = state
    return [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)]


def _as_tuples(value: Any) -> Any:
    """JSON turns Python's state tuples into lists; ``random.setstate`` needs tuples back."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value


def _count_prefixed(tensors: dict[str, Tensor], prefix: str) -> int:
    return sum(1 for key in tensors if key.startswith(prefix))
