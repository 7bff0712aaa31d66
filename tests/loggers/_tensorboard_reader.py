"""Read event files back with tensorboard's own reader (``EventAccumulator``), for the tests."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2


def read_events(log_dir: str | Path) -> EventAccumulator:
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return events


def scalars(events: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in events.Scalars(tag)]


def hparams(events: EventAccumulator) -> dict[str, object]:
    """The hparams plugin's session-start record, as ``{name: value}``."""
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {name: getattr(value, value.WhichOneof("kind")) for name, value in start.hparams.items()}
