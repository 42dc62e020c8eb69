"""What the `adamlab` command sets on its own process: how it runs, never what it computes.

Convolutions on Eigen's threads, glibc keeping freed memory, the garbage collector kept off
the libraries' objects, jax's persistent compilation cache and the decoded-data cache, each
with an ``ADAMLAB_*`` switch (`adamlab.switches`); and `process_age`. `cli.main` applies the
first two in whatever process runs it, `cli.console` (the `adamlab` command, which owns its
process) all of them. docs/performance.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import importlib.metadata
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

from adamlab import switches

CONV_SWITCH = "ADAMLAB_EIGEN_CONVOLUTIONS"
MEMORY_SWITCH = "ADAMLAB_KEEP_FREED_MEMORY"
GC_SWITCH = "ADAMLAB_GC_FREEZE"
CACHE_SWITCH = "ADAMLAB_COMPILATION_CACHE"
CACHE_DIR_ENV = "ADAMLAB_COMPILATION_CACHE_DIR"
# adamlab.data.decoded's; not imported from there (TensorFlow would come with the package).
DATA_CACHE_SWITCH = "ADAMLAB_DATA_CACHE"
DATA_CACHE_DIR_ENV = "ADAMLAB_DATA_CACHE_DIR"

_log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------- convolutions

CONV_FLAG_NAME = "xla_cpu_experimental_ynn_fusion_type"
CONV_FLAG = f"--{CONV_FLAG_NAME}=-individual_convolution"
# The first jaxlib it was measured on; older XLAs may not know the flag, and abort on it.
MIN_JAXLIB = (0, 10)


def _release(version: str) -> tuple[int, ...]:
    """(major, minor) of a version string such as "0.10.2" or "0.10.2.dev20260101"."""
    digits = ("".join(c for c in part if c.isdigit()) for part in version.split(".")[:2])
    return tuple(int(d) if d else 0 for d in digits)


def jaxlib_knows_flag() -> bool:
    """True when the installed jaxlib is one the flag was measured on (>= `MIN_JAXLIB`)."""
    try:
        return _release(importlib.metadata.version("jaxlib")) >= MIN_JAXLIB
    except importlib.metadata.PackageNotFoundError:
        return False


def backends_started() -> bool:
    """True once jax has created its backends (it reads XLA_FLAGS then, once per process)."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge
    except ImportError:  # jax moved it: assume the worst, change nothing
        return True
    started = getattr(xla_bridge, "backends_are_initialized", None)
    return True if started is None else bool(started())


