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
if "ADAMLAB_KERNEL_CACHE" not in os.environ:
    os.environ["ADAMLAB_KERNEL_CACHE"] = tempfile.mkdtemp(prefix="adamlab-kernels-")
    atexit.register(shutil.rmtree, os.environ["ADAMLAB_KERNEL_CACHE"], ignore_errors=True)

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
from adamlab.training import xla_flags  # noqa: E402

xla_flags.use_eigen_convolutions()
