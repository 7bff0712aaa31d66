"""Griffe extension: render tasktrain's docstrings as written, for the API reference.

Our docstrings follow STYLE.md: Google style with an ``Example:`` section of doctest lines, and
Sphinx roles (``:class:`~tasktrain.state.Progress```) that also read well in ``help()``. Griffe
knows ``Examples:`` (plural) as the doctest section and no Sphinx roles, so before a docstring
is parsed this extension renames the section, turns each role into inline code that links to
the object when the reference renders it (an *optional* autoref: no link, no error otherwise),
and drops the second colon of a reST ``text::`` literal-block marker.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", flags=re.MULTILINE)
_ROLE = re.compile(r":(?:class|mod|func|meth|attr|data|exc|obj):`(~?)([\w.]+)`")
_LITERAL = re.compile(r"(\S)::$", flags=re.MULTILINE)  # reST "text::" before an indented block


def _role(match: re.Match[str]) -> str:
    short, path = match.group(1), match.group(2)
    title = path.rsplit(".", 1)[-1] if short else path
    if "." not in path:  # a bare name such as `log` is relative to the docstring: plain code
        return f"`{title}`"
    return f'<autoref identifier="{path}" optional><code>{title}</code></autoref>'


def rewrite(text: str) -> str:
    """The docstring with ``Example:`` read as ``Examples:``, Sphinx roles as code, ``text::`` as ``text:``.

    Markdown already renders the indented block after a reST ``::`` as code.
    """
    text = _EXAMPLE.sub(r"\1Examples:", text)
    return _LITERAL.sub(r"\1:", _ROLE.sub(_role, text))


class TasktrainDocstrings(griffe.Extension):
    """Rewrites every docstring once, when griffe creates the object."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
