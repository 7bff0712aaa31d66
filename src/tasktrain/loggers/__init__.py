"""Loggers: where metrics go. ``CSVLogger`` is the default; several can be given at once.

``MLFlowLogger`` and ``WandbLogger`` import their tracker package when they first write.
"""

from tasktrain.loggers.base import FileLogger, Logger
from tasktrain.loggers.csv import CSVLogger
from tasktrain.loggers.jsonl import JSONLLogger
from tasktrain.loggers.mlflow import MLFlowLogger
from tasktrain.loggers.tensorboard import TensorBoardLogger
from tasktrain.loggers.wandb import WandbLogger

__all__ = [
    "CSVLogger",
    "FileLogger",
    "JSONLLogger",
    "Logger",
    "MLFlowLogger",
    "TensorBoardLogger",
    "WandbLogger",
]
