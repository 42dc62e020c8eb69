"""`fused=True`: the same optimizers with the bias corrections as scalar multiplications.

The fused variant must follow the unfused one within float32 rounding: 500 steps of every
fused optimizer and convention on a problem whose gradients depend on the parameters, with
the parameters within 1e-6 relative (norm of the difference over the norm, per leaf; the
moments within 1e-5, see the test). Why 1e-6: m * (1/c) and m / c differ by at most one
rounding (6e-8 relative), the update by a few of them; the moments are computed by the same
functions, so the difference only enters through the parameters (measured over these 16
cases: at most 6.9e-8 for the parameters, 4.4e-7 for the moments). It is also the same
transformation in every other respect: state, dtypes, jit/vmap/pmap, inject_hyperparams,
schedules, masks, a checkpoint that restores into the unfused optimizer, `adamlab train`.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from adamlab import optim
from adamlab.optim import registry

LR = 1e-2
STEPS = 500
CASES = [(name, convention) for name in optim.names() for convention in registry.entry(name).fused]


def _params():
    keys = jax.random.split(jax.random.key(0), 4)
    return {
        "conv": {"kernel": jax.random.normal(keys[0], (3, 3, 2, 4)), "bias": jnp.zeros(4)},
        "head": (jax.random.normal(keys[1], (16, 3)) * 0.1, jax.random.normal(keys[2], (3,))),
    }


def _grad(params, step):
    """A pull towards 0.5 per coordinate plus a deterministic oscillation: gradients that
    depend on the params, so that any difference between two optimizers feeds back through
    them. (No jax.random: threefry in every step of the scan triples the compile time.)"""

    def grad(p):
        phase = jnp.arange(p.size, dtype=p.dtype).reshape(p.shape) * 1.618
        return (p - 0.5) + 0.3 * jnp.sin(0.37 * jnp.asarray(step, p.dtype) + phase)

    return jax.tree.map(grad, params)


def _train(tx, params, steps=STEPS):
    """`steps` steps in one compiled scan; returns (params, state)."""

    def body(carry, step):
        params, state = carry
        updates, state = tx.update(_grad(params, step), state, params)
        return (optax.apply_updates(params, updates), state), None

    (params, state), _ = jax.jit(lambda p: jax.lax.scan(body, (p, tx.init(p)), jnp.arange(steps)))(
        params
    )
    return params, state


def _max_relative_error(actual, expected) -> float:
    def error(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)

    return max(jax.tree.leaves(jax.tree.map(error, actual, expected)), default=0.0)


@pytest.mark.parametrize("name,convention", CASES)
def test_fused_follows_unfused_for_500_steps(name, convention):
    hparams = {"learning_rate": LR, "convention": convention}
    unfused_params, unfused_state = _train(optim.create(name, **hparams), _params())
    fused_params, fused_state = _train(optim.create(name, fused=True, **hparams), _params())
    assert jax.tree.structure(fused_state) == jax.tree.structure(unfused_state)
    error = _max_relative_error(fused_params, unfused_params)
    assert error < 1e-6, (name, convention, error)
    # The moments too (count, mu, nu, nu_max), leaf by leaf, within 1e-5: m_t averages
    # gradients that shrink towards their noise as the params converge, so its relative error
    # is that of the params amplified by the cancellation (measured up to 4.4e-7).
    assert _max_relative_error(fused_state, unfused_state) < 1e-5, (name, convention)
    # and the run did move: 500 steps of lr 1e-2 towards 0.5.
    assert abs(float(fused_params["conv"]["bias"][0]) - 0.5) < 0.2


def test_fused_is_not_the_unfused_program():
    """Guards the point of the variant: it does change the computation (fewer divisions)."""
    params = _params()

    def divisions(tx):
        def step(params, state, grads):
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        hlo = jax.jit(step).lower(params, tx.init(params), params).as_text(dialect="hlo")
        return len(re.findall(r"= f32\[\d[^\]]*\]\S* divide\(", hlo))  # not of scalars

    leaves = len(jax.tree.leaves(params))
    assert divisions(optim.adam(LR)) == 3 * leaves
    assert divisions(optim.adam(LR, fused=True)) == leaves


def test_first_step_is_minus_lr_sign_of_the_gradient():
    """With eps -> 0, Adam's first update is -lr * sign(g) (Kingma & Ba, Section 2.1), as
    unfused."""
    tx = optim.adam(1e-3, eps=0.0, fused=True)
    params = jnp.array([1.0, -2.0, 3.0])
    grads = jnp.array([0.5, -4.0, 1e-3])
    updates, _ = tx.update(grads, tx.init(params), params)
    unfused, _ = optim.adam(1e-3, eps=0.0).update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates, unfused, rtol=1e-6)
    # Not closer than 7e-6: optax's float32 1 - b2 is 1.3e-5 (relative) too small, and the
    # step is 1 / sqrt of it (numerics.one_minus_power).
    np.testing.assert_allclose(updates, -1e-3 * np.sign(grads), rtol=1e-5)


def test_schedules_masks_and_multi_transform():
    """A schedule, AdamW's weight-decay mask, optax.masked and multi_transform: fused and
    unfused agree after 500 steps."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, LR, 50, STEPS)
    no_bias = lambda params: jax.tree.map(lambda x: x.ndim > 1, params)  # noqa: E731

    def build(fused_):
        adamw = optim.adamw(schedule, weight_decay=1e-2, mask=no_bias, fused=fused_)
        labels = {"conv": "adamw", "head": ("nadam", "frozen")}
        return optax.chain(
            optax.masked(optim.amsgrad(LR, fused=fused_), {"conv": False, "head": True}),
            optax.multi_transform(
                {
                    "adamw": adamw,
                    "nadam": optim.nadam(LR, fused=fused_),
                    "frozen": optax.set_to_zero(),
                },
                labels,
            ),
        )

    fused_params, fused_state = _train(build(True), _params())
    unfused_params, unfused_state = _train(build(False), _params())
    assert jax.tree.structure(fused_state) == jax.tree.structure(unfused_state)
    assert _max_relative_error(fused_params, unfused_params) < 1e-6
    np.testing.assert_array_equal(fused_params["head"][1], _params()["head"][1])  # frozen


