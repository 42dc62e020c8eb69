"""The optimizer factory: schedules, ours vs the optax twin, baselines, L2, frozen leaves, sweeps,
hyperparameter passing and errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from adamlab import optim
from adamlab.training import optimizers
from adamlab.training.optimizers import make_optimizer, optimizer_hparams

from helpers import assert_trees_equal


def _config(**overrides):
    config = ConfigDict(
        {
            "name": "adam",
            "implementation": "ours",
            "learning_rate": 1e-3,
            "schedule": "constant",
            "warmup_steps": 0,
            "b1": None,
            "b2": None,
            "eps": None,
            "weight_decay": None,
            "momentum": None,
            "nesterov": None,
            "l2": None,
        }
    )
    config.update(overrides)
    return config


def test_constant_schedule():
    _, schedule = make_optimizer(_config(learning_rate=3e-3), total_steps=100)
    for step in (0, 1, 50, 100, 1000):
        assert float(schedule(step)) == pytest.approx(3e-3)


def test_warmup_cosine_schedule_values():
    config = _config(learning_rate=1e-2, schedule="warmup_cosine", warmup_steps=10)
    _, schedule = make_optimizer(config, total_steps=110)
    expected = {
        0: 0.0,  # warmup starts at 0
        5: 5e-3,  # linear: half way
        10: 1e-2,  # peak at the end of the warmup
        60: 5e-3,  # cosine: half way through the 100 decay steps, 0.5 * (1 + cos(pi/2))
        35: 1e-2 * 0.5 * (1 + math.cos(math.pi * 25 / 100)),
        110: 0.0,  # decayed to 0 at total_steps
        200: 0.0,  # and stays there
    }
    for step, value in expected.items():
        assert float(schedule(step)) == pytest.approx(value, abs=1e-9), step


def test_warmup_constant_schedule_warms_up_then_stays_at_the_peak():
    """Schedule-Free's schedule: linear from 0 over warmup_steps (or warmup_fraction of the
    run), then the peak to the end; no decay."""
    config = _config(learning_rate=1e-2, schedule="warmup_constant", warmup_steps=10)
    _, schedule = make_optimizer(config, total_steps=110)
    for step, value in {0: 0.0, 5: 5e-3, 10: 1e-2, 60: 1e-2, 110: 1e-2, 1000: 1e-2}.items():
        assert float(schedule(step)) == pytest.approx(value, abs=1e-9), step
    config = _config(learning_rate=1e-2, schedule="warmup_constant", warmup_fraction=0.1)
    _, schedule = make_optimizer(config, total_steps=100)
    assert [float(schedule(s)) for s in (0, 5, 10, 99)] == pytest.approx([0, 5e-3, 1e-2, 1e-2])
    _, schedule = make_optimizer(_config(learning_rate=1e-2, schedule="warmup_constant"), 10)
    assert float(schedule(0)) == pytest.approx(1e-2)  # no warmup: the peak from the start


def test_warmup_cosine_without_warmup_starts_at_the_peak():
    config = _config(learning_rate=1e-2, schedule="warmup_cosine")
    _, schedule = make_optimizer(config, total_steps=10)
    assert float(schedule(0)) == pytest.approx(1e-2)
    assert float(schedule(5)) == pytest.approx(5e-3)


def test_inverse_sqrt_schedule_is_kingma_ba_alpha_over_sqrt_t():
    _, schedule = make_optimizer(_config(learning_rate=0.5, schedule="inverse_sqrt"), 100)
    for count in (0, 1, 3, 99):  # optax's count is 0-based: t = count + 1.
        assert float(schedule(count)) == pytest.approx(0.5 / math.sqrt(count + 1), rel=1e-6)


def _updates(tx, steps=3, params=None):
    params = params or {"w": jnp.array([1.0, -2.0, 3.0]), "b": jnp.array(0.5)}
    grads = {"w": jnp.array([0.1, -0.2, 0.05]), "b": jnp.array(-0.3)}
    state = tx.init(params)
    out = []
    for _ in range(steps):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        out.append(updates)
    return out, state


@pytest.mark.parametrize("name", ["adam", "adamw", "radam", "lion", "cautious_adamw"])
def test_implementation_switch_builds_ours_and_optax(name, monkeypatch):
    calls = []
    for function in ("create", "reference"):
        original = getattr(optim, function)

        def record(opt_name, _function=function, _original=original, **hparams):
            calls.append((_function, opt_name, hparams))
            return _original(opt_name, **hparams)

        monkeypatch.setattr(optim, function, record)

    config = _config(name=name, schedule="warmup_cosine", warmup_steps=2, b2=0.99)
    ours, schedule = make_optimizer(config, total_steps=20)
    theirs, _ = make_optimizer(_config(**dict(config, implementation="optax")), total_steps=20)
    assert [c[0] for c in calls] == ["create", "reference"]
    for _, opt_name, hparams in calls:
        assert opt_name == name
        assert hparams["learning_rate"] is not None and callable(hparams["learning_rate"])
        assert {k: v for k, v in hparams.items() if k != "learning_rate"} == {"b2": 0.99}
    # Same optimizer, two implementations: the same updates (ours is tested against optax in
    # depth in tests/test_optim_parity.py; here: the factory wires both the same way).
    ours_updates, _ = _updates(ours)
    theirs_updates, _ = _updates(theirs)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9),
        ours_updates,
        theirs_updates,
    )
    # The schedule drives the optimizer: step 0 of the warmup has learning rate 0.
    assert all(float(jnp.abs(u).max()) == 0.0 for u in jax.tree.leaves(ours_updates[0]))


def test_hparams_are_the_non_none_extra_fields():
    config = _config(b1=0.8, eps=None, weight_decay=None, eps_root=1e-12, l2=0.1)
    # l2 is the factory's own (a loss term), not a hyperparameter of the optimizer.
    assert optimizer_hparams(config) == {"b1": 0.8, "eps_root": 1e-12}
    tx, _ = make_optimizer(config, total_steps=5)
    assert isinstance(tx, optax.GradientTransformation)


def test_names_are_ours_then_the_optax_baselines():
    assert optimizers.names() == (*optim.names(), "sgd", "adagrad", "rmsprop")
    assert {"momentum", "nesterov"} <= set(optimizers.hyperparameters("sgd"))
    assert "b2" in optimizers.hyperparameters("adam")


@pytest.mark.parametrize(
    "name,fields,reference",
    [
        ("sgd", {"momentum": 0.9, "nesterov": True},
         lambda lr: optax.sgd(lr, momentum=0.9, nesterov=True)),
        ("adagrad", {}, lambda lr: optax.adagrad(lr)),
        ("rmsprop", {"momentum": 0.5}, lambda lr: optax.rmsprop(lr, momentum=0.5)),
    ],
)  # fmt: skip
def test_baselines_are_optax_with_the_config_hyperparameters(name, fields, reference):
    config = _config(name=name, implementation="optax", learning_rate=0.1, **fields)
    tx, schedule = make_optimizer(config, total_steps=10)
    actual, _ = _updates(tx)
    expected, _ = _updates(reference(schedule))
    assert_trees_equal(actual, expected)


def test_a_baseline_is_not_ours():
    with pytest.raises(ValueError, match="baseline from optax, not ours: set optimizer.impl"):
        make_optimizer(_config(name="sgd"), total_steps=10)


def test_l2_adds_l2_times_params_to_the_gradient():
    """Adam + L2 (in the loss), as opposed to AdamW's decoupled decay: Adam sees g + l2 * w."""
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    grads = {"w": jnp.array([-0.05, 0.1, 0.05])}  # + 0.1 * w flips the first two signs.
    with_l2, _ = make_optimizer(_config(l2=0.1), total_steps=10)
    plain, _ = make_optimizer(_config(), total_steps=10)
    updates, _ = with_l2.update(grads, with_l2.init(params), params)
    penalized = jax.tree.map(lambda g, w: g + 0.1 * w, grads, params)
    expected, _ = plain.update(penalized, plain.init(params), params)
    assert_trees_equal(updates, expected)
    assert not np.allclose(updates["w"], plain.update(grads, plain.init(params), params)[0]["w"])
    # l2 = 0 (or None) adds nothing, not even a transformation.
    assert jax.tree.structure(make_optimizer(_config(l2=0.0), 10)[0].init(params)) == (
        jax.tree.structure(plain.init(params))
    )


