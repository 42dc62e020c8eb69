"""Keep freed host memory in the process, so XLA:CPU's per-call buffers stop page-faulting.

Why: XLA:CPU allocates every call's temporary and output buffers with `malloc` and frees them
when the call ends. glibc serves large blocks (above 128 KiB, adaptively up to 32 MiB; always
above that) with fresh `mmap` pages and hands them back to the kernel on `free`, so each train
step faults its tens of MB of buffers in again, zero-filling every 4 KiB page: 13,000 page faults
per call of a convolution's kernel gradient as a 29 MB patch matrix and a matmul (58.7 ms, 24.3
ms without the faults); the default CNN's train step at 28x28 batch 128 on a 2-core CPU: 68 ms
with 15,500 faults per step, 51 ms with 64 (`benchmarks/host_memory.py`, default and kept in
alternating processes; the 8x8 step allocates nothing that large and is unchanged).

`keep_freed_memory()` switches glibc to serve every block from its heap (`M_MMAP_MAX` = 0) and
to keep what is freed there (`M_TRIM_THRESHOLD` raised), so the next step reuses the same
already-mapped pages. Threads other than the main one allocate from arenas of their own, made
of 64 MiB heaps, and glibc unmaps a heap that has become wholly free whatever the trim
threshold, unless the top pad (`M_TOP_PAD`) is at least a heap's size: it is set to two. XLA:CPU
runs a call on a worker thread, and before the pad 3 of 13 processes timing the train step at
28x28 batch 128 faulted 6,200 pages per step again (36-37 ms instead of 29); none of 16 with it.
The pad is address space reserved as a heap grows, not memory, until it is touched.

The cost is that the process keeps its peak heap until it exits, which is what a training
process does anyway. Allocations still succeed when the heap cannot grow: glibc falls back to
`mmap` then. It changes how the process allocates, not what it computes.

The `adamlab` command calls it before running any command (it owns its process); a library
user calls it once, before training. `ADAMLAB_KEEP_FREED_MEMORY=0` in the environment turns it
off. A no-op, returning False, where the C library is not glibc (macOS, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util

from adamlab import switches

ENV_SWITCH = "ADAMLAB_KEEP_FREED_MEMORY"

# glibc's mallopt(3) parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
# The largest trim threshold mallopt accepts as an int: freed heap memory up to 2 GiB stays mapped.
_KEEP_BYTES = 2**31 - 1
# Twice a thread arena's heap (64 MiB on 64-bit glibc): such a heap is then never unmapped.
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


def switched_off() -> bool:
    """True when the environment asks for the C library's default behaviour."""
    return switches.switched_off(ENV_SWITCH)


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (see the module docstring); True if it now does.

    Safe to call at any time and more than once; it affects allocations from then on.
    """
    if switched_off():
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
