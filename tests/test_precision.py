"""Mixed precision: float32 master weights, bfloat16 compute and first moment, still learning."""

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from adamlab import config_dict, models, optim
from adamlab.training import precision, train
from adamlab.training.steps import make_train_step
from adamlab.training.train_state import create_train_state

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def _config(**model):
    config = config_dict.load_config_file(CONFIGS / "digits.py")
    config.model.update(model)
    return config


def test_policy_casts_floats_only():
    policy = precision.Policy(compute_dtype=jnp.bfloat16)
    tree = {"w": jnp.ones(3), "step": jnp.zeros((), jnp.int32), "h": jnp.ones(2, jnp.bfloat16)}
    compute = policy.cast_to_compute(tree)
    assert compute["w"].dtype == jnp.bfloat16 and compute["step"].dtype == jnp.int32
    assert policy.cast_to_param(compute)["w"].dtype == jnp.float32
    assert policy.is_mixed and not precision.Policy().is_mixed


def test_policy_from_config_and_errors():
    assert precision.policy_from_config(_config(dtype="bfloat16")).compute_dtype == jnp.bfloat16
    assert not precision.policy_from_config(_config()).is_mixed
    with pytest.raises(ValueError, match="model.dtype='float16' is not supported; allowed"):
        precision.policy_from_config(_config(dtype="float16"))


def test_bad_mu_dtype_is_a_config_error():
    config = _config()
    config.optimizer.mu_dtype = "int8"
    with pytest.raises(train.ConfigError, match="mu_dtype"):
        train.validate_config(config)


class _FollowsInputDtype(nn.Module):
    """Layers with dtype=None compute in the dtype of their inputs and parameters."""

    @nn.compact
    def __call__(self, x, *, train):
        del train
        x = nn.relu(nn.Conv(8, (3, 3))(x))
        x = nn.relu(nn.Conv(16, (3, 3))(x)).reshape((x.shape[0], -1))
        return nn.Dense(10)(nn.relu(nn.Dense(32)(x)))


def _mixed_step(use_policy):
    """bfloat16 compute either by the model's own dtype (what configs do) or by a Policy that
    casts the parameters of a float32 model (for models without dtype handling)."""
    if use_policy:
        model = _FollowsInputDtype()
    else:
        config = {"name": "cnn", "features": (8, 16), "dense_features": 32, "dtype": "bfloat16"}
        model = models.create_model(ml_collections.ConfigDict(config), 10)
    tx = optim.adam(1e-2, mu_dtype="bfloat16")
    schedule = optax.constant_schedule(1e-2)
    policy = precision.Policy(compute_dtype=jnp.bfloat16) if use_policy else None
    step = make_train_step(model, tx, schedule, policy=policy)
    state = create_train_state(0, model, tx, (8, 8, 1))
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(16, 8, 8, 1)).astype(np.float32),
        "label": rng.integers(0, 10, 16).astype(np.int32),
    }
    return step, state, batch


@pytest.fixture(scope="module")
def mixed_step():
    return _mixed_step(use_policy=False)


def test_mixed_step_dtypes(mixed_step):
    step, state, batch = mixed_step
    new_state, metrics = jax.jit(step)(state, batch)
    # Master weights float32, first moment bfloat16, second moment float32, loss float32.
    assert {x.dtype for x in jax.tree.leaves(new_state.params)} == {jnp.dtype("float32")}
    adam_state = new_state.opt_state[0]
    assert {x.dtype for x in jax.tree.leaves(adam_state.mu)} == {jnp.dtype("bfloat16")}
    assert {x.dtype for x in jax.tree.leaves(adam_state.nu)} == {jnp.dtype("float32")}
    assert metrics["loss"].dtype == jnp.float32 and bool(metrics["finite"])
    # Parameters moved by ~lr (Adam's first step is lr * sign(g)), in float32.
    moved = jax.tree.map(
        lambda a, b: float(jnp.max(jnp.abs(a - b))), new_state.params, state.params
    )
    assert all(abs(m - 1e-2) < 1e-3 for m in jax.tree.leaves(moved))


@pytest.mark.parametrize("use_policy", [False, True], ids=["model_dtype", "policy"])
def test_mixed_step_computes_in_bfloat16(use_policy):
    """Every convolution and matmul of the forward and backward pass runs on bfloat16."""
    step, state, batch = _mixed_step(use_policy)
    jaxpr = jax.make_jaxpr(step)(state, batch)
    heavy = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
                heavy.append(tuple(v.aval.dtype for v in eqn.invars))
            for param in eqn.params.values():
                for sub in param if isinstance(param, list | tuple) else [param]:
                    inner = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                    if hasattr(inner, "eqns"):
                        walk(inner)

    walk(jaxpr.jaxpr)
    # 2 convs + 2 dense layers: 4 forward, 4 kernel gradients, 3 input gradients (none is
    # needed for the image).
    assert len(heavy) == 11
    assert set(heavy) == {(jnp.dtype("bfloat16"), jnp.dtype("bfloat16"))}


def test_first_moment_in_bfloat16_saves_a_quarter_of_adam_state():
    params = {"w": jnp.zeros((1000, 10)), "b": jnp.zeros(10)}
    f32 = precision.tree_bytes(optim.adam(1e-3).init(params))
    bf16 = precision.tree_bytes(optim.adam(1e-3, mu_dtype="bfloat16").init(params))
    assert f32 == 2 * 4 * 10010 + 4  # mu + nu + int32 count
    assert bf16 == (2 + 4) * 10010 + 4


def test_bfloat16_run_still_learns(tmp_path):
    """A short bfloat16 run (bf16 compute + bf16 first moment) classifies digits well."""
    config = _config(dtype="bfloat16", features=(16, 32), dense_features=64)
    config.optimizer.mu_dtype = "bfloat16"
    config.train.update(num_epochs=3.0, progress_bar=False, eval_every_steps=1000,
                        checkpoint_every_steps=1000, best_metric=None)  # fmt: skip
    final = train.train_and_evaluate(config, tmp_path)
    # float32 on this config reaches ~0.95-0.97 after 3 epochs; the full 24-epoch comparison
    # (accuracy cost of bfloat16) is in benchmarks/optimizer_memory.py and docs/scaling.md.
    assert final["test_accuracy"] >= 0.9, final
