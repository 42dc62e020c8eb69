"""`xla_flags.use_eigen_convolutions`: XLA:CPU computes convolutions with Eigen, not YNNPACK.

XLA reads its flags once per process, when jax starts its backends, so what the flag does is
checked in fresh child processes: the compiled convolution and its kernel gradient are plain
`convolution` ops with the flag, YNNPACK fusions without it, and both give the same numbers to
float32 rounding.
"""

import os

import pytest

from adamlab import cli
from adamlab.training import xla_flags

from helpers import child_json

needs_measured_jaxlib = pytest.mark.skipif(
    not xla_flags.jaxlib_knows_flag(), reason="jaxlib < 0.10: the flag is not set"
)

CHILD = r"""
import json, os, sys
from adamlab.training import xla_flags
added = xla_flags.use_eigen_convolutions()
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


def _child(**env) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_flags.ENV_SWITCH)}
    return child_json(CHILD, env={**clean, "JAX_PLATFORMS": "cpu", **env})


@needs_measured_jaxlib
def test_the_flag_moves_convolutions_and_their_gradients_off_ynnpack_same_numbers():
    eigen = _child()
    assert eigen["added"] is True and xla_flags.FLAG in eigen["xla_flags"].split()
    assert eigen["ynn_convolutions"] == 0
    # The kernel gradient of a conv is itself a convolution (XLA's transposed form).
    assert eigen["plain_convolutions"] >= 1

    ynnpack = _child(**{xla_flags.ENV_SWITCH: "0"})
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
    own = f"--{xla_flags.FLAG_NAME}="  # YNNPACK off altogether: theirs, left as it is
    result = _child(XLA_FLAGS=own)
    assert result["added"] is False
    assert result["xla_flags"] == own
    assert result["ynn_convolutions"] == 0


def test_after_jax_started_it_changes_nothing(monkeypatch):
    # This test session's backends are running (conftest set the flag before they started).
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
    import jax

    jax.devices()
    assert xla_flags.backends_started()
    assert xla_flags.use_eigen_convolutions() is False
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=4"


@pytest.fixture
def before_jax_starts(monkeypatch):
    """The state a fresh process is in: no XLA_FLAGS, no switch, backends not started, a
    jaxlib the flag was measured on."""
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv(xla_flags.ENV_SWITCH, raising=False)
    monkeypatch.setattr(xla_flags, "backends_started", lambda: False)
    monkeypatch.setattr(xla_flags, "jaxlib_knows_flag", lambda: True)
    return monkeypatch


def test_it_adds_the_flag_once_beside_the_users_other_flags(before_jax_starts):
    before_jax_starts.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    assert xla_flags.use_eigen_convolutions() is True
    assert xla_flags.use_eigen_convolutions() is True  # Again: already there, not repeated.
    assert os.environ["XLA_FLAGS"].split() == [
        "--xla_force_host_platform_device_count=2",
        xla_flags.FLAG,
    ]


@pytest.mark.parametrize("value", ["0", "off", "False"])
def test_the_environment_switch_turns_it_off(before_jax_starts, value):
    before_jax_starts.setenv(xla_flags.ENV_SWITCH, value)
    assert xla_flags.switched_off()
    assert xla_flags.use_eigen_convolutions() is False
    assert "XLA_FLAGS" not in os.environ


def test_an_older_jaxlib_is_left_alone(before_jax_starts):
    before_jax_starts.setattr(xla_flags, "jaxlib_knows_flag", lambda: False)
    assert xla_flags.use_eigen_convolutions() is False
    assert "XLA_FLAGS" not in os.environ


@pytest.mark.parametrize(
    "version, known",
    [("0.10.2", True), ("0.11.0.dev20270101", True), ("1.0", True), ("0.9.9", False)],
)
def test_only_jaxlibs_it_was_measured_on_or_newer_get_the_flag(monkeypatch, version, known):
    monkeypatch.setattr(xla_flags.importlib.metadata, "version", lambda name: version)
    assert xla_flags.jaxlib_knows_flag() is known


def test_the_command_sets_it_first(monkeypatch):
    calls = []
    monkeypatch.setattr(xla_flags, "use_eigen_convolutions", lambda: calls.append(1) or True)
    assert cli.main(["adamlab", "--help"]) == cli.EXIT_OK
    assert calls == [1]
