"""``RngState``: snapshots of Python, NumPy, torch and a dedicated generator, saved without pickle."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from tasktrain.rng import RngState


def _draw(generator: torch.Generator | None = None) -> tuple:
    """Something from every generator, including the cached second Gaussians of Python and NumPy."""
    return (
        random.random(),
        random.gauss(0.0, 1.0),
        np.random.rand(3).tolist(),
        float(np.random.standard_normal()),
        torch.rand(4).tolist(),
        torch.randperm(10, generator=generator).tolist() if generator is not None else None,
    )


def _advance(generator: torch.Generator | None = None) -> None:
    """Leave every generator mid-stream, with a cached Gaussian pending in Python and NumPy."""
    random.gauss(0.0, 1.0)
    np.random.standard_normal()
    torch.rand(7)
    if generator is not None:
        torch.rand(5, generator=generator)


@pytest.fixture(autouse=True)
def _keep_global_rngs():
    """These tests move the global generators: put them back afterwards."""
    py, npy, pt = random.getstate(), np.random.get_state(), torch.get_rng_state()
    yield
    random.setstate(py)
    np.random.set_state(npy)
    torch.set_rng_state(pt)


def test_capture_and_restore_every_global_generator():
    _advance()
    state = RngState.capture()
    expected = _draw()
    _draw()
    state.restore()
    assert _draw() == expected


def test_a_dedicated_generator_is_captured_and_restored_too():
    generator = torch.Generator().manual_seed(9)
    _advance(generator)
    state = RngState.capture(generator)
    expected = _draw(generator)
    _draw(generator)
    state.restore(generator)
    assert _draw(generator) == expected


def test_restore_without_a_captured_generator_leaves_the_generator_alone():
    generator = torch.Generator().manual_seed(1)
    state = RngState.capture()
    assert state.generator is None
    before = generator.get_state()
    state.restore(generator)
    assert torch.equal(generator.get_state(), before)


def test_to_tensors_and_from_tensors_round_trip_through_a_safetensors_file():
    generator = torch.Generator().manual_seed(4)
    _advance(generator)
    a = RngState.capture(generator)
    expected = _draw(generator)
    _advance(generator)
    b = RngState.capture()  # no dedicated generator
    c = RngState.capture()

    tensors: dict[str, torch.Tensor] = {}
    metadata: dict[str, str] = {}
    for prefix, state in (("0.step.", a), ("1.step.", b), ("0.epoch_start.", c)):
        t, m = state.to_tensors(prefix)
        assert all(key.startswith(prefix) for key in [*t, *m])
        assert all(isinstance(v, str) for v in m.values())
        tensors.update(t)
        metadata.update(m)
    data = save_safetensors(tensors, metadata=metadata)  # JSON and tensors only: no pickle
    loaded = load_safetensors(data)
    header_metadata = _safetensors_metadata(data)

    a2 = RngState.from_tensors(loaded, header_metadata, "0.step.")
    b2 = RngState.from_tensors(loaded, header_metadata, "1.step.")
    assert b2.generator is None and a2.generator is not None
    assert torch.equal(a2.torch_cpu, a.torch_cpu)
    assert len(a2.torch_cuda) == len(a.torch_cuda)

    fresh = torch.Generator().manual_seed(123)
    _draw(fresh)
    a2.restore(fresh)
    assert _draw(fresh) == expected


def test_the_python_and_numpy_states_survive_json_exactly():
    _advance()
    state = RngState.capture()
    _, metadata = state.to_tensors("x.")
    restored = RngState.from_tensors({"x.torch_cpu": state.torch_cpu}, metadata, "x.")
    restored.restore()
    assert random.getstate() == state.python
    assert random.getstate()[2] is not None  # Python's cached Gaussian came back
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    assert (kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)) == tuple(state.numpy)
    assert has_gauss == 1  # and NumPy's


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_generators_round_trip():
    state = RngState.capture()
    assert len(state.torch_cuda) == torch.cuda.device_count()
    expected = torch.rand(3, device="cuda").tolist()
    t, m = state.to_tensors("r.")
    RngState.from_tensors(t, m, "r.").restore()
    assert torch.rand(3, device="cuda").tolist() == expected


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    header_len = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + header_len])["__metadata__"]
