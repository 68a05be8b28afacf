"""Where the tritonserver shipped in `nvidia-pytriton` lives and what it needs to run here.

The wheel ships the server, the python backend and one backend stub per Python version. The
stub embeds libpython: it must find *this* interpreter's libpython first on the library path
(an older system libpython breaks `import transformers`), and this venv's `bin` first on PATH so
that its embedded Python picks up the venv's packages.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path


class TritonSetupError(RuntimeError):
    """Triton cannot be started here; the message says what is missing and what to do."""


@dataclass(frozen=True)
class TritonInstall:
    """Files of a tritonserver installation."""

    binary: Path
    backends: Path  # directory holding python/libtriton_python.so
    stub: Path  # triton_python_backend_stub matching this Python
    libs: Path | None  # bundled shared libraries (nvidia_pytriton.libs)


def pytriton_install(binary: Path | None = None) -> TritonInstall:
    """The tritonserver bundled in the installed `nvidia-pytriton` wheel (or `binary` with the
    wheel's backends and stub)."""
    try:
        import pytriton
    except ImportError as exc:
        raise TritonSetupError(
            "nvidia-pytriton is not installed, so there is no embedded Triton: set "
            "CDE_TRITON_URL to an external Triton (a gateway-only install), or "
            "pip install 'cde-serve[server]' (or set CDE_TRITON_BINARY to a tritonserver)"
        ) from exc
    root = Path(pytriton.__file__).resolve().parent / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    libs = root.parent.parent / "nvidia_pytriton.libs"
    return TritonInstall(
        binary=binary if binary is not None else root / "bin" / "tritonserver",
        backends=root / "backends",
        stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
        libs=libs if libs.is_dir() else None,
    )


def check_install(install: TritonInstall) -> None:
    """Raise TritonSetupError naming the first missing piece of `install`."""
    if not os.access(install.binary, os.X_OK):
        raise TritonSetupError(f"tritonserver binary not found or not executable: {install.binary}")
    if not (install.backends / "python" / "libtriton_python.so").is_file():
        raise TritonSetupError(f"python backend not found under {install.backends}")
    if not install.stub.is_file():
        raise TritonSetupError(
            f"no python backend stub for Python {sys.version_info.major}.{sys.version_info.minor}: "
            f"{install.stub} is missing"
        )


def python_libdir() -> Path:
    """Directory holding this interpreter's shared libpython; TritonSetupError if there is none."""
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME") or (
        f"libpython{sys.version_info.major}.{sys.version_info.minor}.so.1.0"
    )
    if not libdir or not (Path(libdir) / soname).is_file():
        raise TritonSetupError(
            f"shared libpython not found ({libdir}/{soname}): the python backend stub needs a "
            "Python built with --enable-shared (e.g. PYTHON_CONFIGURE_OPTS=--enable-shared "
            "for pyenv)"
        )
    return Path(libdir)


def prepare_backend_dir(install: TritonInstall, cache_dir: Path) -> Path:
    """A writable copy of the backends with the matching stub in python/, reused when current.

    The copy's name hashes the source files' sizes and times, so an upgraded wheel gets a new
    one. It is built in a temporary directory and renamed, so concurrent starts are safe.
    """
    sources = [*sorted(p for p in install.backends.rglob("*") if p.is_file()), install.stub]
    fingerprint = hashlib.sha256()
    for path in sources:
        stat = path.stat()
        fingerprint.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    target = cache_dir / f"backends-{fingerprint.hexdigest()[:16]}"
    if (target / "python" / "triton_python_backend_stub").is_file():
        return target
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".backends-", dir=cache_dir))
        shutil.copytree(
            install.backends,
            staging / "backends",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        shutil.copy2(install.stub, staging / "backends" / "python" / install.stub.name)
        try:
            (staging / "backends").rename(target)
        except OSError:
            if not target.is_dir():  # not a lost race with another starter
                raise
        shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        raise TritonSetupError(
            f"cannot prepare the backend directory in {cache_dir}: {exc} "
            "(set CDE_TRITON_CACHE_DIR to a writable directory)"
        ) from exc
    return target


# GNU OpenMP's idle threads busy-wait this many spins for the next parallel region (libgomp's
# own default, 300000, is ~15 ms on CPUs with a slow PAUSE: a stub then holds a core after each
# forward that the rest of the path needs). A value set in the environment wins.
STUB_SPIN_COUNT = "10000"


def server_environment(install: TritonInstall, extra: dict[str, str]) -> dict[str, str]:
    """Environment for tritonserver: this libpython first, the venv's bin first on PATH, a
    short OpenMP spin for the stubs (unless `GOMP_SPINCOUNT` is set)."""
    env = dict(os.environ)
    env.setdefault("GOMP_SPINCOUNT", STUB_SPIN_COUNT)
    library_path = [str(python_libdir())]
    if install.libs is not None:
        library_path.append(str(install.libs))
    if env.get("LD_LIBRARY_PATH"):
        library_path.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(library_path)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", os.defpath)])
    if env.get("PYTHONPATH"):
        env["PYTHONPATH"] = absolute_search_path(env["PYTHONPATH"])
    env.update(extra)
    return env


def absolute_search_path(search_path: str) -> str:
    """`search_path` (PYTHONPATH) with relative entries made absolute: the stubs run in another
    working directory, where `PYTHONPATH=server:...` would silently find nothing (and an
    installed copy of the package would be imported instead)."""
    return os.pathsep.join(
        str(Path(entry).resolve()) if entry else entry for entry in search_path.split(os.pathsep)
    )


def has_gpu() -> bool:
    """Whether an NVIDIA GPU is visible (driver present, not hidden by CUDA_VISIBLE_DEVICES)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())
