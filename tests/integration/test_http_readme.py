"""The README's HTTP API snippets run as written (curl, openai SDK, LangChain, LlamaIndex)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

from integration.conftest import http_url

README = Path(__file__).resolve().parents[2] / "README.md"


def http_section_blocks() -> tuple[list[str], list[str]]:
    """The curl command lines and the Python blocks of the README's HTTP API section."""
    section = README.read_text().split("## HTTP API\n", 1)[1].split("\n## ", 1)[0]
    bash = re.findall(r"```bash\n(.*?)```", section, re.S)
    commands = [line for block in bash for line in block.splitlines() if line.startswith("curl")]
    return commands, re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_http_snippets(gateway_factory: Any, capsys: Any) -> None:
    gateway = gateway_factory()
    base = http_url(gateway)
    commands, python_blocks = http_section_blocks()
    assert len(commands) == 2 and len(python_blocks) == 3
    answers = []
    for command in commands:
        argv = shlex.split(command.replace("http://localhost:8080", base))
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
        answers.append(json.loads(result.stdout))
    assert answers[0]["name"] == "docs" and answers[1]["object"] == "list"
    for block in python_blocks:
        code = block.replace("http://localhost:8080", base).replace(
            "localhost:50051", gateway.address
        )
        namespace: dict[str, Any] = {}
        exec(compile(code, "README", "exec"), namespace)
    hidden, tokens = capsys.readouterr().out.split()
    assert int(hidden) > 0 and int(tokens) > 0
    assert len(namespace["query"]) == int(hidden)