def test_frozen_leaves_get_zero_updates_and_no_optimizer_state():
    params = {"body": {"w": jnp.ones((5, 7))}, "head": {"w": jnp.array([1.0, -2.0, 3.0])}}
    grads = jax.tree.map(lambda p: 0.1 * p + 0.05, params)
    frozen, _ = make_optimizer(_config(), total_steps=10, frozen=("^body/",))
    plain, _ = make_optimizer(_config(), total_steps=10)
    state = frozen.init(params)
    updates, _ = frozen.update(grads, state, params)
    np.testing.assert_array_equal(updates["body"]["w"], 0.0)
    expected, _ = plain.update(grads, plain.init(params), params)
    np.testing.assert_array_equal(updates["head"]["w"], expected["head"]["w"])
    # Adam's moments exist for the head only: no [5, 7] array in the state.
    shapes = {np.shape(x) for x in jax.tree.leaves(state)}
    assert (3,) in shapes and (5, 7) not in shapes
    labels = optimizers.param_labels(frozen=["head"])(params)
    assert labels == {"body": {"w": "trained"}, "head": {"w": "frozen"}}


def test_swept_values_are_state_leaves():
    config = _config(schedule="warmup_cosine", warmup_steps=3)
    tx, _ = make_optimizer(config, 10, swept=("learning_rate", "b2"))
    run_tx = optimizers.with_values(tx, {"learning_rate": 0.25, "b2": 0.5})
    state = run_tx.init({"w": np.zeros(3, np.float32)})
    assert float(state.hyperparams["learning_rate"]) == 0.25
    assert float(state.hyperparams["b2"]) == 0.5
    assert optimizers.with_values(tx, {}) is tx  # Nothing swept: the tx itself.


