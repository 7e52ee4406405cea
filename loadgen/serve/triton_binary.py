"""Finding a runnable ``tritonserver`` and giving it what it needs to host Python-backend models.

The ``nvidia-pytriton`` wheel ships a complete Triton Inference Server (binary, Python backend, and one Python-backend
stub per Python version). Three things make it work from a virtual environment on a machine without a GPU:

* the stub is copied next to ``libtriton_python.so`` in a backend directory of our own (the wheel keeps the stubs
  in a separate folder, per Python version, and the backend looks for the stub beside itself);
* ``LD_LIBRARY_PATH`` starts with this interpreter's ``LIBDIR`` (the stub embeds Python and would otherwise load a
  system libpython of another patch release) followed by the wheel's bundled ``nvidia_pytriton.libs``;
* ``PATH`` starts with this interpreter's ``bin`` directory: the stub finds its Python prefix through ``python3`` on
  ``PATH``, which is what makes the virtual environment's packages (numpy, loadgen) importable inside models.

A binary given explicitly (``--tritonserver PATH`` or ``$LOADGEN_TRITONSERVER``), e.g. ``/opt/tritonserver/bin`` of
an NGC container, is used with the backend and stub found beside it when there are any.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from loadgen.errors import UsageError

ENV_BINARY = "LOADGEN_TRITONSERVER"
INSTALL_HINT = "run `pip install nvidia-pytriton` (it ships tritonserver) or pass --tritonserver PATH"
_STUB = "triton_python_backend_stub"
_BACKEND_LIB = "libtriton_python.so"
_BACKEND_UTILS = "triton_python_backend_utils.py"


@dataclass(frozen=True)
class TritonInstall:
    """Where the pieces of one Triton installation are."""

    server: Path  # the tritonserver executable
    python_backend: Path  # directory holding libtriton_python.so (and triton_python_backend_utils.py)
    stub: Path  # the Python-backend stub built for this interpreter's Python version
    lib_dirs: tuple[Path, ...] = ()  # shared-library directories the server and stub need


def python_version_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _pytriton_root() -> Path | None:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _find_stub(root: Path, backend: Path) -> Path | None:
    """The stub for this Python: the wheel's per-version folder first, then one already beside the backend."""
    for cand in (root / "python_backend_stubs" / python_version_tag() / _STUB, backend / _STUB):
        if cand.is_file():
            return cand
    return None


def find_triton(binary: str | os.PathLike[str] | None = None) -> TritonInstall:
    """Locate tritonserver, its Python backend and the stub for this Python; UsageError naming what is missing."""
    chosen = binary or os.environ.get(ENV_BINARY) or None
    pyt = _pytriton_root()
    if chosen:
        server = Path(chosen).expanduser().resolve()
        root = server.parent.parent
    else:
        if pyt is None:
            raise UsageError(f"tritonserver not found: nvidia-pytriton is not installed in {sys.executable}; "
                             f"{INSTALL_HINT}")
        root = pyt / "tritonserver"
        server = root / "bin" / "tritonserver"
    if not server.is_file():
        raise UsageError(f"tritonserver binary {server} is missing: {INSTALL_HINT}")
    if not os.access(server, os.X_OK):
        raise UsageError(f"tritonserver binary {server} is not executable (broken install?): "
                         f"reinstall with `pip install --force-reinstall nvidia-pytriton` or fix its permissions")
    backend = root / "backends" / "python"
    stub = _find_stub(root, backend) if (backend / _BACKEND_LIB).is_file() else None
    if stub is None and chosen and pyt is not None:
        # A bare binary without its own Python backend: borrow the wheel's backend and stub.
        wroot = pyt / "tritonserver"
        backend = wroot / "backends" / "python"
        stub = _find_stub(wroot, backend)
    if not (backend / _BACKEND_LIB).is_file():
        raise UsageError(f"Triton's Python backend ({backend / _BACKEND_LIB}) is missing: {INSTALL_HINT}")
    if stub is None:
        raise UsageError(f"no Python-backend stub for Python {python_version_tag()} next to {server}: use a Python "
                         f"version nvidia-pytriton ships stubs for, or {INSTALL_HINT}")
    libs = []
    if pyt is not None:
        bundled = pyt.parent / "nvidia_pytriton.libs"
        if bundled.is_dir():
            libs.append(bundled)
    return TritonInstall(server=server, python_backend=backend, stub=stub, lib_dirs=tuple(libs))


def build_backend_dir(install: TritonInstall, dest: str | os.PathLike[str]) -> Path:
    """Make ``dest/python`` a Python backend with this interpreter's stub beside the library; returns ``dest``.

    Copies (about 3 MB, once per server start) rather than links, so the directory stays valid and self-contained
    even if the wheel is upgraded underneath a running server.
    """
    root = Path(dest)
    py = root / "python"
    py.mkdir(parents=True, exist_ok=True)
    shutil.copy2(install.python_backend / _BACKEND_LIB, py / _BACKEND_LIB)
    utils = install.python_backend / _BACKEND_UTILS
    if utils.is_file():
        shutil.copy2(utils, py / _BACKEND_UTILS)
    shutil.copy2(install.stub, py / _STUB)
    os.chmod(py / _STUB, 0o755)
    return root


def project_root() -> Path:
    """The directory that holds the ``loadgen`` package (put on the models' PYTHONPATH)."""
    return Path(__file__).resolve().parents[2]


def server_environment(install: TritonInstall, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment tritonserver and its Python stubs need (see the module docstring for why each entry)."""
    env = dict(os.environ if base is None else base)
    libdir = sysconfig.get_config_var("LIBDIR")
    ld = [str(p) for p in ([Path(libdir)] if libdir else []) + list(install.lib_dirs)]
    if env.get("LD_LIBRARY_PATH"):
        ld.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(ld)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bindir] + ([env["PATH"]] if env.get("PATH") else []))
    pypath = [str(project_root())] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(pypath)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