def test_inject_hyperparams():
    """Injected (float32 array) hyperparameters give the numbers of the constants; `fused`
    is a bool and stays static."""
    injected = optim.inject_hyperparams(optim.adamw)(
        learning_rate=LR, b2=0.99, weight_decay=1e-3, fused=True
    )
    constant = optim.adamw(LR, b2=0.99, weight_decay=1e-3, fused=True)
    injected_params, state = _train(injected, _params(), steps=100)
    constant_params, _ = _train(constant, _params(), steps=100)
    assert state.hyperparams["b2"].dtype == jnp.float32
    assert "fused" not in state.hyperparams
    assert _max_relative_error(injected_params, constant_params) < 1e-6


def test_vmap_and_pmap_equal_one_run_at_a_time():
    """Members stacked on a leading axis, under vmap and under pmap (4 simulated devices),
    step for step as each member alone."""
    tx = optim.nadamw(LR, fused=True)
    members = [jax.tree.map(lambda x, i=i: x + 0.1 * i, _params()) for i in range(4)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *members)

    def step(params, state, step):
        updates, state = tx.update(_grad(params, step), state, params)
        return optax.apply_updates(params, updates), state

    alone = [jax.jit(step)(p, tx.init(p), 0) for p in members]
    alone = jax.tree.map(lambda *xs: np.stack(xs), *alone)
    # Batched and alone are different XLA programs, which may contract a multiply-add
    # differently: a rounding or two of the params (~0.1, ulp 7e-9) apart.
    same = functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-8)
    batched = jax.jit(jax.vmap(step, in_axes=(0, 0, None)))(stacked, jax.vmap(tx.init)(stacked), 0)
    jax.tree.map(same, batched, alone)
    devices = jax.devices()[:4]
    if len(devices) == 4:
        mapped = jax.pmap(step, in_axes=(0, 0, None), devices=devices)(
            stacked, jax.vmap(tx.init)(stacked), 0
        )
        jax.tree.map(same, mapped, alone)


