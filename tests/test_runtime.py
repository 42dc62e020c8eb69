"""`adamlab.runtime`: what the `adamlab` command sets on its process, and what it leaves alone.

These settings are read once per process (XLA's flags, the allocator, the collector, jax's
cache), so what they do is checked in fresh child processes; what must leave a library user's
process untouched is checked here.
"""

import gc
import json
import math
import os
import subprocess
import sys
import time

import pytest

from adamlab import cli, runtime, switches

from helpers import child_json

# ---------------------------------------------------------------------------- convolutions
# XLA reads its flags when jax starts its backends: the compiled convolution and its kernel
# gradient are plain `convolution` ops with the flag, YNNPACK fusions without it, and both give
# the same numbers to float32 rounding.

needs_measured_jaxlib = pytest.mark.skipif(
    not runtime.jaxlib_knows_flag(), reason="jaxlib < 0.10: the flag is not set"
)

CONV_CHILD = r"""
import json, os, sys
from adamlab import runtime
added = runtime.use_eigen_convolutions()
import jax, jax.numpy as jnp, numpy as np

def loss(w, x):
    dims = ("NHWC", "HWIO", "NHWC")
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dims)
    return jnp.sum(jnp.tanh(y))

rng = np.random.default_rng(0)
x = jnp.asarray(rng.standard_normal((16, 14, 14, 32), np.float32))
w = jnp.asarray(0.1 * rng.standard_normal((3, 3, 32, 16), np.float32))
grad = jax.jit(jax.grad(loss))
hlo = grad.lower(w, x).compile().as_text()
# The program has no dots: its YNNPACK fusions, if any, are the convolutions.
ynn_convs = [l for l in hlo.splitlines() if '"__ynn_fusion"' in l]
print(json.dumps({"added": added, "xla_flags": os.environ.get("XLA_FLAGS", ""),
                  "ynn_convolutions": len(ynn_convs),
                  "plain_convolutions": hlo.count(" convolution("),
                  "grad": np.asarray(grad(w, x)).ravel().tolist()}))
"""


def _conv_child(**env) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", runtime.CONV_SWITCH)}
    return child_json(CONV_CHILD, env={**clean, "JAX_PLATFORMS": "cpu", **env})


@needs_measured_jaxlib
def test_the_flag_moves_convolutions_and_their_gradients_off_ynnpack_same_numbers():
    eigen = _conv_child()
    assert eigen["added"] is True and runtime.CONV_FLAG in eigen["xla_flags"].split()
    assert eigen["ynn_convolutions"] == 0
    # The kernel gradient of a conv is itself a convolution (XLA's transposed form).
    assert eigen["plain_convolutions"] >= 1

    ynnpack = _conv_child(**{runtime.CONV_SWITCH: "0"})
    assert ynnpack["added"] is False and ynnpack["xla_flags"] == ""
    assert ynnpack["ynn_convolutions"] >= 1, "this jaxlib no longer uses YNNPACK for convs"

    # Same sums in another order: each entry sums 3,136 products, so the two libraries differ
    # by float32 rounding of the largest entries (measured: 3.9e-7 of the largest; a wrong
    # convolution would differ by O(1)).
    a, b = eigen["grad"], ynnpack["grad"]
    assert len(a) == len(b) == 3 * 3 * 32 * 16
    largest = max(abs(y) for y in b)
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= 1e-5 * largest


@needs_measured_jaxlib
def test_a_users_own_choice_in_xla_flags_wins():
    own = f"--{runtime.CONV_FLAG_NAME}="  # YNNPACK off altogether: theirs, left as it is
    result = _conv_child(XLA_FLAGS=own)
    assert result["added"] is False
    assert result["xla_flags"] == own
    assert result["ynn_convolutions"] == 0


def test_after_jax_started_it_changes_nothing(monkeypatch):
    # This test session's backends are running (conftest set the flag before they started).
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
    import jax

    jax.devices()
    assert runtime.backends_started()
    assert runtime.use_eigen_convolutions() is False
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=4"


