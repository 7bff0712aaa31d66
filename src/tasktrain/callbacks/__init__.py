"""Callbacks: cross-cutting features that hook into the loops."""

from tasktrain.callbacks.base import Callback
from tasktrain.callbacks.checkpoint import ModelCheckpoint
from tasktrain.callbacks.early_stopping import EarlyStopping
from tasktrain.callbacks.ema import EMA
from tasktrain.callbacks.empty_cache import EmptyCache
from tasktrain.callbacks.lr_monitor import LearningRateMonitor
from tasktrain.callbacks.preemption import EXIT_PREEMPTED, Preemption
from tasktrain.callbacks.profiler import Profiler
from tasktrain.callbacks.progress import ProgressBar
from tasktrain.callbacks.throughput import Throughput
from tasktrain.callbacks.underflow import DebugUnderflowOverflow

__all__ = [
    "EMA",
    "EXIT_PREEMPTED",
    "Callback",
    "DebugUnderflowOverflow",
    "EarlyStopping",
    "EmptyCache",
    "LearningRateMonitor",
    "ModelCheckpoint",
    "Preemption",
    "Profiler",
    "ProgressBar",
    "Throughput",
]
