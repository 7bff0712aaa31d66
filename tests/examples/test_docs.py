"""The code in README.md and docs/ runs as written.

Every fenced block marked ```` ```python ```` is executed; the blocks of one page run in order in
one namespace, in a temporary directory. Fragments that are not meant to run on their own are
marked ```` ```py ```` (rendered the same) and only checked to compile, as the body of a
function (so a bare ``return`` is fine).

A block whose fence has a title, such as ```` ```python title="Lightning" ````, shows another
framework's code (the migration pages put it next to ours): it is checked to compile like a
```` ```py ```` block and never run, since it imports packages tasktrain does not need.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
_BLOCK = re.compile(r'^```(python|py)( title="[^"\n]*")?\n(.*?)^```', flags=re.MULTILINE | re.DOTALL)


def blocks(page: Path, kind: str) -> list[str]:
    """The page's blocks to run (``"python"``) or to compile only (``"py"``: fragments and titled blocks)."""
    found = _BLOCK.findall(page.read_text(encoding="utf-8"))
    return [code for lang, title, code in found if ("py" if title or lang == "py" else "python") == kind]


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """The snippets train tiny models: one intra-op thread is fastest, and immune to busy CPUs."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "python")], ids=page_id)
@pytest.mark.usefixtures("one_thread")
def test_page_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # runs/ and checkpoints land here
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for i, code in enumerate(blocks(page, "python")):
        exec(compile(code, f"{page_id(page)} (python block {i + 1})", "exec"), namespace)


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "py")], ids=page_id)
def test_fragments_compile(page: Path) -> None:
    for i, code in enumerate(blocks(page, "py")):
        source = "def _fragment():\n" + textwrap.indent(code, "    ")
        compile(source, f"{page_id(page)} (py block {i + 1})", "exec")