@pytest.fixture
def before_jax_starts(monkeypatch):
    """The state a fresh process is in: no XLA_FLAGS, no switch, backends not started, a
    jaxlib the flag was measured on."""
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv(runtime.CONV_SWITCH, raising=False)
    monkeypatch.setattr(runtime, "backends_started", lambda: False)
    monkeypatch.setattr(runtime, "jaxlib_knows_flag", lambda: True)
    return monkeypatch


def test_it_adds_the_flag_once_beside_the_users_other_flags(before_jax_starts):
    before_jax_starts.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    assert runtime.use_eigen_convolutions() is True
    assert runtime.use_eigen_convolutions() is True  # Again: already there, not repeated.
    assert os.environ["XLA_FLAGS"].split() == [
        "--xla_force_host_platform_device_count=2",
        runtime.CONV_FLAG,
    ]


@pytest.mark.parametrize("value", ["0", "off", "False"])
def test_the_convolution_switch_turns_it_off(before_jax_starts, value):
    before_jax_starts.setenv(runtime.CONV_SWITCH, value)
    assert switches.switched_off(runtime.CONV_SWITCH)
    assert runtime.use_eigen_convolutions() is False
    assert "XLA_FLAGS" not in os.environ


def test_an_older_jaxlib_is_left_alone(before_jax_starts):
    before_jax_starts.setattr(runtime, "jaxlib_knows_flag", lambda: False)
    assert runtime.use_eigen_convolutions() is False
    assert "XLA_FLAGS" not in os.environ


@pytest.mark.parametrize(
    "version, known",
    [("0.10.2", True), ("0.11.0.dev20270101", True), ("1.0", True), ("0.9.9", False)],
)
def test_only_jaxlibs_it_was_measured_on_or_newer_get_the_flag(monkeypatch, version, known):
    monkeypatch.setattr(runtime.importlib.metadata, "version", lambda name: version)
    assert runtime.jaxlib_knows_flag() is known


def test_the_command_sets_eigen_convolutions_first(monkeypatch):
    calls = []
    monkeypatch.setattr(runtime, "use_eigen_convolutions", lambda: calls.append(1) or True)
    assert cli.main(["adamlab", "--help"]) == cli.EXIT_OK
    assert calls == [1]


# ---------------------------------------------------------------------------- host memory
# A jitted convolution kernel gradient, as a patch matrix and a matmul, faults its buffers' pages
# in again on every call under glibc's defaults (13,000 faults per call); once freed memory is
# kept, it reuses them. A worker thread's arena keeps its freed heap too, instead of unmapping it.

glibc_only = pytest.mark.skipif(runtime._glibc() is None, reason="needs glibc's mallopt")

MEMORY_CHILD = r"""
import json, resource, sys
import jax, jax.numpy as jnp, numpy as np
from adamlab import runtime

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
kept = runtime.keep_freed_memory()
kept_faults, kept_y = faults_per_call()
print(json.dumps({"kept": kept, "default": default_faults, "after": kept_faults,
                  "same": bool(np.array_equal(default_y, kept_y))}))
"""


@glibc_only
def test_kept_memory_stops_the_page_faults_of_each_call_and_changes_no_result():
    result = child_json(MEMORY_CHILD)
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
from adamlab import runtime

kept = runtime.keep_freed_memory() if sys.argv[1] == "kept" else False
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
def test_the_memory_switch_turns_it_off(monkeypatch, value):
    monkeypatch.setenv(runtime.MEMORY_SWITCH, value)
    assert switches.switched_off(runtime.MEMORY_SWITCH)
    assert runtime.keep_freed_memory() is False


# ---------------------------------------------------------------------------- garbage collector

PAUSE_IMPORT_RESUME = r"""
import gc, json, weakref
from adamlab import runtime

paused = runtime.pause_collector()
off_while_importing = not gc.isenabled()
import adamlab.training.train  # jax, flax, optax, orbax, TensorFlow, TFDS
resumed = runtime.resume_collector()
frozen, walked = gc.get_freeze_count(), len(gc.get_objects())

class Node:
    pass

cycle = Node()
cycle.self = cycle
alive = weakref.ref(cycle)
del cycle
gc.collect()
print(json.dumps({
    "paused": paused, "off_while_importing": off_while_importing, "resumed": resumed,
    "enabled": gc.isenabled(), "frozen": frozen, "walked": walked,
    "resumed_again": runtime.resume_collector(), "new_cycle_collected": alive() is None,
}))
"""


