"""The ``tasktrain`` entry point: dispatch to a command, and turn bad input into one message.

This module imports neither jsonargparse nor the user's task: ``tasktrain --help`` costs
little more than ``import torch``.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence

from tasktrain.cli.errors import CLIError, did_you_mean

COMMANDS = {
    "fit": "train a task",
    "validate": "run the validation loop once (e.g. on a checkpoint: --ckpt_path last)",
    "test": "run the test loop once",
    "predict": "run predict_step over the predict data; the outputs are saved as predictions.pt",
    "export": "write a checkpoint's weights as one safetensors file, or a Hugging Face directory (--format hf)",
    "plot": "draw learning curves of one or more runs to a PNG",
    "tune": "search hyperparameters with optuna (a --space file suggests the task's arguments)",
}

USAGE = "usage: tasktrain [-h] [--version] {fit,validate,test,predict,export,plot,tune} ..."
HELP = f"""{USAGE}

Train and evaluate tasktrain TaskModules from the shell.

commands:
{chr(10).join(f"  {name:<10}{text}" for name, text in COMMANDS.items())}

options:
  -h, --help  show this help message and exit
  --version   show the version and exit

examples:
  tasktrain fit --task examples/digits.py --data examples/digits.py --trainer.max_epochs 3
  tasktrain fit --task my_pkg.tasks:MyTask --task.lr 0.01 --trainer.strategy ddp --trainer.devices 2
  tasktrain fit --config run.yaml --trainer.max_steps 500
  tasktrain validate --task examples/digits.py --data examples/digits.py --ckpt_path last
  tasktrain export runs/checkpoints/step=00000200 model.safetensors
  tasktrain plot runs/csv/version_0 runs/csv/version_1 --out curves.png
  tasktrain tune --task my_task.py --space my_space.py --n_trials 20 --storage sqlite:///tune.db

Run 'tasktrain COMMAND --help' for a command's options; with --task given, the help lists the
task's own options too. Add --debug to any command to see Python tracebacks."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tasktrain`` command line; return its exit status (2 for bad input).

    Example:
        >>> main(["fit", "--task", "examples/digits.py", "--data", "examples/digits.py"])  # doctest: +SKIP
        0
    """
    args = list(sys.argv[1:] if argv is None else argv)
    command = args[0] if args else None
    prog = f"tasktrain {command}" if command in COMMANDS else "tasktrain"
    debug = "--debug" in args
    try:
        return _dispatch(command, [a for a in args[1:] if a != "--debug"])
    except CLIError as error:
        if debug:
            traceback.print_exception(error)
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `tasktrain ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _dispatch(command: str | None, rest: list[str]) -> int:
    if command in (None, "-h", "--help"):
        print(HELP, file=sys.stdout if command else sys.stderr)
        return 0 if command else 2
    if command == "--version":
        from tasktrain import __version__

        print(f"tasktrain {__version__}")
        return 0
    if command == "export":
        from tasktrain.cli.export import export_main

        return export_main(rest)
    if command == "plot":
        from tasktrain.cli.plot import plot_main

        return plot_main(rest)
    if command not in COMMANDS:
        raise CLIError(
            f"unknown command {command!r}{did_you_mean(command, COMMANDS)}; commands: {', '.join(COMMANDS)}"
        )
    try:
        import jsonargparse  # noqa: F401  (the optional dependency of the command line)
    except ImportError as error:
        raise CLIError("this command needs jsonargparse: pip install 'tasktrain[cli]'") from error
    if command == "tune":
        from tasktrain.cli.tune import tune_main

        return tune_main(rest)
    from tasktrain.cli.run import run_command  # imports jsonargparse: only when a command runs

    return run_command(command, rest)
