"""``python -m tasktrain``: the same as the ``tasktrain`` command."""

from tasktrain.cli import main

if __name__ == "__main__":  # processes spawned for devices=N re-import this module: run nothing then
    raise SystemExit(main())
