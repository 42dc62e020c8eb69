"""Test-session setup: 4 simulated CPU devices and Eigen convolutions, set before jax starts.

Multi-device behaviour (pmap, NamedSharding) is tested on simulated CPU devices so that the
suite runs anywhere; single-device references use `jax.devices()[:1]`.
"""

import atexit
import importlib.util
import os
import pathlib
import shutil
import sys
import tempfile

_FLAG = "--xla_force_host_platform_device_count=4"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}".strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The C++ kernels (adamlab.optim.native) build into a directory of this session, not the
# user's cache: each test process builds them once (about 2 s).
# So does the compilation cache of the `adamlab` commands the tests start (this process compiles
# without one: a session reuses too few of its programs for writing them to pay). A cache named
# in ADAMLAB_COMPILATION_CACHE_DIR serves this process too, and later sessions: opt in, since the
# directory grows with every change.
# Decoded splits (adamlab.data.decoded) are kept in a directory of this session too.
_named_cache = "ADAMLAB_COMPILATION_CACHE_DIR" in os.environ
_SESSION_DIRS = (
    ("ADAMLAB_KERNEL_CACHE", "kernels"),
    ("ADAMLAB_COMPILATION_CACHE_DIR", "jax"),
    ("ADAMLAB_DATA_CACHE_DIR", "data"),
)
for name, prefix in _SESSION_DIRS:
    if name not in os.environ:
        os.environ[name] = tempfile.mkdtemp(prefix=f"adamlab-{prefix}-")
        atexit.register(shutil.rmtree, os.environ[name], ignore_errors=True)

# This checkout's configs/ as the package `adamlab.configs`: an editable install shared by
# several checkouts (worktrees) maps it to one of them, whose configs may need other code
# (run_io.check_resumable runs configs/digits.py on every resume).
_CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
_spec = importlib.util.spec_from_file_location(
    "adamlab.configs", _CONFIGS / "__init__.py", submodule_search_locations=[str(_CONFIGS)]
)
sys.modules["adamlab.configs"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sys.modules["adamlab.configs"])

# As the `adamlab` command does first thing: XLA:CPU's convolutions with Eigen, so that the suite
# computes what the command computes (in-process runs are compared with the command's).
from adamlab import runtime  # noqa: E402

runtime.use_eigen_convolutions()
if _named_cache:
    runtime.use_compilation_cache()
