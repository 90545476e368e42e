"""Compile and load the C++ weight-only kernels (`weight_only.cpp`) as torch operators.

The source is compiled with the system's C++ compiler (g++ or $CXX) against torch's headers and
libraries into a shared library named after a hash of the source, the torch version and the
flags, and loaded with ``torch.ops.load_library`` (operators ``torch.ops.zeropoint_wo.*``).
No ninja, no Python headers: one compiler command. ``make setup`` runs ``python -m
zeropoint.kernels.build`` so that a fresh checkout has it; otherwise the first call that wants
the kernels compiles it (~15 s), next to the source or, where that is read-only, in
``$XDG_CACHE_HOME/zeropoint`` (``~/.cache/zeropoint``).

If there is no compiler, or compiling or loading fails, `load` returns False (a warning names
the error once) and callers run their pure-torch path: the same numbers, only slower.
``ZEROPOINT_KERNELS=0`` in the environment disables the kernels.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("weight_only.cpp")
NAME = "zeropoint_wo"
FLAGS = ("-O3", "-std=c++20", "-shared", "-fPIC", "-fopenmp", "-w")

_state: dict[str, object] = {}  # "loaded": bool, "error": str


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def _library_name() -> str:
    digest = hashlib.sha1()
    digest.update(SOURCE.read_bytes())
    digest.update(torch.__version__.encode())
    digest.update(" ".join(FLAGS).encode())
    return f"{NAME}-{digest.hexdigest()[:12]}.so"


def _candidates() -> list[Path]:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "zeropoint"
    return [SOURCE.parent / "_build", cache]


def _command(compiler: str, output: Path) -> list[str]:
    from torch.utils.cpp_extension import include_paths, library_paths

    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    cmd = [compiler, *FLAGS, f"-D_GLIBCXX_USE_CXX11_ABI={abi}"]
    cmd += [f"-I{p}" for p in include_paths()]
    cmd += [str(SOURCE), "-o", str(output)]
    cmd += [f"-L{p}" for p in library_paths()]
    # libgomp.so.1 resolves to the OpenMP runtime torch has already loaded (same soname)
    cmd += ["-ltorch", "-ltorch_cpu", "-lc10"]
    return cmd


def build(force: bool = False) -> Path:
    """Compile the kernels (unless a library for this source and torch exists); its path.

    Raises RuntimeError with the compiler's output when compiling fails."""
    name = _library_name()
    for directory in _candidates():
        if (directory / name).is_file() and not force:
            return directory / name
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler (g++, c++ or $CXX) on the PATH")
    errors = []
    for directory in _candidates():
        try:
            directory.mkdir(parents=True, exist_ok=True)
            # compile to a temporary name, then rename: concurrent builds never see half a file
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
            os.close(fd)
        except OSError as exc:
            errors.append(f"{directory}: {exc}")
            continue
        result = subprocess.run(_command(compiler, Path(tmp)), capture_output=True, text=True)
        if result.returncode != 0:
            Path(tmp).unlink(missing_ok=True)
            raise RuntimeError(f"compiling {SOURCE.name} failed:\n{result.stderr[-4000:]}")
        os.replace(tmp, directory / name)
        return directory / name
    raise RuntimeError("no writable directory for the kernels: " + "; ".join(errors))


def load() -> bool:
    """True when ``torch.ops.zeropoint_wo`` is available (building it first if needed)."""
    if "loaded" in _state:
        return bool(_state["loaded"])
    if os.environ.get("ZEROPOINT_KERNELS", "1") == "0":
        _state["loaded"] = False
        return False
    try:
        torch.ops.load_library(str(build()))
        _state["loaded"] = True
    except Exception as exc:  # compiler missing, compile error, incompatible library
        _state["loaded"] = False
        _state["error"] = f"{type(exc).__name__}: {exc}"
        warnings.warn(
            f"zeropoint's weight-only kernels are unavailable, using the pure-torch path "
            f"({str(_state['error'])[:300]})",
            RuntimeWarning,
            stacklevel=2,
        )
    return bool(_state["loaded"])


def error() -> str | None:
    """Why the kernels did not load (None if they did, or were not tried yet)."""
    return _state.get("error")  # type: ignore[return-value]


if __name__ == "__main__":
    path = build(force="--force" in sys.argv)
    torch.ops.load_library(str(path))
    isa = torch.ops.zeropoint_wo.vector_isa()
    print(f"{path} ({'AVX2+FMA' if isa == 2 else 'scalar'} path)")