@pytest.mark.parametrize("swept", ["learning_rate", "b2", "l2"])
def test_a_swept_optimizer_equals_the_plain_one_with_that_value(swept):
    value = {"learning_rate": 2.0**-6, "b2": 0.75, "l2": 0.125}[swept]  # Exact in float32.
    config = _config(schedule="warmup_cosine", warmup_steps=2, learning_rate=2.0**-5)
    tx, _ = make_optimizer(config, 10, swept=(swept,))
    plain, _ = make_optimizer(_config(**dict(config, **{swept: value})), 10)
    actual, _ = jax.jit(lambda: _updates(optimizers.with_values(tx, {swept: value}), 4))()
    expected, _ = jax.jit(lambda: _updates(plain, 4))()
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-6, atol=0), actual, expected)


def test_only_sweepable_hyperparameters_of_the_optimizer_can_be_swept():
    with pytest.raises(ValueError, match="weight_decay cannot be swept in one program for adam"):
        make_optimizer(_config(), 10, swept=("weight_decay",))
    with pytest.raises(ValueError, match="sweepable: optimizer.learning_rate"):
        make_optimizer(_config(), 10, swept=("schedule",))
    tx, _ = make_optimizer(_config(name="adamw"), 10, swept=("weight_decay",))
    assert optimizers.with_values(tx, {"weight_decay": 0.5}).init(jnp.zeros(2)) is not None


@pytest.mark.parametrize(
    "overrides,total_steps,match",
    [
        ({"name": "sgdx"}, 10, "optimizer.name='sgdx' is unknown; allowed: adam, adamw"),
        ({"name": "sgdx"}, 10, "sgd, adagrad, rmsprop"),
        (
            {"implementation": "torch"},
            10,
            "implementation='torch' is unknown; allowed: ours, optax",
        ),
        (
            {"schedule": "step"},
            10,
            "schedule='step' is unknown; allowed: constant, warmup_cosine, inverse_sqrt, "
            "warmup_constant",
        ),
        ({"learning_rate": 0.0}, 10, r"optimizer.learning_rate=0.0 must be in \(0, inf\)"),
        ({"learning_rate": float("nan")}, 10, r"learning_rate=nan must be in \(0, inf\)"),
        ({"schedule": "warmup_cosine", "warmup_steps": 11}, 10, "warmup_steps=11 must be <"),
        ({"schedule": "warmup_cosine", "warmup_steps": 10}, 10, "warmup_steps=10 must be <"),
        ({"schedule": "warmup_cosine", "warmup_steps": -1}, 10, "must be an int >= 0"),
        ({"warmup_steps": 5}, 10, "warmup_steps=5 needs schedule='warmup_cosine' or"),
        ({}, 0, "total_steps=0 must be an int >= 1"),
        ({"b1": 1.0}, 10, "b1"),  # range checks of adamlab.optim surface through the factory
        ({"threshold": 5.0}, 10, "unknown hyperparameter"),  # radam's, not adam's
        ({"l2": -1.0}, 10, r"optimizer.l2=-1.0 must be in \[0, inf\)"),
        (  # A baseline that does not take a field names it and what it takes.
            {"name": "sgd", "implementation": "optax", "b1": 0.9},
            10,
            r"sgd got unknown hyperparameter\(s\) b1; it accepts: learning_rate, momentum",
        ),
        ({"implementation": "optax", "convention": "pytorch"}, 10, "exists for ours only"),
        (  # optax has SOAP only as an open pull request: no twin
            {"name": "soap", "implementation": "optax"},
            10,
            r"optimizer.implementation='optax' does not exist for 'soap': optax does not",
        ),
    ],
)
def test_bad_config_is_a_clear_error(overrides, total_steps, match):
    with pytest.raises(ValueError, match=match):
        make_optimizer(_config(**overrides), total_steps)
