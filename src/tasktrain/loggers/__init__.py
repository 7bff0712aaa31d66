"""Loggers: where metrics go. ``CSVLogger`` is the default."""

from tasktrain.loggers.base import Logger
from tasktrain.loggers.csv import CSVLogger

__all__ = ["CSVLogger", "Logger"]
