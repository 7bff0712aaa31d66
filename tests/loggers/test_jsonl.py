"""JSONLLogger: metrics.jsonl (one JSON object per row) and hparams.json through fsspec."""

from __future__ import annotations

import json
import uuid

import fsspec
import pytest
from lightning_utilities.core.rank_zero import rank_zero_only

from tasktrain.loggers import JSONLLogger


def _root() -> str:
    return f"memory://jsonl-{uuid.uuid4().hex}"


def _read_lines(url: str) -> list[dict]:
    with fsspec.open(url, "r") as f:
        return [json.loads(line) for line in f]


def test_memory_url_round_trip():
    root = _root()
    logger = JSONLLogger(root)
    assert logger.version == 0
    assert logger.log_dir == f"{root}/jsonl/version_0"
    logger.log_hyperparams({"lr": 0.1, "layers": [1, 2], "act": object})
    logger.log_metrics({"train/loss": 0.5}, step=10)
    logger.log_metrics({"train/loss": 0.25, "val/acc": 0.75}, step=20)
    logger.finalize()
    assert _read_lines(f"{logger.log_dir}/metrics.jsonl") == [
        {"step": 10, "train/loss": 0.5},
        {"step": 20, "train/loss": 0.25, "val/acc": 0.75},
    ]
    with fsspec.open(f"{logger.log_dir}/hparams.json", "r") as f:
        assert json.load(f) == {"lr": 0.1, "layers": [1, 2], "act": repr(object)}


def test_local_path_appends_across_runs_and_versions_increment(tmp_path):
    logger = JSONLLogger(str(tmp_path), flush_every=2)
    logger.log_metrics({"a": 1.0}, step=1)
    path = tmp_path / "jsonl" / "version_0" / "metrics.jsonl"
    assert not path.exists()  # buffered until flush_every rows
    logger.log_metrics({"a": 2.0}, step=2)
    assert path.read_text() == '{"step": 1, "a": 1.0}\n{"step": 2, "a": 2.0}\n'
    logger.log_metrics({"b": 3.0}, step=3)
    logger.finalize()  # the end of one run (fit) ...
    logger.log_metrics({"a": 4.0}, step=3)
    logger.finalize()  # ... and of the next (validate): the same file grows
    assert [json.loads(line) for line in path.read_text().splitlines()][2:] == [
        {"step": 3, "b": 3.0},
        {"step": 3, "a": 4.0},
    ]
    assert JSONLLogger(str(tmp_path)).version == 1
    assert JSONLLogger(str(tmp_path), name="other").log_dir == f"{tmp_path}/other/version_0"


def test_non_finite_values_are_written_as_null_so_every_line_is_strict_json():
    logger = JSONLLogger(_root())
    logger.log_metrics({"nan": float("nan"), "inf": float("inf"), "ok": 1.5}, step=1)
    logger.finalize()
    with fsspec.open(f"{logger.log_dir}/metrics.jsonl", "r") as f:
        line = f.read()
    assert json.loads(line, parse_constant=pytest.fail) == {"step": 1, "nan": None, "inf": None, "ok": 1.5}


def test_only_rank_zero_writes(monkeypatch):
    logger = JSONLLogger(_root(), flush_every=1)
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"a": 1.0}, step=1)
    logger.finalize()
    fs, path = fsspec.core.url_to_fs(logger.log_dir)
    assert not fs.exists(path)


@pytest.mark.parametrize("flush_every", [0, 1.5, True])
def test_bad_flush_every(flush_every):
    with pytest.raises(
        ValueError, match=rf"JSONLLogger\(flush_every={flush_every!r}\): must be an integer >= 1"
    ):
        JSONLLogger(_root(), flush_every=flush_every)