def use_eigen_convolutions() -> bool:
    """Add `CONV_FLAG` to XLA_FLAGS; True if added now or by an earlier call.

    It adds nothing once jax's backends have started (too late), when XLA_FLAGS already names
    the flag (the user's choice wins), on a jaxlib older than `MIN_JAXLIB`, or when
    ``ADAMLAB_EIGEN_CONVOLUTIONS`` is off. GPUs and TPUs do not read it.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if CONV_FLAG in flags.split():
        return True
    theirs = switches.switched_off(CONV_SWITCH) or CONV_FLAG_NAME in flags
    if theirs or backends_started() or not jaxlib_knows_flag():
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {CONV_FLAG}".strip()
    return True


# ---------------------------------------------------------------------------- host memory

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4  # glibc's mallopt(3) parameters
# The largest trim threshold mallopt accepts as an int: freed heap memory up to 2 GiB stays mapped.
_KEEP_BYTES = 2**31 - 1
# Twice a thread arena's heap (64 MiB on 64-bit glibc): glibc unmaps a wholly free heap whatever
# the trim threshold unless the top pad is at least a heap's size, and XLA:CPU's calls run on
# worker threads. Address space reserved as a heap grows, not memory, until it is touched.
_TOP_PAD_BYTES = 128 << 20


def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (it has `mallopt` and `gnu_get_libc_version`)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version")):
        return None
    return libc


def keep_freed_memory() -> bool:
    """Serve every block from glibc's heap and keep what is freed there; True if it now does.

    XLA:CPU mallocs and frees every call's buffers, under glibc's defaults fresh zero-filled
    `mmap` pages on every call. Safe to call at any time; False where the C library is not
    glibc or ``ADAMLAB_KEEP_FREED_MEMORY`` is off.
    """
    if switches.switched_off(MEMORY_SWITCH):
        return False
    libc = _glibc()
    if libc is None:
        return False
    return all(
        libc.mallopt(param, value)
        for param, value in (
            (_M_MMAP_MAX, 0),
            (_M_TRIM_THRESHOLD, _KEEP_BYTES),
            (_M_TOP_PAD, _TOP_PAD_BYTES),
        )
    )


# ---------------------------------------------------------------------------- garbage collector

# Whether `pause_collector` turned the collector off (and `resume_collector` turns it back on).
_paused = False


def pause_collector() -> bool:
    """Turn the collector off while libraries import; True if this call did."""
    global _paused
    if switches.switched_off(GC_SWITCH) or not gc.isenabled():
        return False
    gc.disable()
    _paused = True
    return True


def resume_collector() -> bool:
    """After `pause_collector`: freeze every object that exists now (the libraries' and their
    import's garbage) and turn the collector back on; a no-op (False) otherwise, so that a
    library user's process is left alone."""
    global _paused
    if not _paused:
        return False
    gc.freeze()
    gc.enable()
    _paused = False
    return True


def freeze_before_exit() -> bool:
    """Freeze every object, so the interpreter's exit does not walk them; True if it did.

    Objects are still freed by reference counting and `atexit` handlers still run."""
    if switches.switched_off(GC_SWITCH):
        return False
    gc.freeze()
    return True


# ---------------------------------------------------------------------------- compilation cache

# Every program is written, the sub-second ones too (jax's default keeps only those that
# compiled for 1 s or more): reading one back costs less than compiling it.
MIN_COMPILE_SECS = 0.0
# Less free space than this counts as full (the 18 programs of a digits run take 0.3 MB).
MIN_FREE_BYTES = 64 << 20
_CACHE_ERROR = re.compile(r"Error (reading|writing) persistent compilation cache")


def compilation_cache_dir() -> Path:
    """$ADAMLAB_COMPILATION_CACHE_DIR, else $XDG_CACHE_HOME/adamlab/jax, else
    ~/.cache/adamlab/jax."""
    return _cache_dir(CACHE_DIR_ENV, "jax")


def data_cache_dir() -> Path:
    """$ADAMLAB_DATA_CACHE_DIR, else $XDG_CACHE_HOME/adamlab/data, else ~/.cache/adamlab/data."""
    return _cache_dir(DATA_CACHE_DIR_ENV, "data")


def _cache_dir(variable: str, name: str) -> Path:
    if os.environ.get(variable):
        return Path(os.environ[variable])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "adamlab" / name


def _usable_cache(what: str, where, instead: str) -> Path | None:
    """`where()`, made if need be, or None (with one warning line) where it cannot be used."""
    try:
        path = where()
    except RuntimeError as e:  # Path.home(): no home directory
        path, why = "~/.cache", str(e)
    else:
        why = _unusable(path)
    if why is not None:
        _log.warning("%s off: %s: %s; %s", what, path, why, instead)
        return None
    return path


def _unusable(path: Path) -> str | None:
    """Why `path` cannot hold the cache, or None. jax runs what it reads there: it must be
    this user's alone."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.stat()
        if info.st_uid != os.geteuid():
            return "owned by another user"
        if info.st_mode & 0o022:
            return "writable by others"
        fd, probe = tempfile.mkstemp(dir=path)  # Read-only, whatever the mode says?
        os.close(fd)
        os.unlink(probe)
        if shutil.disk_usage(path).free < MIN_FREE_BYTES:
            return "full"
    except OSError as e:
        return f"not writable ({e.strerror or e})"
    return None


def use_compilation_cache() -> Path | None:
    """Turn on jax's persistent compilation cache in `compilation_cache_dir()`, before jax is
    imported (it reads its settings then); that directory, or None where it stays off
    (``ADAMLAB_COMPILATION_CACHE`` off, the user's own JAX_COMPILATION_CACHE_DIR, or an
    unusable directory). The first entry jax fails to read or write turns it off for the rest
    of the process (docs/performance.md).
    """
    if switches.switched_off(CACHE_SWITCH) or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    path = _usable_cache("compilation cache", compilation_cache_dir, "compiling without it")
    if path is None or "jax" in sys.modules:  # Too late: jax has read its settings.
        return None
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(path)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", str(MIN_COMPILE_SECS))
    show = warnings.showwarning

    def showwarning(message, category, *args, **kwargs):
        """jax warns on each entry it cannot read or write, and compiles it: the first such
        warning turns the cache off, in one line; the others are not shown."""
        if not _CACHE_ERROR.match(str(message)):
            return show(message, category, *args, **kwargs)
        import jax
        from jax.experimental.compilation_cache import compilation_cache

        if jax.config.jax_enable_compilation_cache:
            jax.config.update("jax_enable_compilation_cache", False)
            compilation_cache.reset_cache()
            why = str(message).splitlines()[0]
            _log.warning("compilation cache off: %s: %s; compiling without it", path, why)

    warnings.showwarning = showwarning
    return path


def use_data_cache() -> Path | None:
    """Keep decoded TFDS splits in `data_cache_dir()` across commands: sets
    $ADAMLAB_DATA_CACHE_DIR, which `adamlab.data.decoded` reads (this process and its
    children); that directory, or None where it stays off (``ADAMLAB_DATA_CACHE`` off or an
    unusable directory).
    """
    if switches.switched_off(DATA_CACHE_SWITCH):
        return None
    path = _usable_cache("data cache", data_cache_dir, "decoding the data in each run")
    os.environ[DATA_CACHE_DIR_ENV] = "" if path is None else str(path)  # "": off
    return path


# ---------------------------------------------------------------------------- process age


def process_age() -> float:
    """Seconds since this process started, to 0.01 s; nan where /proc does not say (not Linux).

    /proc/self/stat's 22nd field is the start time in clock ticks after boot, /proc/uptime
    the seconds since boot: what came before the first line of Python (the interpreter, the
    imports) counts too, which no timer started in Python can see.
    """
    try:
        stat = Path("/proc/self/stat").read_text()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        # Fields 3 on follow the command name's closing parenthesis (a name may hold spaces).
        ticks = int(stat.rpartition(")")[2].split()[22 - 3])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return math.nan
