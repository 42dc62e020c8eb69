"""`host_memory.keep_freed_memory`: XLA:CPU's per-call buffers stop page-faulting; same results.

The allocator setting is process-wide, so the measurement runs in a child process: a jitted
convolution kernel gradient, as a patch matrix and a matmul, faults its buffers' pages in again
on every call under glibc's defaults (13,000 faults per call); once freed memory is kept, it
reuses them. A worker thread's arena keeps its freed heap too, instead of unmapping it.
"""

import pytest

from adamlab.training import host_memory

from helpers import child_json

glibc_only = pytest.mark.skipif(host_memory._glibc() is None, reason="needs glibc's mallopt")

CHILD = r"""
import json, resource, sys
import jax, jax.numpy as jnp, numpy as np
from adamlab.training import host_memory

@jax.jit
def f(x, dy):  # A convolution's kernel gradient as a 29 MB patch matrix and one matmul.
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    p = jnp.concatenate([xp[:, i : i + 14, j : j + 14] for i in range(3) for j in range(3)], -1)
    return jax.lax.dot_general(p.reshape(-1, 288), dy.reshape(-1, 64), (((0,), (0,)), ((), ())))

rng = np.random.default_rng(0)
x = jnp.asarray(rng.standard_normal((128, 14, 14, 32), np.float32))
dy = jnp.asarray(rng.standard_normal((128, 14, 14, 64), np.float32))

def faults_per_call():
    for _ in range(3):  # Warm up: compile, and let the heap grow to its peak.
        f(x, dy).block_until_ready()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        y = f(x, dy).block_until_ready()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5, np.asarray(y)

default_faults, default_y = faults_per_call()
kept = host_memory.keep_freed_memory()
kept_faults, kept_y = faults_per_call()
print(json.dumps({"kept": kept, "default": default_faults, "after": kept_faults,
                  "same": bool(np.array_equal(default_y, kept_y))}))
"""


@glibc_only
def test_kept_memory_stops_the_page_faults_of_each_call_and_changes_no_result():
    result = child_json(CHILD)
    assert result["kept"] is True
    # The 29 MB patch matrix alone is 7,000 pages of 4 KiB, mapped (and faulted) on every call.
    assert result["default"] > 7000, result
    # Kept: 0-50 faults per call in most runs, up to ~2,700 in some (measured; the pages
    # then are not all XLA's); half the default is far above both.
    assert result["after"] < 0.5 * result["default"], result
    assert result["same"]


THREAD_CHILD = r"""
import json, resource, sys, threading
import numpy as np
from adamlab.training import host_memory

kept = host_memory.keep_freed_memory() if sys.argv[1] == "kept" else False
faults = []

def work():  # As XLA:CPU's worker threads do: allocate and free from a thread's own arena.
    held = np.ones(10 << 20, np.float32)  # 40 MiB kept: most of the arena's first 64 MiB heap
    for _ in range(6):  # so every 40 MiB block needs a second heap, wholly free after `del`
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = np.ones(10 << 20, np.float32)
        del block
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del held

thread = threading.Thread(target=work)
thread.start()
thread.join()
print(json.dumps({"kept": kept, "faults": faults}))
"""


def _thread_faults(setting: str) -> dict:
    return child_json(THREAD_CHILD, setting)


@glibc_only
def test_a_worker_thread_reuses_its_freed_heap_instead_of_faulting_it_in_again():
    default = _thread_faults("default")
    kept = _thread_faults("kept")
    assert kept["kept"] is True
    # glibc's default unmaps the wholly free second heap: every block faults in again (20
    # faults when the kernel backs it with 2 MiB pages, ~530 otherwise; 10,240 at 4 KiB).
    again = min(default["faults"][1:])
    assert again >= 10, default
    # Kept (with the top pad): only the first block faults; the heap stays for the next ones,
    # which together fault fewer pages than one block did under the default (measured: 0).
    assert sum(kept["faults"][1:]) < again, kept


@pytest.mark.parametrize("value", ["0", "off", "False"])
def test_the_environment_switch_turns_it_off(monkeypatch, value):
    monkeypatch.setenv(host_memory.ENV_SWITCH, value)
    assert host_memory.switched_off()
    assert host_memory.keep_freed_memory() is False
