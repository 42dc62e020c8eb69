"""`optim.update_and_apply`: the Adam(W) / Nadam(W) step in one pass on the C++ CPU kernel.

The kernel must compute what ``tx.update`` + ``optax.apply_updates`` compute for the same
fused transformation: 500 steps of the harness of test_optim_fused.py (gradients that depend
on the params, so any difference feeds back), params within 1e-6 relative and moments within
1e-5 of the two-call program, the same state tree, the same counts. Why these bounds: the
kernel performs the same float32 operations in the same order, so a step differs only where
XLA divides, takes the root or contracts a multiply-add differently, by a rounding or two
(the first-step test), and those differences feed back through the gradients as in
test_optim_fused.py (measured after 500 steps: params <= 1.7e-7, moments <= 1.2e-6). Also:
the kernel really runs (its custom call is in the program), it updates in place, vmap and
pmap give each member's own step, and wherever it does not apply (other dtypes, other
optimizers, no compiler) the result is the two calls, bit for bit.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_optim_fused import _grad, _max_relative_error, _params

from adamlab import optim
from adamlab.optim import native, one_pass

from helpers import child_json

LR = 1e-2
STEPS = 500
TARGET = native.target_name(one_pass.KERNEL)

needs_kernel = pytest.mark.skipif(
    native.compiler() is None or not native.enabled(),
    reason="no C++ compiler to build the kernel (or ADAMLAB_NATIVE_KERNELS=0)",
)

CASES = {
    "adam": lambda: optim.adam(LR, fused=True),
    "adamw": lambda: optim.adamw(LR, weight_decay=1e-2, fused=True),
    "nadam": lambda: optim.nadam(LR, fused=True),
    "nadamw": lambda: optim.nadamw(LR, weight_decay=1e-2, fused=True),
    "adamw_schedules": lambda: optim.adamw(
        optax.warmup_cosine_decay_schedule(0.0, LR, 50, STEPS),
        weight_decay=optax.linear_schedule(1e-2, 1e-3, STEPS),
        eps_root=1e-12,
        fused=True,
    ),
}


def _two_calls(tx, params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state


def _train(step_fn, params, steps=STEPS):
    def body(carry, step):
        params, state = carry
        return step_fn(params, state, _grad(params, step)), None

    def run(params, state):
        return jax.lax.scan(body, (params, state), jnp.arange(steps))[0]

    return jax.jit(run)


def _program(tx, params) -> str:
    step = jax.jit(lambda p, s, g: one_pass.update_and_apply(tx, g, s, p))
    return step.lower(params, tx.init(params), params).as_text()


@needs_kernel
@pytest.mark.parametrize("case", CASES)
def test_kernel_follows_update_and_apply_for_500_steps(case):
    tx = CASES[case]()
    assert one_pass.one_pass_of(tx) is not None
    assert TARGET in _program(tx, _params())
    params = _params()
    kernel = _train(lambda p, s, g: one_pass.update_and_apply(tx, g, s, p), params)
    reference = _train(functools.partial(_two_calls, tx), params)
    kernel_params, kernel_state = kernel(params, tx.init(params))
    reference_params, reference_state = reference(params, tx.init(params))
    assert jax.tree.structure(kernel_state) == jax.tree.structure(reference_state)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), kernel_state) == jax.tree.map(
        lambda x: (x.shape, x.dtype), reference_state
    )
    counts = [x for x in jax.tree.leaves(kernel_state) if x.dtype == jnp.int32]
    reference_counts = [x for x in jax.tree.leaves(reference_state) if x.dtype == jnp.int32]
    assert [int(c) for c in counts] == [int(c) for c in reference_counts]
    assert all(int(c) == STEPS for c in counts)
    assert _max_relative_error(kernel_params, reference_params) < 1e-6
    mu, nu = kernel_state[0].mu, kernel_state[0].nu
    assert _max_relative_error(mu, reference_state[0].mu) < 1e-5
    assert _max_relative_error(nu, reference_state[0].nu) < 1e-5
    # and the params moved: 500 steps of lr 1e-2 pull every coordinate towards 0.5
    assert _max_relative_error(kernel_params, params) > 0.1


@needs_kernel
@pytest.mark.parametrize("case", ["adam", "adamw", "nadam", "nadamw"])
def test_first_step_is_the_two_calls_step_to_a_rounding_or_two(case):
    """One step on 67k random parameters: where the two programs differ (XLA may divide, take
    the root or contract a multiply-add differently), by at most 3 float32 epsilons of the
    larger operand of p + update (measured: 1.1e-7 for Adam(W), 1.9e-7 for Nadam(W)); the
    moments bit for bit."""
    tx = CASES[case]()
    params = {
        "w": jax.random.normal(jax.random.key(0), (256, 257)),
        "b": jax.random.normal(jax.random.key(1), (1000,)),
    }
    grads = jax.tree.map(lambda x: jnp.sin(3 * x), params)
    kernel = jax.jit(lambda p, s, g: one_pass.update_and_apply(tx, g, s, p))
    new_params, state = kernel(params, tx.init(params), grads)
    expected_params, expected_state = jax.jit(functools.partial(_two_calls, tx))(
        params, tx.init(params), grads
    )
    jax.tree.map(np.testing.assert_array_equal, state, expected_state)
    leaves = map(jax.tree.leaves, (new_params, expected_params, params))
    for got, expected, old in zip(*leaves, strict=True):
        got, expected, old = (np.asarray(x, np.float64) for x in (got, expected, old))
        scale = np.maximum(np.abs(old), np.abs(expected - old))
        assert np.max(np.abs(got - expected) / scale) <= 3 * np.finfo(np.float32).eps


@needs_kernel
def test_updates_in_place_when_donated():
    """Params and moments donated: the compiled step allocates no buffer of their size."""
    tx = optim.adam(LR, fused=True)
    params = {"w": jnp.ones((512, 512)), "b": jnp.zeros(512)}
    state = tx.init(params)
    step = jax.jit(lambda p, s, g: one_pass.update_and_apply(tx, g, s, p), donate_argnums=(0, 1))
    compiled = step.lower(params, state, params).compile()
    assert TARGET in compiled.as_text()
    param_bytes = 4 * (512 * 512 + 512)
    assert compiled.memory_analysis().temp_size_in_bytes < param_bytes // 4
    new_params, new_state = step(params, state, jax.tree.map(jnp.ones_like, params))
    assert params["w"].is_deleted() and state[0].mu["w"].is_deleted()
    assert float(new_params["w"][0, 0]) == pytest.approx(1 - LR, rel=1e-6)


@needs_kernel
def test_vmap_and_pmap_give_each_member_its_own_step():
    """Members with different params, states and learning rates (a traced schedule value
    per member), under vmap and pmap (4 simulated devices): each member's one-pass step."""
    tx = optim.adam(lambda count: LR * (1.0 + count), fused=True)
    members = [jax.tree.map(lambda x, i=i: x + 0.1 * i, _params()) for i in range(4)]
    states = [tx.init(p) for p in members]
    # member i has taken i steps: its count, hence its learning rate and bias corrections, differ
    for i in range(4):
        for k in range(i):
            members[i], states[i] = _two_calls(tx, members[i], states[i], _grad(members[i], k))
    stack = functools.partial(jax.tree.map, lambda *xs: jnp.stack(xs))

    def step(params, state):
        return one_pass.update_and_apply(tx, _grad(params, 7), state, params)

    alone = stack(*[jax.jit(step)(p, s) for p, s in zip(members, states, strict=True)])
    batched = jax.jit(jax.vmap(step))(stack(*members), stack(*states))
    jax.tree.map(np.testing.assert_array_equal, batched, alone)
    assert TARGET in jax.jit(jax.vmap(step)).lower(stack(*members), stack(*states)).as_text()
    devices = jax.devices()[:4]
    if len(devices) == 4:
        mapped = jax.pmap(step, devices=devices)(stack(*members), stack(*states))
        jax.tree.map(np.testing.assert_array_equal, mapped, alone)


