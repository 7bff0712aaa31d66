"""DCP shards read back safely: in one process, from local paths and URLs, never running pickled code."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from tasktrain.checkpoint import CheckpointError
from tasktrain.checkpoint.sharded import (
    is_sharded,
    load_sharded,
    read_sharded_weights,
    save_sharded,
    sharded_shapes,
)


class MakesADirectoryWhenUnpickled:
    """A pickle payload: loading it unrestricted would call ``os.mkdir(marker)``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _model() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"net.weight": torch.randn(3, 4, generator=g), "net.bias": torch.randn(3, generator=g).bfloat16()}


@pytest.mark.parametrize("where", ["local", "memory"])
def test_weights_and_plain_values_round_trip_in_one_process(tmp_path: Path, where: str):
    directory = str(tmp_path / "shards") if where == "local" else "memory://sharded-roundtrip/shards"
    model = _model()
    save_sharded(directory, {"model": model, "optimizer": {"lr": 0.1, "betas": (0.9, 0.99)}})

    loaded = read_sharded_weights(directory)
    assert loaded.keys() == model.keys()
    for name, tensor in model.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor)
    assert sharded_shapes(directory) == {name: t.shape for name, t in model.items()}

    values = {"optimizer": {"lr": 0.0, "betas": (0.0, 0.0)}}
    load_sharded(directory, values)
    assert values == {"optimizer": {"lr": 0.1, "betas": (0.9, 0.99)}}


def test_is_sharded_looks_for_the_dcp_metadata(tmp_path: Path):
    assert not is_sharded(str(tmp_path))
    save_sharded(str(tmp_path / "sharded"), {"model": _model()})
    assert is_sharded(str(tmp_path))


def test_a_pickled_object_among_the_values_is_refused_without_running_it(tmp_path: Path):
    marker = tmp_path / "code-ran"
    save_sharded(str(tmp_path / "shards"), {"model": _model(), "extra": MakesADirectoryWhenUnpickled(marker)})

    with pytest.raises(CheckpointError, match=r"could not be loaded safely.*posix\.mkdir"):
        load_sharded(str(tmp_path / "shards"), {"extra": None})
    assert not marker.exists()


def test_metadata_that_refers_to_other_classes_is_refused_without_running_it(tmp_path: Path):
    directory = tmp_path / "shards"
    save_sharded(str(directory), {"model": _model()})
    marker = tmp_path / "code-ran"
    (directory / ".metadata").write_bytes(pickle.dumps(MakesADirectoryWhenUnpickled(marker)))

    with pytest.raises(CheckpointError, match=r"\.metadata is corrupt or unsafe.*mkdir is not allowed"):
        read_sharded_weights(str(directory))
    with pytest.raises(CheckpointError, match=r"mkdir is not allowed"):
        load_sharded(str(directory), {"model": _model()})
    assert not marker.exists()


def test_truncated_metadata_is_a_checkpoint_error(tmp_path: Path):
    directory = tmp_path / "shards"
    save_sharded(str(directory), {"model": _model()})
    data = (directory / ".metadata").read_bytes()
    (directory / ".metadata").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or unsafe"):
        sharded_shapes(str(directory))
