"""ZeRO-1: sharded optimizer state trains like the replicated one, with 1/N of its bytes per device.

The session has 4 simulated CPU devices (tests/conftest.py). Each engine (jit, pmap) trains one
run with the optimizer state replicated and sharded, on the same digits batches, with AdamW, a
weight-decay mask (biases not decayed) and a warmup-cosine schedule, so masks and schedules are
exercised too.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adamlab import models, optim
from adamlab.training import engines, members, zero
from adamlab.training.train_state import create_train_state

from helpers import assert_trees_equal, digits_batches

NUM_STEPS = 4
GLOBAL_BATCH = 32
NUM_CLASSES = 10
# Tolerance. Sharded and replicated runs do the same float32 math except the gradient mean:
# a reduce-scatter (each device sums one slice) instead of an all-reduce, which may add the 4
# per-device gradients in another order: ~1e-7 relative per gradient entry. Adam divides by the
# gradient's own RMS, so the relative difference carries into an update of size <= lr = 1e-2:
# ~1e-9 per step; over 4 steps and through the layers we allow atol 1e-6 (1e-4 of one step),
# rtol 1e-5, as tests/test_engines.py does for jit vs pmap. A real error (a wrong slice, a
# missing 1/N, a mask applied to the wrong entries) moves parameters by ~lr = 1e-2.
ATOL, RTOL = 1e-6, 1e-5


def _mask(params):
    """Decay kernels only: a per-leaf pytree mask, which ZeRO must apply to the right slices."""
    return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "kernel", params)


def _model():
    return models.create_model({"name": "cnn", "features": (8,), "dense_features": 16},
                               NUM_CLASSES)  # fmt: skip


def _schedule():
    return optax.warmup_cosine_decay_schedule(0.0, 1e-2, 2, NUM_STEPS + 2)


def _adamw(mu_dtype=None):
    params = create_train_state(0, _model(), optax.identity(), (8, 8, 1)).params
    return optim.adamw(_schedule(), weight_decay=0.1, mask=_mask(params), mu_dtype=mu_dtype)


def _one_run(tx):
    """The host step-0 members of a single run (grid ()): ZeRO-1 shards a single run only."""
    return members.initial_members(_model(), [tx], (8, 8, 1), (0,), {}, [lambda _: tx])


def _train(name, shard_optimizer):
    tx = _adamw()
    engine = engines.Engine(name, _model(), [tx], _schedule(), NUM_CLASSES,
                            shard_optimizer=shard_optimizer)  # fmt: skip
    carry = engine.put_members(_one_run(tx))
    history = []
    for batch in digits_batches(NUM_STEPS, GLOBAL_BATCH):
        chunk = {k: v[None] for k, v in batch.items()}  # K = 1
        carry, metrics = engine.train(carry, engine.put_chunk(chunk))
        history.append(jax.tree.map(lambda x: x[0, 0], jax.device_get(metrics)))
    return engine, carry, history


@pytest.fixture(scope="module")
def runs():
    return {
        (name, shard): _train(name, shard) for name in ("jit", "pmap") for shard in (False, True)
    }


@pytest.mark.parametrize("name", ["jit", "pmap"])
def test_sharded_matches_replicated(runs, name):
    ref_engine, ref_state, ref_history = runs[(name, False)]
    engine, state, history = runs[(name, True)]
    ref, got = ref_engine.get_members(ref_state), engine.get_members(state)
    # get_members returns the full state: same structure and shapes as the replicated run, so
    # checkpoints do not depend on the sharding.
    assert jax.tree.structure(ref) == jax.tree.structure(got)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, atol=ATOL, rtol=RTOL), ref, got)
    if name == "pmap":
        # The reduce-scatter adds the 4 devices' gradients as the all-reduce does: bitwise.
        assert_trees_equal(got, ref)
    else:
        # XLA partitions the update from the shardings and may reorder sums: measured bitwise
        # on this model, 6e-8 at most on the digits CNN (docs/scaling.md).
        jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, atol=6e-8, rtol=0),
                     ref.states[0].params, got.states[0].params)  # fmt: skip
    ref, got = ref.states[0], got.states[0]
    initial = create_train_state(0, _model(), optax.identity(), (8, 8, 1)).params
    moved = max(
        float(np.max(np.abs(a - b)))
        for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(initial), strict=True)
    )
    assert moved > 1e3 * ATOL, "training must move the parameters far beyond the tolerance"
    for a, b in zip(ref_history, history, strict=True):
        for key in ("loss", "accuracy", "grad_norm", "update_norm", "param_norm"):
            np.testing.assert_allclose(b[key], a[key], rtol=1e-5, err_msg=key)
        assert bool(b["finite"])


def test_sharded_update_applies_mask_and_decay_per_slice():
    """Zero gradient: AdamW's update is the decay alone, -lr * wd * p, on masked leaves only."""
    params = {
        "kernel": jnp.arange(1.0, 31.0).reshape(5, 6),  # 30 entries: 8 per device, 2 padding
        "bias": jnp.arange(1.0, 4.0),  # 3 entries: 1 per device, 1 padding
    }
    lr, wd = 0.1, 0.5
    tx = optim.adamw(lr, weight_decay=wd, mask={"kernel": True, "bias": False})
    opt_state = zero.to_sharded_opt_state(tx, tx.init(params), 4)

    def step(opt_state, grads):
        new, _, norms = zero.sharded_update(
            tx, grads, opt_state, params, axis_name="i", num_shards=4
        )
        return new, norms["update_norm"]

    grads = jax.tree.map(lambda p: jnp.zeros((4, *p.shape)), params)
    new, update_norm = jax.pmap(step, axis_name="i")(opt_state, grads)
    np.testing.assert_allclose(new["kernel"][2], params["kernel"] * (1 - lr * wd), rtol=1e-6)
    np.testing.assert_array_equal(new["bias"][2], params["bias"])
    expected = lr * wd * np.linalg.norm(params["kernel"])
    np.testing.assert_allclose(update_norm, expected, rtol=1e-6)


