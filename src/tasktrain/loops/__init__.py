"""The loop hierarchy: ``FitLoop → EpochLoop → AccumulationLoop → OptimizationStep``, plus evaluation.

Each loop is a small public class with explicit progress counters and a JSON ``state_dict``.
Replace one by assigning it, e.g. ``trainer.fit_loop.epoch_loop = MyEpochLoop(...)``.
"""

from tasktrain.loops.accumulation import AccumulationLoop, NonFiniteLossError
from tasktrain.loops.base import Loop, LoopContext
from tasktrain.loops.cadence import Cadence
from tasktrain.loops.epoch import EpochLoop, steps_per_epoch
from tasktrain.loops.evaluation import EvaluationLoop
from tasktrain.loops.fit import FitLoop
from tasktrain.loops.hooks import HOOKS, HookDispatcher
from tasktrain.loops.manual import ManualOptimization, ManualOptimizer
from tasktrain.loops.optimization import OptimizationStep
from tasktrain.loops.prediction import PredictionLoop
from tasktrain.loops.sanity import SanityCheck

__all__ = [
    "HOOKS",
    "AccumulationLoop",
    "Cadence",
    "EpochLoop",
    "EvaluationLoop",
    "FitLoop",
    "HookDispatcher",
    "Loop",
    "LoopContext",
    "ManualOptimization",
    "ManualOptimizer",
    "NonFiniteLossError",
    "OptimizationStep",
    "PredictionLoop",
    "SanityCheck",
    "steps_per_epoch",
]
