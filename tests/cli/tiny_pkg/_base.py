"""The package's base class (imported relatively by ``tasks``)."""

from __future__ import annotations

from tiny_task import TinyTask


class TinyBase(TinyTask):
    pass
