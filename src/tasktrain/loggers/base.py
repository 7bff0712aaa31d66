"""The ``Logger`` interface: where flushed metrics and hyperparameters go."""

from __future__ import annotations

from typing import Any


class Logger:
    """Receives metrics at the logging interval. Subclass it to send them anywhere.

    Loggers are called on every rank; file-writing loggers write on rank 0 only.

    Example:
        >>> class PrintLogger(Logger):
        ...     def log_metrics(self, metrics, step):
        ...         print(step, metrics)
    """

    @property
    def log_dir(self) -> str | None:
        """Where this logger writes, if anywhere."""
        return None

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        """Record the run's hyperparameters (called once at the start of fit)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Record ``metrics`` (already floats) at optimizer step ``step``."""
        raise NotImplementedError

    def finalize(self) -> None:
        """Flush and close (called at the end of every run, also after an error)."""
