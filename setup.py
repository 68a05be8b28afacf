"""Build hooks: generate the cde.v1 protobuf/gRPC Python code (with mypy-protobuf stubs), and
ship the top-level model_repository/ inside the wheel as cde_server/triton/model_repository.

Everything else about the package lives in pyproject.toml.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTO_ROOT = ROOT / "proto"
OUT_DIR = ROOT / "client"
MODEL_REPOSITORY = ROOT / "model_repository"
PACKAGED_MODEL_REPOSITORY = Path("cde_server", "triton", "model_repository")


def generate_protos() -> None:
    """Run protoc (grpcio-tools) on proto/cde/v1/*.proto into client/cde/v1/."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    plugins = _mypy_plugins()
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={OUT_DIR}",
        f"--grpc_python_out={OUT_DIR}",
        f"--plugin=protoc-gen-mypy={plugins['mypy']}",
        f"--plugin=protoc-gen-mypy_grpc={plugins['mypy_grpc']}",
        f"--mypy_out={OUT_DIR}",
        f"--mypy_grpc_out={OUT_DIR}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")


def _mypy_plugins() -> dict[str, Path]:
    """Executable wrappers for mypy-protobuf's protoc plugins, bound to this interpreter.

    The build environment's scripts directory is not always on PATH, so protoc is pointed at
    small launchers instead of relying on `protoc-gen-mypy` being found.
    """
    bin_dir = Path(tempfile.mkdtemp(prefix="cde-protoc-"))
    plugins = {}
    for name, function in (("mypy", "main"), ("mypy_grpc", "grpc")):
        launcher = bin_dir / f"protoc-gen-{name}"
        launcher.write_text(
            f"#!{sys.executable}\nfrom mypy_protobuf.main import {function}\n{function}()\n"
        )
        launcher.chmod(0o755)
        plugins[name] = launcher
    return plugins


class BuildPyWithProtos(build_py):
    """build_py that generates the protobuf modules first and copies model_repository/."""

    def run(self) -> None:
        generate_protos()
        super().run()
        # An editable install reads the checkout's copy; a tree without model_repository/
        # (the gateway image, which talks to an external Triton) ships none.
        if not self.editable_mode and MODEL_REPOSITORY.is_dir():
            target = Path(self.build_lib) / PACKAGED_MODEL_REPOSITORY
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(
                MODEL_REPOSITORY, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )


setup(cmdclass={"build_py": BuildPyWithProtos})
