"""``CLIError`` and the helpers that turn bad input into one clear line: what was wrong, what was
looked for, and the closest valid names."""

from __future__ import annotations

import difflib
import sysconfig
import traceback
from collections.abc import Iterable
from pathlib import Path

_LIBRARY_DIRS = tuple(
    str(Path(p).resolve())
    for p in {
        sysconfig.get_paths()["stdlib"],
        sysconfig.get_paths()["purelib"],
        str(Path(__file__).parents[1]),
    }
)


class CLIError(Exception):
    """Bad input on the command line or in a config file: reported as one message, exit status 2.

    Example:
        >>> raise CLIError("--task nope.py: no such file")  # doctest: +SKIP
    """


def did_you_mean(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """``" (did you mean 'x'?)"`` for the closest candidates of ``name``, or ``""`` when none is close.

    Example:
        >>> did_you_mean("max_step", ["max_steps", "max_epochs"])
        " (did you mean 'max_steps'?)"
    """
    scored = sorted(
        ((difflib.SequenceMatcher(None, name, c).ratio(), c) for c in dict.fromkeys(candidates)), reverse=True
    )
    # the best match, and the others nearly as close (not every name above an absolute cutoff)
    close = [c for score, c in scored[:n] if score >= 0.6 and score >= scored[0][0] - 0.05]
    if not close:
        return ""
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)"


def one_of(names: Iterable[str]) -> str:
    """``"a, b or c"``: a short list for messages."""
    items = list(names)
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} or {items[-1]}"


def describe_exception(error: BaseException) -> str:
    """``"ValueError: message (file.py:12)"``: the error and where it was raised, in one line."""
    frames = traceback.extract_tb(error.__traceback__)
    # where in the user's code: the innermost frame outside Python, site-packages and tasktrain
    user = [f for f in frames if not str(Path(f.filename).resolve()).startswith(_LIBRARY_DIRS)]
    where = f" ({user[-1].filename}:{user[-1].lineno})" if user else ""
    if isinstance(error, SyntaxError) and error.filename:
        where = f" ({error.filename}:{error.lineno})"
        return f"SyntaxError: {error.msg}{where}"
    message = " ".join(line.strip() for line in str(error).strip().splitlines())
    return f"{type(error).__name__}: {message}{where}"
