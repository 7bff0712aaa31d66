"""Random-number-generator state of one process, saved without pickle.

Python's and NumPy's states become JSON; torch's (CPU and every CUDA device) become uint8
tensors, so a whole snapshot fits in one safetensors file.
"""

from __future__ import annotations

import json
import random
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

    def to_tensors(self, prefix: str) -> tuple[dict[str, Tensor], dict[str, str]]:
        """``(tensors, metadata)`` for a safetensors file; keys start with ``prefix``."""
        tensors = {f"{prefix}torch_cpu": self.torch_cpu}
        tensors.update({f"{prefix}torch_cuda.{i}": s for i, s in enumerate(self.torch_cuda)})
        if self.generator is not None:
            tensors[f"{prefix}generator"] = self.generator
        metadata = {f"{prefix}python": json.dumps(self.python), f"{prefix}numpy": json.dumps(self.numpy)}
        return tensors, metadata

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
