"""``FileLogger``: the run directory is checked for writing at the start of fit, on rank 0 only."""

from __future__ import annotations

import uuid

import fsspec
import pytest
from lightning_utilities.core.rank_zero import rank_zero_only

from tasktrain.loggers import CSVLogger, JSONLLogger, TensorBoardLogger

LOGGERS = [CSVLogger, JSONLLogger, TensorBoardLogger]


@pytest.mark.parametrize("logger_class", LOGGERS)
def test_a_root_below_a_regular_file_fails_naming_the_log_dir(tmp_path, logger_class):
    (tmp_path / "file").write_text("not a folder")
    logger = logger_class(str(tmp_path / "file" / "runs"))  # fails even as root, unlike chmod
    with pytest.raises(OSError, match="cannot write to the log directory") as info:
        logger.log_hyperparams({"lr": 0.1})
    assert repr(logger.log_dir) in str(info.value)
    assert logger.log_dir == f"{tmp_path}/file/runs/{logger.name}/version_0"


@pytest.mark.parametrize("logger_class", LOGGERS)
def test_the_check_creates_the_version_folder_and_leaves_no_probe(logger_class):
    root = f"memory://probe-{uuid.uuid4().hex}"
    logger = logger_class(root)
    logger.check_writable()
    fs = fsspec.filesystem("memory")
    assert fs.isdir(logger.log_dir)
    assert fs.ls(logger.log_dir, detail=False) == []


def test_other_ranks_do_not_check(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    logger = CSVLogger(str(tmp_path / "file" / "runs"))
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger.log_hyperparams({"lr": 0.1})  # rank 1 writes nothing, so it checks nothing
