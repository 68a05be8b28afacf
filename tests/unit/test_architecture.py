"""The layout stays what docs/architecture.md says: import directions, few top-level modules,
and one Triton config per model whose CPU variant differs only in the instance kind."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from support.paths import REPO_ROOT

PACKAGE = REPO_ROOT / "server" / "cde_server"
MODEL_REPOSITORY = REPO_ROOT / "model_repository"


def test_import_contracts_hold() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(lint_imports), "--config", str(REPO_ROOT / "pyproject.toml")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_few_modules_at_the_top_of_cde_server() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 12, top


def gpu_and_cpu_configs() -> list[tuple[Path, Path]]:
    pairs = []
    for config in sorted(MODEL_REPOSITORY.glob("*/config.pbtxt")):
        cpu = config.parent / "configs" / "cpu.pbtxt"
        if cpu.exists():
            pairs.append((config, cpu))
    return pairs


def device_independent(text: str) -> str:
    """The config without comments, its instance group and the device it reports."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"^instance_group \[.*\]$", "instance_group [...]", "\n".join(lines), flags=re.M)
    return re.sub(r'(key: "device_kind", value: \{ string_value: )"\w+"', r"\1...", text)


@pytest.mark.parametrize(
    "gpu, cpu",
    gpu_and_cpu_configs(),
    ids=lambda p: p.parts[-3] if p.name == "cpu.pbtxt" else p.parts[-2],
)
def test_cpu_config_differs_only_in_instances(gpu: Path, cpu: Path) -> None:
    assert "KIND_GPU" not in cpu.read_text()
    assert device_independent(gpu.read_text()) == device_independent(cpu.read_text())


def test_every_python_model_has_a_cpu_config() -> None:
    python_models = [
        config.parent.name
        for config in MODEL_REPOSITORY.glob("*/config.pbtxt")
        if 'backend: "python"' in config.read_text()
    ]
    assert python_models and {gpu.parent.name for gpu, _ in gpu_and_cpu_configs()} == set(
        python_models
    )
