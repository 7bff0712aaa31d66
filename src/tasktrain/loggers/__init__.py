"""Loggers: where metrics go. ``CSVLogger`` is the default; several can be given at once."""

from tasktrain.loggers.base import FileLogger, Logger
from tasktrain.loggers.csv import CSVLogger
from tasktrain.loggers.jsonl import JSONLLogger
from tasktrain.loggers.tensorboard import TensorBoardLogger

__all__ = ["CSVLogger", "FileLogger", "JSONLLogger", "Logger", "TensorBoardLogger"]
