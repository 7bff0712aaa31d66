"""Strategies own placement and synchronisation: swap one object, keep the same module."""

from tasktrain.strategies.base import Strategy
from tasktrain.strategies.single import SingleDevice

__all__ = ["SingleDevice", "Strategy"]
