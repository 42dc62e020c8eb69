"""Optimizer factory: schedule values, the ours/optax switch, hyperparameter passing, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from adamlab import optim
from adamlab.training.optimizer_factory import make_optimizer, optimizer_hparams


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


def test_warmup_cosine_without_warmup_starts_at_the_peak():
    config = _config(learning_rate=1e-2, schedule="warmup_cosine")
    _, schedule = make_optimizer(config, total_steps=10)
    assert float(schedule(0)) == pytest.approx(1e-2)
    assert float(schedule(5)) == pytest.approx(5e-3)


def _updates(tx, steps=3):
    params = {"w": jnp.array([1.0, -2.0, 3.0]), "b": jnp.array(0.5)}
    grads = {"w": jnp.array([0.1, -0.2, 0.05]), "b": jnp.array(-0.3)}
    state = tx.init(params)
    out = []
    for _ in range(steps):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        out.append(updates)
    return out, state


@pytest.mark.parametrize("name", ["adam", "adamw", "radam"])
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
    config = _config(b1=0.8, eps=None, weight_decay=None, eps_root=1e-12)
    assert optimizer_hparams(config) == {"b1": 0.8, "eps_root": 1e-12}
    tx, _ = make_optimizer(config, total_steps=5)
    assert isinstance(tx, optax.GradientTransformation)


@pytest.mark.parametrize(
    "overrides,total_steps,match",
    [
        ({"name": "sgd"}, 10, "optimizer.name='sgd' is unknown; allowed: adam, adamw"),
        (
            {"implementation": "torch"},
            10,
            "implementation='torch' is unknown; allowed: ours, optax",
        ),
        ({"schedule": "step"}, 10, "schedule='step' is unknown; allowed: constant, warmup_cosine"),
        ({"learning_rate": 0.0}, 10, "learning_rate=0.0 must be a finite number > 0"),
        ({"learning_rate": float("nan")}, 10, "must be a finite number > 0"),
        ({"schedule": "warmup_cosine", "warmup_steps": 11}, 10, "warmup_steps=11 must be <"),
        ({"schedule": "warmup_cosine", "warmup_steps": 10}, 10, "warmup_steps=10 must be <"),
        ({"schedule": "warmup_cosine", "warmup_steps": -1}, 10, "must be an int >= 0"),
        ({"warmup_steps": 5}, 10, "warmup_steps=5 needs schedule='warmup_cosine'"),
        ({}, 0, "total_steps=0 must be an int >= 1"),
        ({"b1": 1.0}, 10, "b1"),  # range checks of adamlab.optim surface through the factory
        ({"threshold": 5.0}, 10, "unknown hyperparameter"),  # radam's, not adam's
    ],
)
def test_bad_config_is_a_clear_error(overrides, total_steps, match):
    with pytest.raises(ValueError, match=match):
        make_optimizer(_config(**overrides), total_steps)
