"""``import tasktrain`` stays light: optional and heavy dependencies load only when used."""

from __future__ import annotations

import subprocess
import sys

import tasktrain as tt

LAZY = (
    "torchmetrics",
    "deepspeed",
    "jsonargparse",
    "optuna",
    "tensorboard",
    "transformers",  # tasktrain.hf imports it when a model is built
    "peft",
    "mlflow",  # MLFlowLogger and WandbLogger import their tracker at the first write
    "wandb",
    # ~1 s together: loaded only when a sharded strategy or a checkpoint needs them
    "torch.distributed.fsdp",
    "torch.distributed.tensor",
    "torch.distributed.checkpoint",
)


def _imported_after(statement: str) -> list[str]:
    code = f"import sys\n{statement}\nprint(','.join(m for m in {LAZY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def test_import_tasktrain_does_not_import_optional_dependencies():
    assert _imported_after("import tasktrain") == []


def test_importing_the_public_subpackages_stays_light():
    statement = (
        "import tasktrain, tasktrain.callbacks, tasktrain.loggers, tasktrain.loops, tasktrain.checkpoint, "
        "tasktrain.strategies, tasktrain.tune, tasktrain.hf"
    )
    assert _imported_after(statement) == []


def test_import_tasktrain_adds_at_most_0_3_s_over_torch():
    """Measured in fresh interpreters (torch first, then tasktrain); the best of three, as machines are busy."""
    code = (
        "import time\nimport torch\nstart = time.perf_counter()\nimport tasktrain, tasktrain.loggers, tasktrain.hf\n"
        "print(time.perf_counter() - start)"
    )
    seconds = min(
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
        for _ in range(3)
    )
    assert seconds <= 0.3, f"import tasktrain took {seconds:.3f} s after torch"


def test_public_names():
    assert set(tt.__all__) == {"FitResult", "TaskModule", "Trainer", "__version__", "seed_everything"}
    for name in tt.__all__:
        assert hasattr(tt, name)