@pytest.mark.parametrize(
    "build",
    [
        lambda: optim.adam(LR),  # unfused
        lambda: optim.adam(LR, fused=True, mu_dtype=jnp.bfloat16),
        lambda: optim.nadam(LR, convention="paper"),
        lambda: optim.adamw(LR, fused=True, mask={"conv": True, "head": False}),
        lambda: optim.adam(LR, fused=True, convention="pytorch"),
        lambda: optim.amsgrad(LR, fused=True),
        lambda: optax.adam(LR),
    ],
)
def test_without_a_one_pass_step_it_is_the_two_calls(build):
    tx = build()
    assert one_pass.one_pass_of(tx) is None
    params = _params()
    grads = _grad(params, 0)
    got = one_pass.update_and_apply(tx, grads, tx.init(params), params)
    jax.tree.map(np.testing.assert_array_equal, got, _two_calls(tx, params, tx.init(params), grads))


def test_other_dtypes_take_the_two_calls():
    """bfloat16 params (mixed precision): no kernel, the two calls' numbers exactly."""
    tx = optim.adam(LR, fused=True)
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _params())
    grads = _grad(params, 0)
    assert TARGET not in _program(tx, params)
    got = one_pass.update_and_apply(tx, grads, tx.init(params), params)
    jax.tree.map(np.testing.assert_array_equal, got, _two_calls(tx, params, tx.init(params), grads))