@pytest.mark.parametrize("name", ["jit", "pmap"])
def test_optimizer_bytes_per_device_are_about_one_nth(runs, name):
    ref_engine, ref_carry, _ = runs[(name, False)]
    _, carry, _ = runs[(name, True)]
    d0 = jax.devices()[0]
    replicated = zero.bytes_on_device(ref_carry.states[0].opt_state, d0)
    sharded = zero.bytes_on_device(carry.states[0].opt_state, d0)
    full = sum(x.nbytes for x in jax.tree.leaves(ref_engine.get_members(ref_carry).states[0]
                                                  .opt_state))  # fmt: skip
    assert replicated == full  # replicated: every device holds the whole state
    # 1/4 plus what cannot be split: the 10-class bias (jit), padding to a multiple of 4 (pmap)
    # and the step counters; 1.3% of the state of this tiny model (< 0.03% of the real ones,
    # docs/scaling.md). Measured after 4 train steps: the state the step returns keeps its
    # sharding.
    assert full / 4 <= sharded <= 1.02 * full / 4
    # Parameters stay replicated.
    params = zero.bytes_on_device(carry.states[0].params, d0)
    assert params == zero.bytes_on_device(ref_carry.states[0].params, d0)


@pytest.mark.parametrize("name", ["jit", "pmap"])
def test_bfloat16_first_moment_and_zero_hold_three_sixteenths(runs, name):
    """mu in bfloat16 (2 of Adam's 8 bytes per parameter saved), then sharded over 4 devices:
    (2 + 4) / 8 / 4 = 0.1875 of the replicated float32 state on each device."""
    ref_engine, ref_carry, _ = runs[(name, False)]
    full = sum(x.nbytes for x in jax.tree.leaves(ref_engine.get_members(ref_carry).states[0]
                                                  .opt_state))  # fmt: skip
    tx = _adamw(mu_dtype="bfloat16")
    engine = engines.Engine(name, _model(), [tx], _schedule(), NUM_CLASSES, shard_optimizer=True)
    carry = engine.put_members(_one_run(tx))  # Placement only: no step, no compilation.
    adam_state = carry.states[0].opt_state[0]
    assert {x.dtype for x in jax.tree.leaves(adam_state.mu)} == {jnp.dtype("bfloat16")}
    sharded = zero.bytes_on_device(carry.states[0].opt_state, jax.devices()[0])
    assert 0.1875 <= sharded / full <= 1.02 * 0.1875
    # get_members gathers the full bfloat16 moments back.
    host = engine.get_members(carry).states[0].opt_state[0]
    assert host.mu["Dense_0"]["kernel"].shape == (128, 16)
    assert host.mu["Dense_0"]["kernel"].dtype == jnp.bfloat16


def test_partition_spec_picks_the_largest_divisible_axis():
    P = jax.sharding.PartitionSpec
    assert zero.partition_spec((3, 3, 8, 32), 4) == P(None, None, None, "data")
    assert zero.partition_spec((256, 128), 4) == P("data", None)
    assert zero.partition_spec((10,), 4) == P()
    assert zero.partition_spec((), 4) == P()


def test_shard_round_trip_and_padding():
    tree = {"a": np.arange(10.0).reshape(2, 5), "b": np.ones(3, np.float32)}
    shards = zero.shard_leaves(tree, 4)
    assert shards["a"].shape == (4, 3) and shards["b"].shape == (4, 1)
    assert shards["a"].reshape(-1)[10:].tolist() == [0.0, 0.0]  # zero padding
    back = zero.unshard_leaves(shards, tree)
    jax.tree.map(np.testing.assert_array_equal, back, tree)
    tx = optim.adam(1e-3)
    state = tx.init(tree)
    sharded = zero.to_sharded_opt_state(tx, state, 4)
    assert sharded[0].mu["a"].shape == (4, 3) and sharded[0].count.shape == (4,)
    jax.tree.map(
        np.testing.assert_array_equal, zero.from_sharded_opt_state(tx, sharded, tree), state
    )


def test_sharded_step_needs_pmap_axis():
    from adamlab.training.steps import make_train_step

    with pytest.raises(ValueError, match="needs axis_name and num_shards"):
        make_train_step(
            _model(), optax.adam(1e-3), optax.constant_schedule(1e-3), shard_optimizer=True
        )


def test_reduce_scatter_equals_pmean_slice():
    x = jnp.arange(4 * 7, dtype=jnp.float32).reshape(4, 7)  # device i holds row i

    def f(row):
        return zero.reduce_scatter_mean(row, "i", 4), zero.local_shards(
            jax.lax.pmean(row, "i"), "i", 4
        )

    scattered, sliced = jax.pmap(f, axis_name="i")(x)
    np.testing.assert_allclose(scattered, sliced, rtol=1e-6)
    assert scattered.shape == (4, 2)  # ceil(7 / 4) = 2 per device, 1 padding entry
