"""Run several ``tasktrain`` command lines in one fresh interpreter, so torch is imported once.

``python _harness.py '[["fit", "--task", ...], ...]'`` runs them in order and prints one JSON
list: for each command line its exit status, stdout and stderr. An exception that escapes
``main`` is printed to that command's stderr as a traceback, what a real process would show. An
item ``{"argv": [...], "stdout_to": "file"}`` also writes its stdout to that file, for a later
command line to read (e.g. ``--print_config`` output fed back as ``--config``).
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import traceback
from typing import Any

from tasktrain.cli import main


def run(argv: list[str]) -> dict[str, object]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
        except BaseException:
            traceback.print_exc()
            code = 1
    return {"argv": argv, "code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


def run_item(item: list[str] | dict[str, Any]) -> dict[str, object]:
    if isinstance(item, list):
        return run(item)
    result = run(item["argv"])
    with open(item["stdout_to"], "w") as f:
        f.write(str(result["stdout"]))
    return result


if __name__ == "__main__":
    print(json.dumps([run_item(item) for item in json.loads(sys.argv[1])]))
