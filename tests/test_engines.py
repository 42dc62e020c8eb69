"""Engines: 1 device == pmap over 4 == jit over 4 (parameters, BatchNorm statistics, metrics, eval).

The session has 4 simulated CPU devices (tests/conftest.py); the reference is the jit engine on
`jax.devices()[:1]`, i.e. a plain single-device jitted step on the global batch.
"""

import jax
import numpy as np
import optax
import pytest
import scipy.special
from ml_collections import ConfigDict
from sklearn.datasets import load_digits

from adamlab import models
from adamlab.training import engines
from adamlab.training.train_state import create_train_state

from helpers import digits_batches, to_layout

NUM_STEPS = 3
GLOBAL_BATCH = 32
NUM_CLASSES = 10

# Tolerance of the parity checks. The three engines compute the same float32 math; only the
# order of reductions differs (one sum over 32 examples vs 4 sums over 8 and an all-reduce), so
# gradients and BatchNorm statistics differ by float32 rounding, ~1e-7 relative per reduction
# (eps_f32 = 1.2e-7). Adam divides the gradient by its own RMS, so the relative difference
# carries into the update, whose size is <= lr = 1e-3: after 3 steps a parameter can differ by
# ~3 * 1e-3 * (a few 1e-7), i.e. ~1e-9..1e-8, more through a few layers of BatchNorm; the
# running statistics (values ~0.1-1) by ~1e-7 relative. atol = 1e-6 (0.1% of one Adam step)
# with rtol = 1e-5 leaves a margin of ~10x over what we measure (max |diff| 3e-7 on ResNet
# params, 12% of the tolerance), while a real divergence fails by orders of magnitude: pmap
# without BatchNorm sync is 3000x the tolerance on this test.
ATOL, RTOL = 1e-6, 1e-5


def _train(name, devices, model, batches, image_shape):
    schedule = optax.constant_schedule(1e-3)
    tx = optax.adam(schedule)
    engine = engines.make_engine(name, model, tx, schedule, NUM_CLASSES, devices=devices)
    state = engine.put_state(create_train_state(0, model, tx, image_shape))
    history = []
    for batch in batches:
        state, metrics = engine.train_step(state, engine.put_batch(to_layout(batch, engine)))
        history.append(jax.device_get(metrics))
    return engine, state, history


def _run_all(model, batches, image_shape):
    """The same training on 1 device (reference), pmap over 4 and jit over 4."""
    devices = jax.devices()
    assert len(devices) == 4, "tests/conftest.py should give 4 simulated CPU devices"
    return {
        "one": _train("jit", devices[:1], model, batches, image_shape),
        "pmap": _train("pmap", devices, model, batches, image_shape),
        "jit": _train("jit", devices, model, batches, image_shape),
    }


@pytest.fixture(scope="module")
def cnn_runs():
    model = models.create_model(
        {"name": "cnn", "features": (8, 16), "dense_features": 32}, NUM_CLASSES
    )
    return model, _run_all(model, digits_batches(NUM_STEPS, GLOBAL_BATCH), (8, 8, 1))


@pytest.fixture(scope="module")
def resnet_runs():
    model = models.create_model(
        {"name": "resnet", "stage_sizes": (1, 1), "num_filters": 4}, NUM_CLASSES
    )
    return model, _run_all(model, digits_batches(NUM_STEPS, GLOBAL_BATCH, channels=3), (8, 8, 3))


def _assert_trees_close(actual, expected, what):
    def check(path, a, e):
        a, e = np.asarray(a), np.asarray(e)
        worst = np.max(np.abs(a - e) / (ATOL + RTOL * np.abs(e)), initial=0.0)
        assert worst <= 1.0, f"{what} {jax.tree_util.keystr(path)}: {worst:.2f} x tolerance"

    jax.tree_util.tree_map_with_path(check, actual, expected)


@pytest.mark.parametrize("engine", ["pmap", "jit"])
@pytest.mark.parametrize("runs", ["cnn_runs", "resnet_runs"])
def test_four_devices_match_one_device(runs, engine, request):
    _, results = request.getfixturevalue(runs)
    one_engine, one_state, one_history = results["one"]
    multi_engine, multi_state, multi_history = results[engine]
    reference, state = one_engine.get_state(one_state), multi_engine.get_state(multi_state)
    assert int(state.step) == int(reference.step) == NUM_STEPS
    # Training moved every parameter tensor by far more than the tolerance: the check has teeth.
    model = request.getfixturevalue(runs)[0]
    image_shape = (8, 8, 1) if runs == "cnn_runs" else (8, 8, 3)
    initial = create_train_state(0, model, optax.adam(1e-3), image_shape)
    moved = jax.tree.map(lambda a, b: np.max(np.abs(a - b)), reference.params, initial.params)
    assert min(jax.tree.leaves(moved)) > 100 * ATOL
    _assert_trees_close(state.params, reference.params, "params")
    _assert_trees_close(state.opt_state, reference.opt_state, "opt_state")
    # BatchNorm running statistics: synced over devices (pmap: axis_name; jit: global batch).
    _assert_trees_close(state.batch_stats, reference.batch_stats, "batch_stats")
    np.testing.assert_array_equal(state.rng, reference.rng)
    for got, want in zip(multi_history, one_history, strict=True):
        assert set(got) == set(want)
        assert bool(got["finite"]) and bool(want["finite"])
        for key in ("loss", "accuracy", "learning_rate", "grad_norm", "update_norm"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key
        assert np.shape(got["loss"]) == ()  # reduced across devices, one copy


def test_resnet_has_batch_stats_that_moved(resnet_runs):
    _, results = resnet_runs
    engine, state, _ = results["pmap"]
    stats = engine.get_state(state).batch_stats
    means = [np.abs(x).max() for x in jax.tree.leaves(stats) if x.ndim == 1]
    assert stats and max(means) > 1e-2  # the check above compared real statistics


@pytest.fixture(scope="module")
def eval_batch():
    images, labels = load_digits(return_X_y=True)
    real = 28  # 28 real examples padded to 32 (8 per device); padding labels out of range
    image = np.zeros((32, 8, 8, 1), np.float32)
    image[:real] = (images[-real:] / 16.0).reshape(real, 8, 8, 1)
    label = np.full(32, -1, np.int32)
    label[:real] = labels[-real:]
    return {"image": image, "label": label, "mask": np.arange(32) < real}


def test_eval_sums_equal_across_engines_and_numpy(cnn_runs, eval_batch):
    model, results = cnn_runs
    one_engine, one_state, _ = results["one"]
    params = one_engine.get_state(one_state).params
    logits = np.asarray(
        jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))(
            params, eval_batch["image"]
        ),
        np.float64,
    )
    mask = eval_batch["mask"]
    labels, predictions = eval_batch["label"][mask], logits[mask].argmax(-1)
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    log_probs = scipy.special.log_softmax(logits[mask], axis=-1)
    expected_loss = -log_probs[np.arange(mask.sum()), labels].sum()

    for name, (engine, state, _) in results.items():
        sums = jax.device_get(
            engine.eval_step(state, engine.put_batch(to_layout(eval_batch, engine)))
        )
        assert int(sums["count"]) == 28, name
        assert int(sums["correct"]) == int((predictions == labels).sum()), name
        np.testing.assert_array_equal(sums["confusion"], confusion, err_msg=name)
        assert float(sums["loss_sum"]) == pytest.approx(expected_loss, rel=1e-5), name