def test_the_transformation_itself_is_unchanged():
    """`attach` adds the shortcut without changing tx.update: a fused Adam with the one-pass
    step gives bitwise the updates and state of the same chain without it."""
    tx = optim.adamw(LR, weight_decay=1e-2, fused=True)
    params = _params()
    grads = _grad(params, 0)
    with_step = tx.update(grads, tx.init(params), params)
    plain = optax.GradientTransformation(tx.init, lambda *a: tx.update(*a))
    assert one_pass.one_pass_of(plain) is None
    without = plain.update(grads, tx.init(params), params)
    jax.tree.map(np.testing.assert_array_equal, with_step, without)


def test_switch_and_missing_compiler_say_why(monkeypatch):
    load = native.load.__wrapped__  # uncached: each call decides afresh
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    assert load("adam_one_pass") is None
    assert native.unavailable_reason("adam_one_pass") == f"{native.ENV_SWITCH}=0"
    for value in ("off", "False", "no"):  # as every ADAMLAB_* switch
        monkeypatch.setenv(native.ENV_SWITCH, value)
        assert load("adam_one_pass") is None
        assert native.unavailable_reason("adam_one_pass") == f"{native.ENV_SWITCH}={value}"
    monkeypatch.delenv(native.ENV_SWITCH)
    monkeypatch.setenv("CXX", "no-such-compiler-anywhere")
    assert load("adam_one_pass") is None
    assert "no C++ compiler" in native.unavailable_reason("adam_one_pass")
    with pytest.raises(ValueError, match="unknown kernel 'adam'; kernels: adam_one_pass"):
        load("adam")


@needs_kernel
def test_a_failed_build_says_why_and_leaves_no_library(tmp_path, monkeypatch):
    sources = tmp_path / "kernels"
    sources.mkdir()
    (sources / "adam_one_pass.cc").write_text("this is not C++\n")
    monkeypatch.setattr(native, "SOURCE_DIR", sources)
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path / "cache"))
    assert native.load.__wrapped__("adam_one_pass") is None
    reason = native.unavailable_reason("adam_one_pass")
    assert "building the adam_one_pass kernel failed" in reason and "error" in reason
    assert list((tmp_path / "cache").iterdir()) == []  # the partial output was removed


@needs_kernel
def test_the_library_is_built_once_and_named_by_what_makes_it(tmp_path, monkeypatch):
    """A fresh process builds into the cache; the next reuses the file; another source
    gets another name."""
    env = {**os.environ, native.CACHE_ENV: str(tmp_path)}
    code = (
        "import json; from adamlab.optim import native; "
        "print(json.dumps({'target': native.load('adam_one_pass')}))"
    )
    assert child_json(code, env=env) == {"target": TARGET}
    (built,) = tmp_path.glob("*.so")
    files = sorted(tmp_path.iterdir())
    assert files == [built, built.with_name(built.name + ".sha256")]  # its recorded sha256
    first_build = built.stat().st_mtime_ns
    assert child_json(code, env=env) == {"target": TARGET}
    assert sorted(tmp_path.iterdir()) == files and built.stat().st_mtime_ns == first_build
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path))
    cxx = native.compiler()
    assert native.library_path("adam_one_pass", cxx) == built
    sources = tmp_path / "other"
    sources.mkdir()
    (sources / "adam_one_pass.cc").write_text("// another kernel\n")
    monkeypatch.setattr(native, "SOURCE_DIR", sources)
    assert native.library_path("adam_one_pass", cxx) != built
