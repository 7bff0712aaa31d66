"""``RngState``: snapshots of Python, NumPy, torch and a dedicated generator, saved without pickle."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from tasktrain.checkpoint.codec import decode, encode
from tasktrain.rng import ProcessRng, RngState


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


def _saved(state: RngState) -> RngState:
    """``state`` after a trip through the checkpoint encoding: strict JSON and a safetensors file."""
    tensors: dict[str, torch.Tensor] = {}
    text = json.dumps(encode(state.state_dict(), tensors, "rng"), allow_nan=False)
    loaded = load_safetensors(save_safetensors(tensors))  # JSON and tensors only: no pickle
    return RngState.from_state_dict(decode(json.loads(text), loaded))


def test_state_dict_round_trips_through_json_and_safetensors():
    generator = torch.Generator().manual_seed(4)
    _advance(generator)
    a = RngState.capture(generator)
    expected = _draw(generator)
    b = RngState.capture()  # no dedicated generator

    a2, b2 = _saved(a), _saved(b)
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
    _saved(state).restore()
    assert random.getstate() == state.python
    assert random.getstate()[2] is not None  # Python's cached Gaussian came back
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    assert (kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)) == tuple(state.numpy)
    assert has_gauss == 1  # and NumPy's


def test_process_rng_restores_this_process_and_the_dedicated_generator():
    generator = torch.Generator().manual_seed(9)
    rng = ProcessRng(lambda: generator)
    state = rng.state_dict()
    expected = (_draw(), _draw(generator))
    _advance(generator)
    rng.load_state_dict(state)
    assert (_draw(), _draw(generator)) == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_generators_round_trip():
    state = RngState.capture()
    assert len(state.torch_cuda) == torch.cuda.device_count()
    expected = torch.rand(3, device="cuda").tolist()
    _saved(state).restore()
    assert torch.rand(3, device="cuda").tolist() == expected
