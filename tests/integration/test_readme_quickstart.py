"""The README quickstart runs as written: its CLI lines and its Python snippet, on a real stack."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from cde_server.cli.main import main

if TYPE_CHECKING:
    from support.gateway_fixtures import GatewayFactory

REPO_ROOT = Path(__file__).resolve().parents[2]


def quickstart_blocks() -> tuple[list[str], str]:
    """The `cde ...` command lines and the Python code of the README's Quickstart section."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    bash = re.findall(r"```bash\n(.*?)```", section, re.S)[0]
    commands = [line.split("#", 1)[0].strip() for line in bash.splitlines()]
    python = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    return [c for c in commands if c.startswith("cde ")], python


def test_quickstart_cli_and_python(
    gateway_factory: GatewayFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    gateway = gateway_factory()
    commands, python = quickstart_blocks()
    assert len(commands) >= 3 and "localhost:50051" in python

    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").symlink_to(REPO_ROOT / "examples")
    monkeypatch.setitem(os.environ, "CDE_ADDRESS", gateway.address)
    for command in commands:
        capsys.readouterr()
        status = main(shlex.split(command)[1:])
        captured = capsys.readouterr()
        assert status == 0, f"{command!r} failed: {captured.err}"
    assert np.load(tmp_path / "q.npy").shape[0] == 1

    exec(compile(python.replace("localhost:50051", gateway.address), "README", "exec"), {})
    printed = capsys.readouterr().out.strip()
    assert printed in (REPO_ROOT / "examples" / "docs.txt").read_text().splitlines()
