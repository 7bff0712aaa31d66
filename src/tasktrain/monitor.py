"""``monitored``: read the metric a callback, a scheduler or a search monitors, or say why it cannot.

Every consumer of ``monitor=`` (``EarlyStopping``, ``ModelCheckpoint``, a monitored LR
scheduler, ``tune.search`` and its ``PruningCallback``) reads it through here, so a name that was
never logged fails the same way everywhere: naming who monitors it, listing what was logged,
and suggesting the closest logged name (``val_loss`` → ``val/loss``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence

_SEPARATORS = re.compile(r"[/_.\-\s]+")


class MonitorError(KeyError):
    """A monitored metric was not logged. A ``KeyError``, whose message prints without quotes."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def monitored(metrics: Mapping[str, float], monitor: str, who: str) -> float:
    """``metrics[monitor]`` as a float, or a :class:`MonitorError` naming ``who`` and what was logged.

    Example:
        >>> monitored({"val/loss": 0.5}, "val/loss", "EarlyStopping")
        0.5
        >>> monitored({"val/loss": 0.5}, "val_loss", "EarlyStopping")
        Traceback (most recent call last):
        ...
        tasktrain.monitor.MonitorError: EarlyStopping: monitor='val_loss' was not logged; logged metrics: ['val/loss']; did you mean 'val/loss'?
    """
    if monitor in metrics:
        return float(metrics[monitor])
    names = sorted(metrics)
    match = close_match(monitor, names)
    hint = f"; did you mean {match!r}?" if match else " (log it with self.log, or pass monitor= one of these)"
    raise MonitorError(f"{who}: monitor={monitor!r} was not logged; logged metrics: {names or 'none'}{hint}")


def close_match(name: str, candidates: Sequence[str]) -> str | None:
    """The candidate ``name`` was most likely meant to be: the same up to separators and case
    (``val_loss``, ``Val/Loss`` → ``val/loss``), else a close spelling; None when nothing is close.

    The cutoff is high on purpose: ``val/acc`` is not suggested for ``val/loss``.

    Example:
        >>> close_match("val_loss", ["train/loss", "val/loss"])
        'val/loss'
        >>> close_match("val/acc", ["val/loss"]) is None
        True
    """
    normalised = {_normalise(c): c for c in candidates}
    key = _normalise(name)
    if key in normalised:
        return normalised[key]
    found = difflib.get_close_matches(key, list(normalised), n=1, cutoff=0.8)
    return normalised[found[0]] if found else None


def _normalise(name: str) -> str:
    return _SEPARATORS.sub("/", name.strip().lower())