def test_pause_import_resume_freezes_the_libraries_and_collects_what_comes_after():
    out = child_json(PAUSE_IMPORT_RESUME)
    assert out["paused"] and out["off_while_importing"] and out["resumed"], out
    assert out["enabled"], out
    # The libraries' objects are frozen (~370,000 measured); a collection walks only the rest.
    assert out["frozen"] > 100_000, out
    assert out["walked"] < out["frozen"] / 10, out
    assert out["new_cycle_collected"], out  # The collector works again on new objects.
    assert out["resumed_again"] is False, out  # Once per pause.


def test_resume_without_pause_leaves_a_library_users_process_alone():
    frozen = gc.get_freeze_count()
    assert runtime.resume_collector() is False
    assert gc.isenabled()
    assert gc.get_freeze_count() == frozen


@pytest.mark.parametrize("value", ["0", "off"])
def test_the_collector_switch_turns_it_off(monkeypatch, value):
    monkeypatch.setenv(runtime.GC_SWITCH, value)
    frozen = gc.get_freeze_count()
    assert switches.switched_off(runtime.GC_SWITCH)
    assert runtime.pause_collector() is False
    assert gc.isenabled()
    assert runtime.freeze_before_exit() is False
    assert gc.get_freeze_count() == frozen


CONSOLE_EXIT = r"""
import atexit, gc, json, os, sys
from adamlab import cli

# Registered first, so it runs after every other exit handler: what the interpreter then walks.
atexit.register(lambda: print(json.dumps(
    {"frozen": gc.get_freeze_count(), "walked": len(gc.get_objects()), "enabled": gc.isenabled(),
     "cache": os.environ.get("JAX_COMPILATION_CACHE_DIR")}
)))
main, kept = cli.main, []

def main_that_keeps_objects(argv):  # As a run does: objects made after the imports, alive at exit.
    code = main(argv)
    kept.extend([i] for i in range(20_000))  # Lists: tracked by the collector.
    return code

cli.main = main_that_keeps_objects
sys.argv = ["adamlab", "evaluate", "--workdir", sys.argv[1]]
cli.console()
"""


