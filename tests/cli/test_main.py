"""``tasktrain --help`` in a fresh interpreter: the entry point lists the commands and stays light."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_help_lists_commands_without_importing_jsonargparse() -> None:
    code = textwrap.dedent(
        """
        import sys
        import tasktrain.__main__  # runs nothing: spawned ranks import it
        from tasktrain.cli import main
        main(["--help"])
        print(sorted(m for m in ("jsonargparse", "yaml") if m in sys.modules))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[-1] == "[]"  # --help, like `import tasktrain.cli`, stays light
    for command in ("fit", "validate", "test", "predict", "export"):
        assert f"  {command} " in done.stdout