def test_get_state_is_a_host_copy_that_survives_donation(cnn_runs):
    model, results = cnn_runs
    for name in ("pmap", "jit"):
        engine, _, _ = results[name]
        tx = optax.adam(optax.constant_schedule(1e-3))  # the engine's optimizer
        state = engine.put_state(create_train_state(0, model, tx, (8, 8, 1)))
        copy = engine.get_state(state)
        assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(copy))
        kernel = copy.params["Dense_1"]["kernel"]
        assert kernel.shape == (32, NUM_CLASSES)  # one copy, no device axis
        snapshot = kernel.copy()
        batch = to_layout(digits_batches(NUM_STEPS, GLOBAL_BATCH)[0], engine)
        new_state, _ = engine.train_step(state, engine.put_batch(batch))
        np.testing.assert_array_equal(copy.params["Dense_1"]["kernel"], snapshot)
        assert not np.array_equal(engine.get_state(new_state).params["Dense_1"]["kernel"], snapshot)


def test_steps_compile_once(cnn_runs):
    _, results = cnn_runs
    engine, state, _ = results["jit"]
    # 3 train steps ran on this engine, all on one batch shape: one compiled program.
    assert engine.compiled_train_step._cache_size() == 1
    batch = engine.put_batch(to_layout(digits_batches(NUM_STEPS, GLOBAL_BATCH)[0], engine))
    engine.eval_step(state, batch)  # Compiles for this shape unless another test did.
    compiled = engine.compiled_eval_step._cache_size()
    assert compiled >= 1
    engine.eval_step(state, batch)
    assert engine.compiled_eval_step._cache_size() == compiled  # The same shape: no new one.


def test_engines_place_state_and_batches_as_documented(cnn_runs):
    _, results = cnn_runs
    jit_engine, jit_state, _ = results["jit"]
    leaf = jax.tree.leaves(jit_state.params)[0]
    assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 4
    batch = jit_engine.put_batch(digits_batches(NUM_STEPS, GLOBAL_BATCH)[0])
    assert batch["image"].sharding.spec == jax.sharding.PartitionSpec("data")
    assert {s.data.shape[0] for s in batch["image"].addressable_shards} == {8}

    pmap_engine, pmap_state, _ = results["pmap"]
    assert jax.tree.leaves(pmap_state.params)[0].shape[0] == 4  # leading device axis
    assert pmap_engine.synchronous and jit_engine.synchronous  # several CPU devices
    assert not results["one"][0].synchronous  # a single device keeps async dispatch


def test_put_batch_rejects_the_wrong_layout(cnn_runs):
    _, results = cnn_runs
    flat = digits_batches(NUM_STEPS, GLOBAL_BATCH)[0]
    with pytest.raises(ValueError, match="layout='pmap'"):
        results["pmap"][0].put_batch(flat)  # [32, ...] instead of [4, 8, ...]
    with pytest.raises(ValueError, match="divisible by 4 devices"):
        results["jit"][0].put_batch({k: v[:30] for k, v in flat.items()})


def test_engine_config_validation():
    with pytest.raises(
        ValueError, match="train.engine='pjit' is not an engine; allowed: jit, pmap"
    ):
        engines.make_engine("pjit", None, None, None, 10)
    with pytest.raises(ValueError, match="train.batch_size=30 is not divisible by the 4 devices"):
        engines.validate_batch_size(30, 4)
    with pytest.raises(ValueError, match="must be a positive int"):
        engines.validate_batch_size(0, 1)
    config = {"engine": "jit", "batch_size": 64, "eval_batch_size": 100}
    with pytest.raises(ValueError, match="train.eval_batch_size=100 is not divisible by the 8"):
        engines.validate_engine_config(ConfigDict(config), num_devices=8)
    engines.validate_engine_config(ConfigDict(config), num_devices=4)  # 64 and 100 split by 4