@pytest.mark.parametrize("switch", ["1", "0"])
def test_the_command_exits_with_mains_code_and_frozen_objects(tmp_path, switch):
    env = {**os.environ, runtime.GC_SWITCH: switch, runtime.CACHE_DIR_ENV: str(tmp_path / "c")}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    done = subprocess.run(
        [sys.executable, "-c", CONSOLE_EXIT, str(tmp_path / "no_run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr  # main's code: no run there.
    assert "is not a run workdir" in done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["enabled"], out
    assert out["cache"] == str(tmp_path / "c"), out  # The command's process: the cache is on.
    if switch == "1":  # Frozen at exit: the run's 20,000 objects too.
        assert out["frozen"] > 100_000 and out["walked"] < 1_000, out
    else:
        assert out["frozen"] == 0 and out["walked"] > 100_000, out


# ---------------------------------------------------------------------------- compilation cache


@pytest.fixture
def cache_env(monkeypatch, tmp_path):
    """A fresh process's environment for the cache: no jax cache setting, no adamlab switch,
    the cache under tmp_path/cache. `use_compilation_cache` must not set jax's config in this
    process (it would, jax being imported), so the tests that reach that far run children."""
    for name in (runtime.CACHE_SWITCH, runtime.CACHE_DIR_ENV, "JAX_COMPILATION_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(runtime.CACHE_DIR_ENV, str(tmp_path / "cache"))
    return monkeypatch


def test_the_cache_lives_in_the_users_cache_directory(monkeypatch, tmp_path):
    monkeypatch.delenv(runtime.CACHE_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert runtime.compilation_cache_dir() == tmp_path / "xdg" / "adamlab" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert runtime.compilation_cache_dir() == tmp_path / "home" / ".cache" / "adamlab" / "jax"
    monkeypatch.setenv(runtime.CACHE_DIR_ENV, str(tmp_path / "mine"))
    assert runtime.compilation_cache_dir() == tmp_path / "mine"


@pytest.mark.parametrize("env", [{runtime.CACHE_SWITCH: "off"}, {"JAX_COMPILATION_CACHE_DIR": "x"}])
def test_switched_off_or_set_by_the_user_it_changes_nothing(cache_env, tmp_path, env):
    for name, value in env.items():
        cache_env.setenv(name, value)
    before = dict(os.environ)
    assert runtime.use_compilation_cache() is None
    assert dict(os.environ) == before
    assert not (tmp_path / "cache").exists()


def _refused(caplog, path) -> str:
    """The one warning `use_compilation_cache` logged, having refused `path`."""
    with caplog.at_level("WARNING", logger=runtime.__name__):
        assert runtime.use_compilation_cache() is None
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"compilation cache off: {path}: ") and "compiling without it" in line
    assert "JAX_COMPILATION_CACHE_DIR" not in os.environ
    return line


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702])
def test_a_directory_others_can_write_is_refused(cache_env, caplog, tmp_path, mode):
    (tmp_path / "cache").mkdir(mode=0o700)
    (tmp_path / "cache").chmod(mode)  # jax would run what anyone put there
    assert "writable by others" in _refused(caplog, tmp_path / "cache")


@pytest.mark.parametrize(
    "read_only",
    [
        "/proc/self",  # a read-only file system: refused whoever runs the tests
        pytest.param(
            "chmod",
            marks=pytest.mark.skipif(os.geteuid() == 0, reason="root writes there anyway"),
        ),
    ],
)
def test_a_read_only_directory_is_refused(cache_env, caplog, tmp_path, read_only):
    path = tmp_path / "cache"
    if read_only == "chmod":
        path.mkdir(mode=0o500)
    else:
        path = read_only
        cache_env.setenv(runtime.CACHE_DIR_ENV, path)
    assert "not writable" in _refused(caplog, path)


def test_a_full_disk_is_refused(cache_env, caplog, tmp_path):
    usage = runtime.shutil.disk_usage(tmp_path)
    full = usage._replace(free=runtime.MIN_FREE_BYTES - 1)
    cache_env.setattr(runtime.shutil, "disk_usage", lambda path: full)
    assert "full" in _refused(caplog, tmp_path / "cache")


def test_no_home_directory_is_no_cache(cache_env, caplog):
    def no_home():
        raise RuntimeError("Could not determine home directory.")

    cache_env.setattr(runtime, "compilation_cache_dir", no_home)
    assert "home directory" in _refused(caplog, "~/.cache")


CACHE_CHILD = r"""
import io, json, os, sys
sys.stderr = io.StringIO()  # What the user would see: Python's warnings and log lines.
from adamlab import runtime
path = runtime.use_compilation_cache()
import jax, jax.numpy as jnp, numpy as np

if sys.argv[1:] == ["full"]:  # The disk fills up during the run: every write fails.
    from jax._src import lru_cache

    def put(self, key, value):
        raise OSError(28, "No space left on device")

    lru_cache.LRUCache.put = put
hits = []
jax.monitoring.register_event_listener(
    lambda name, **kw: hits.append(1) if name == "/jax/compilation_cache/cache_hits" else None
)
rng = np.random.default_rng(0)
x = jnp.asarray(rng.standard_normal((64, 64), np.float32))

@jax.jit
def f(x):  # Sub-second to compile: cached too.
    return jnp.tanh(x @ x.T).sum(0)

y = np.asarray(f(x)).tolist()
print(json.dumps({"path": path and str(path), "hits": len(hits), "y": y,
                  "stderr": sys.stderr.getvalue()}))
"""


def _cache_child(cache_dir, *args) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    return child_json(CACHE_CHILD, *args, env={**env, runtime.CACHE_DIR_ENV: str(cache_dir)})


def _entries(cache_dir) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in cache_dir.glob("*-cache")}


def test_a_second_process_reads_what_the_first_compiled(tmp_path):
    cache = tmp_path / "cache"
    first = _cache_child(cache)
    assert first["path"] == str(cache) and first["hits"] == 0, first
    assert cache.stat().st_mode & 0o777 == 0o700  # made for this user alone
    written = _entries(cache)
    assert any(name.startswith("jit_f-") for name in written), written
    second = _cache_child(cache)
    assert second["hits"] >= 1, second  # f, at least, and nothing compiled anew:
    assert _entries(cache) == written
    assert second["y"] == first["y"]  # bit for bit
    assert first["stderr"] == second["stderr"] == ""


def test_two_processes_filling_one_cache_at_once_both_run_and_leave_it_whole(tmp_path):
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env[runtime.CACHE_DIR_ENV] = str(cache)
    command = [sys.executable, "-c", CACHE_CHILD]
    both = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in "ab"]
    outs = [json.loads(p.communicate(timeout=120)[0].splitlines()[-1]) for p in both]
    assert [p.returncode for p in both] == [0, 0]
    assert outs[0]["y"] == outs[1]["y"]
    # jax writes an entry in place (no rename), so a process may read one half-written: it
    # then compiles, and says so in one line.
    assert all(len(out["stderr"].splitlines()) <= 1 for out in outs), outs
    after = _cache_child(cache)
    assert after["hits"] >= 1 and after["y"] == outs[0]["y"] and after["stderr"] == "", after


