"""adamlab's C++ CPU kernels: compiled on first use, cached, registered as `jax.ffi` targets.

A kernel is a source file in `adamlab/optim/kernels/`. `load(name)` compiles it against the
XLA FFI headers jaxlib ships, or reuses the cached library, whose file name hashes everything
that makes it (source, flags, compiler, jaxlib, CPU). A build is renamed into place, its
sha256 recorded beside it first, and a library is loaded only if its bytes match that record
and its cache directory is not group- or world-writable (anyone could place one there).
Without a kernel `load` returns None (`unavailable_reason` says why) and the caller runs its
XLA program.

Settings (environment):
  ADAMLAB_NATIVE_KERNELS=0   never build or load a kernel.
  ADAMLAB_KERNEL_CACHE=DIR   where built libraries go (default: $XDG_CACHE_HOME/adamlab/kernels,
                             else ~/.cache/adamlab/kernels).
  CXX                        the compiler (default: c++, then g++, then clang++).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jaxlib

from adamlab import switches

ENV_SWITCH = "ADAMLAB_NATIVE_KERNELS"
CACHE_ENV = "ADAMLAB_KERNEL_CACHE"
SOURCE_DIR = Path(__file__).with_name("kernels")
# -ffp-contract=off: no fused multiply-adds the JAX program does not have (same roundings).
# -fno-math-errno: sqrt without errno, so that the loop vectorizes. No -march=native: the
# library may sit in a home directory shared by different machines; the kernels pick their
# vector width at load time instead (target_clones).
FLAGS = (
    "-O3",
    "-std=c++17",
    "-shared",
    "-fPIC",
    "-fno-math-errno",
    "-ffp-contract=off",
)
# The kernels: source file -> exported handler symbol.
KERNELS: dict[str, str] = {"adam_one_pass": "AdamlabAdamOnePass"}

_libraries: dict[str, ctypes.CDLL] = {}  # kept alive: XLA calls into them
_reasons: dict[str, str] = {}
_log = logging.getLogger(__name__)


def target_name(name: str) -> str:
    """The `jax.ffi` target name kernel `name` is registered under."""
    return f"adamlab_{name}"


def enabled() -> bool:
    """False when ``ADAMLAB_NATIVE_KERNELS`` is 0, false, no or off (`adamlab.switches`)."""
    return not switches.switched_off(ENV_SWITCH)


def cache_dir() -> Path:
    """Where built libraries are kept (see the module docstring)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "adamlab" / "kernels"


def compiler() -> str | None:
    """The C++ compiler to build with: $CXX, else the first of c++, g++, clang++ on PATH."""
    if os.environ.get("CXX"):
        return shutil.which(os.environ["CXX"])
    return next(filter(None, map(shutil.which, ("c++", "g++", "clang++"))), None)


def library_path(name: str, cxx: str) -> Path:
    """The cached library of kernel `name` built by `cxx`: its name hashes what makes it."""
    digest = hashlib.sha256()
    for part in (
        (SOURCE_DIR / f"{name}.cc").read_bytes(),
        " ".join(FLAGS).encode(),
        cxx.encode(),
        jaxlib.__version__.encode(),
        platform.machine().encode(),
    ):
        digest.update(part)
    return cache_dir() / f"{name}-{digest.hexdigest()[:16]}.so"


def build(name: str, cxx: str, destination: Path) -> None:
    """Compiles kernel `name` to `destination` (atomically), its sha256 recorded beside it;
    RuntimeError with the compiler's message if it fails."""
    destination.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    fd, partial = tempfile.mkstemp(suffix=".so", dir=destination.parent)
    os.close(fd)
    command = [
        cxx,
        *FLAGS,
        f"-I{jax.ffi.include_dir()}",
        str(SOURCE_DIR / f"{name}.cc"),
        "-o",
        partial,
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"building the {name} kernel failed ({' '.join(command)}):\n" + done.stderr[-2000:]
            )
        # The sha256 first, atomically: a library in place always has its record.
        record = Path(partial + ".sha256")
        record.write_text(hashlib.sha256(Path(partial).read_bytes()).hexdigest())
        os.replace(record, _record(destination))
        os.replace(partial, destination)
    finally:
        for leftover in (partial, partial + ".sha256"):
            if os.path.exists(leftover):
                os.remove(leftover)


def _record(library: Path) -> Path:
    return library.with_name(library.name + ".sha256")


def _verified(library: Path) -> bool:
    """Whether `library` holds the bytes whose sha256 was recorded when it was built."""
    try:
        return hashlib.sha256(library.read_bytes()).hexdigest() == _record(library).read_text()
    except OSError:
        return False


@functools.cache
def load(name: str) -> str | None:
    """Registers kernel `name` (one of `KERNELS`) for the CPU and returns its target name, or
    None (then `unavailable_reason(name)` says why). Builds it on first use, or again when the
    cached library's bytes differ from those built; once per process.
    """
    if name not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; kernels: {', '.join(KERNELS)}")
    if not enabled():
        _reasons[name] = f"{ENV_SWITCH}={os.environ[ENV_SWITCH]}"
        return None
    cxx = compiler()
    if cxx is None:
        _reasons[name] = "no C++ compiler found (set CXX, or install g++ or clang++)"
        return None
    path = library_path(name, cxx)
    if path.parent.exists() and path.parent.stat().st_mode & 0o022:  # Others could write there.
        _reasons[name] = (
            f"the kernel cache {path.parent} is group- or world-writable: its libraries are not "
            f"loaded and the XLA program is used (chmod go-w it, or set {CACHE_ENV})"
        )
        _log.warning("%s", _reasons[name])
        return None
    try:
        if not _verified(path):  # Absent, or not what was built: build it (again).
            build(name, cxx, path)
        if not _verified(path):
            raise OSError(f"{path} does not match the sha256 recorded when it was built")
        library = ctypes.cdll.LoadLibrary(str(path))
        handler = getattr(library, KERNELS[name])
    except (OSError, RuntimeError, AttributeError) as error:
        _reasons[name] = str(error)
        return None
    jax.ffi.register_ffi_target(target_name(name), jax.ffi.pycapsule(handler), platform="cpu")
    _libraries[name] = library
    return target_name(name)


def unavailable_reason(name: str) -> str | None:
    """Why `load(name)` returned None; None if it was not tried or succeeded."""
    return _reasons.get(name)
