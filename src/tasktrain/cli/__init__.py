"""The ``tasktrain`` command line: ``fit``, ``validate``, ``test``, ``predict`` and ``export``.

``tasktrain fit --task examples/digits.py --task.hidden 64 --trainer.max_epochs 3`` loads the
task class from a file or an import path, turns its constructor and the Trainer's arguments into
typed options (jsonargparse), saves the resolved config next to the logs, and runs. See
``docs/concepts/cli.md``.

Example:
    >>> from tasktrain.cli import main
    >>> main(["fit", "--task", "examples/digits.py", "--data", "examples/digits.py"])  # doctest: +SKIP
    0
"""

from tasktrain.cli.main import main

__all__ = ["main"]