def test_corrupt_entries_are_compiled_anew_with_one_warning(tmp_path):
    cache = tmp_path / "cache"
    fresh = _cache_child(cache)
    for entry in cache.glob("*-cache"):
        entry.write_bytes(b"not an executable")
    out = _cache_child(cache)
    assert out["y"] == fresh["y"] and out["hits"] == 0, out
    lines = out["stderr"].splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"compilation cache off: {cache}: Error"), lines


def test_a_disk_that_fills_during_the_run_costs_one_warning(tmp_path):
    out = _cache_child(tmp_path / "cache", "full")
    lines = out["stderr"].splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0], lines
    assert out["y"] == _cache_child(tmp_path / "other")["y"]


def test_a_refused_directory_leaves_the_run_as_it_was(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    cache.chmod(0o777)
    out = _cache_child(cache)
    assert out["path"] is None and out["hits"] == 0
    assert (
        out["stderr"]
        == f"compilation cache off: {cache}: writable by others; compiling without it\n"
    )
    assert list(cache.iterdir()) == []
    cache.chmod(0o700)
    assert out["y"] == _cache_child(tmp_path / "other")["y"]


def test_main_leaves_a_library_users_jax_alone(cache_env, tmp_path):
    import jax

    before = (jax.config.jax_compilation_cache_dir, os.environ.get("JAX_COMPILATION_CACHE_DIR"))
    assert cli.main(["adamlab", "evaluate", f"--workdir={tmp_path / 'none'}"]) == cli.EXIT_USAGE
    after = (jax.config.jax_compilation_cache_dir, os.environ.get("JAX_COMPILATION_CACHE_DIR"))
    assert after == before
    assert not (tmp_path / "cache").exists()


# ---------------------------------------------------------------------------- process age


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux's /proc")
def test_the_process_age_counts_from_the_process_start_not_from_the_first_line():
    code = "import time; time.sleep(0.3); from adamlab import runtime; print(runtime.process_age())"
    launched = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    outside = time.monotonic() - launched
    # /proc counts in ticks of 0.01 s: the sleep, and at most the child's whole life.
    assert 0.3 <= float(done.stdout) <= outside + 0.02, (done.stdout, outside)


def test_where_proc_does_not_say_the_process_age_is_nan(monkeypatch):
    def missing(self):
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(runtime.Path, "read_text", missing)
    assert math.isnan(runtime.process_age())