@pytest.mark.parametrize("mu_dtype", [None, jnp.bfloat16])
def test_dtypes_are_preserved(mu_dtype):
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _params())
    tx = optim.adam(LR, mu_dtype=mu_dtype, fused=True)
    unfused = optim.adam(LR, mu_dtype=mu_dtype)
    new_params, state = _train(tx, params, steps=20)
    unfused_params, unfused_state = _train(unfused, params, steps=20)
    assert jax.tree.map(lambda x: x.dtype, (new_params, state)) == jax.tree.map(
        lambda x: x.dtype, (unfused_params, unfused_state)
    )
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(new_params))


def test_float16_zero_gradients_stay_finite():
    """optax #1754 as unfused: eps underflows in float16; the denominator is float32."""
    params = {"w": jnp.ones(4, jnp.float16)}
    grads = {"w": jnp.array([0.0, 0.0, 0.5, -0.5], jnp.float16)}
    for name in [n for n in optim.names() if registry.entry(n).fused]:
        tx = optim.create(name, learning_rate=LR, fused=True)
        state = tx.init(params)
        for _ in range(3):
            updates, state = tx.update(grads, state, params)
        assert np.all(np.isfinite(np.asarray(updates["w"], np.float32))), name
        assert updates["w"].dtype == jnp.float16


def test_checkpoint_restores_into_the_unfused_optimizer(tmp_path):
    """The state is the unfused one: save the fused state with orbax, restore it as the
    unfused optimizer's, continue with either and get the same numbers."""
    fused_tx, unfused_tx = optim.adam(LR, fused=True), optim.adam(LR)
    params, state = _train(fused_tx, _params(), steps=10)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "state", state)
        checkpointer.wait_until_finished()
        restored = checkpointer.restore(tmp_path / "state", unfused_tx.init(params))
    jax.tree.map(np.testing.assert_array_equal, restored, state)
    grads = _grad(params, 10)
    fused_updates, _ = fused_tx.update(grads, restored, params)
    unfused_updates, _ = unfused_tx.update(grads, restored, params)
    assert _max_relative_error(fused_updates, unfused_updates) < 1e-6


def test_errors_name_what_exists():
    with pytest.raises(ValueError, match="radam: fused=True does not exist"):
        optim.create("radam", learning_rate=LR, fused=True)
    with pytest.raises(ValueError, match="nadam: fused=True exists for convention 'optax'"):
        optim.nadam(LR, convention="pytorch", fused=True)
    with pytest.raises(ValueError, match="fused must be True or False"):
        optim.adam(LR, fused="yes")
    with pytest.raises(ValueError, match="no fused variant"):
        optim.reference("adam", learning_rate=LR, fused=True)
    assert "fused" in optim.hyperparameters("adam")
    optim.create("radam", learning_rate=LR, fused=False)  # the default is accepted everywhere


@pytest.mark.slow
def test_a_fused_training_run_gives_the_unfused_numbers(tmp_path):
    """`optimizer.fused=True` reaches `adamlab train`: 12 steps of configs/digits.py (shrunk)
    end with the unfused run's metrics, to float32 rounding."""
    from adamlab import config_dict
    from adamlab.training import train

    def metrics(fused_):
        config = config_dict.load_config("digits")
        config.model.features, config.model.dense_features = (8,), 16
        config.optimizer.fused = fused_
        config.optimizer.warmup_steps = 2
        config.train.update(
            batch_size=32, num_steps=12, log_every_steps=4, eval_every_steps=6,
            checkpoint_every_steps=6, progress_bar=False,
        )  # fmt: skip
        return train.train_and_evaluate(config, tmp_path / str(fused_))

    fused_metrics, unfused_metrics = metrics(True), metrics(False)
    timings = re.compile(r"per_sec|seconds|time|wall")
    numbers = {
        k: v for k, v in unfused_metrics.items() if isinstance(v, float) and not timings.search(k)
    }
    assert "test_loss" in numbers or "validation_loss" in numbers, sorted(unfused_metrics)
    for key, value in numbers.items():
        np.testing.assert_allclose(fused_metrics[key], value, rtol=1e-5, err_msg=key)
