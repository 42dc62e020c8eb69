r"""Route XLA:CPU's convolutions to Eigen instead of YNNPACK, before jax starts.

Why: jaxlib 0.10.2 lowers convolutions on CPU to YNNPACK library calls, and the kernel gradient
of the default CNN's second convolution runs there as one single-threaded call (a jax profiler
trace of the train step at 28x28 batch 128 put it at 79 of ~125 ms per step, taken on the same
2-core machine when it ran slower). Eigen, XLA:CPU's other convolution library, splits it over
the intra-op threads. With ``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution``
(YNNPACK keeps the dots and whatever else it had) that step took 29.3-29.6 ms against 36.5-38.9
ms with YNNPACK's convolutions on a 2-core AMD EPYC, and PyTorch's eager step with its fused
Adam 36.3-38.0 ms in the same processes (`benchmarks/vs_pytorch.py --xla_convolutions`, 3
alternating pairs of processes, `benchmarks/results/xla_convolutions/`); the 8x8 batch-64 step
did not get slower. Convolutions inside a `lax.scan` stay slow either way (jax-ml/jax#12868: 35
ms per digits step either way, 2.0 as matmuls; `adamlab.training.cpu_conv` is still what the
engine uses there).

It changes which library computes a convolution, so the sums run in another order: CPU results
agree with YNNPACK's to float32 rounding, not bit for bit. GPUs and TPUs do not read the flag.

`use_eigen_convolutions()` adds the flag to ``XLA_FLAGS`` and returns True, unless

- jax's backends are already initialized (XLA read its flags then; too late to change),
- ``XLA_FLAGS`` already names ``xla_cpu_experimental_ynn_fusion_type`` (the user's choice wins),
- the installed jaxlib is older than 0.10 (where it was measured: an older XLA aborts on a flag
  it does not know), or
- ``ADAMLAB_EIGEN_CONVOLUTIONS=0`` is set in the environment (XLA's default, YNNPACK, then).

The `adamlab` command calls it first thing (it owns its process), as does the test session
(tests/conftest.py), so the suite computes what the command computes; a library user calls it
once before using jax, or sets the flag in ``XLA_FLAGS``.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys

from adamlab import switches

ENV_SWITCH = "ADAMLAB_EIGEN_CONVOLUTIONS"
FLAG_NAME = "xla_cpu_experimental_ynn_fusion_type"
FLAG = f"--{FLAG_NAME}=-individual_convolution"
# The first jaxlib it was measured on; older XLAs may not know the flag, and abort on it.
MIN_JAXLIB = (0, 10)


def switched_off() -> bool:
    """True when the environment asks for XLA's default (YNNPACK convolutions)."""
    return switches.switched_off(ENV_SWITCH)


def _release(version: str) -> tuple[int, ...]:
    """(major, minor) of a version string such as "0.10.2" or "0.10.2.dev20260101"."""
    parts = []
    for part in version.split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


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
    """Add `FLAG` to XLA_FLAGS where it is safe and wanted (module docstring); True if added
    now or already there from an earlier call."""
    flags = os.environ.get("XLA_FLAGS", "")
    if FLAG in flags.split():
        return True
    if switched_off() or FLAG_NAME in flags or backends_started() or not jaxlib_knows_flag():
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {FLAG}".strip()
    return True
