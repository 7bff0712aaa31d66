"""A package, for the ``pkg.module:Class`` form of ``--task``."""
