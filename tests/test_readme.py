"""The README runs as pasted: every ```python block, each on its own in a fresh interpreter.

A reader copies one block into a new Python session, so each block runs alone (nothing defined
by an earlier block, no imports it does not write itself), from a directory outside the
repository (as a user of the installed package would). The repository goes on PYTHONPATH only
so that the test also works on a checkout that is not pip-installed.

The bash blocks are not run (they install packages and train for minutes); what can be checked
without running them is: the first command trains the default with only the `train` extra,
and CI (.ci/run) runs exactly the README's test command.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")
BLOCK_TIMEOUT_S = 600


def _blocks(language: str) -> list[tuple[int, str]]:
    """``(line number, code)`` of every fenced block of ``language``."""
    out = []
    for m in re.finditer(rf"^```{language}\n(.*?)^```", README, flags=re.S | re.M):
        out.append((README.count("\n", 0, m.start()) + 1, m.group(1)))
    return out


PYTHON_BLOCKS = _blocks("python")


def test_the_readme_has_python_blocks():
    assert len(PYTHON_BLOCKS) >= 3


@pytest.mark.parametrize("line, code", PYTHON_BLOCKS, ids=[f"line{n}" for n, _ in PYTHON_BLOCKS])
def test_python_block_runs_as_pasted(line, code, tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("JAX_PLATFORMS", "cpu")
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
    )
    assert result.returncode == 0, (
        f"README.md block at line {line} failed:\n{result.stderr[-3000:]}"
    )


def _commands() -> list[str]:
    """The commands of the 'Two commands on a fresh machine' block, comments dropped."""
    block = _blocks("bash")[0][1]
    return [
        ln.strip() for ln in block.splitlines() if ln.strip() and not ln.strip().startswith("#")
    ]


def test_first_command_installs_what_the_default_run_needs():
    first, _ = _commands()
    assert re.search(r"pip install -e '\.\[[^\]]*\btrain\b", first), first
    assert first.endswith("python -m experiments.train"), first


def test_ci_runs_the_readme_test_command():
    _, test_command = _commands()
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test_command in [ln.strip() for ln in ci], f"{test_command!r} is not a line of .ci/run"
