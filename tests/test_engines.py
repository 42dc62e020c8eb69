"""Engines: 1 device == pmap over 4 == jit over 4, for one run and for a grid of members.

The session has 4 simulated CPU devices (tests/conftest.py); the reference is the jit engine on
`jax.devices()[:1]`, i.e. a plain single-device jitted step on the global batch. Every engine
trains `members.Members`: one run (grid ()) as `adamlab train` does, or a grid of members
(values x seeds x implementations) as compare and sweep do, K steps per dispatch.
"""

import jax
import numpy as np
import optax
import pytest
import scipy.special
from sklearn.datasets import load_digits

from adamlab import models
from adamlab.training import engines, members, optimizers
from adamlab.training.train_state import create_train_state

from helpers import assert_trees_equal, digits_batches

NUM_STEPS = 3
GLOBAL_BATCH = 32
NUM_CLASSES = 10
CNN = {"name": "cnn", "features": (8,), "dense_features": 16}

# Tolerance of the parity checks. The three engines compute the same float32 math; only the
# order of reductions differs (one sum over 32 examples vs 4 sums over 8 and an all-reduce), so
# gradients and BatchNorm statistics differ by float32 rounding, ~1e-7 relative per reduction
# (eps_f32 = 1.2e-7). Adam divides the gradient by its own RMS, so the relative difference
# carries into the update, whose size is <= lr = 1e-3: after 3 steps a parameter can differ by
# ~3 * 1e-3 * (a few 1e-7), i.e. ~1e-9..1e-8, more through a few layers of BatchNorm; the
# running statistics (values ~0.1-1) by ~1e-7 relative. atol = 1e-6 (0.1% of one Adam step)
# with rtol = 1e-5 leaves a margin of ~25x over what we measure (max |diff| 8e-8 on the ResNet's
# params, 4% of the tolerance; 6e-8 for the grid's members, 3%), while a real divergence fails by
# orders of magnitude: pmap without BatchNorm sync was 3000x the tolerance (2-stage ResNet).
ATOL, RTOL = 1e-6, 1e-5


def _one_run(model, tx, image_shape, seed=0):
    """The host step-0 members of a single run (grid ()), as `adamlab train` starts."""
    return members.initial_members(model, [tx], image_shape, (seed,), {}, [lambda _: tx])


def _chunk(*batches):
    """Batches stacked on a leading K axis: one dispatch of K steps."""
    return jax.tree.map(lambda *xs: np.stack(xs), *batches)


def _train(name, devices, model, batches, image_shape, optimizer=None):
    """`optimizer`: (tx, schedule); default optax's Adam at a constant 1e-3."""
    schedule = optax.constant_schedule(1e-3)
    tx, schedule = optimizer or (optax.adam(schedule), schedule)
    engine = engines.Engine(name, model, [tx], schedule, NUM_CLASSES, devices=devices)
    carry = engine.put_members(_one_run(model, tx, image_shape))
    history = []
    for batch in batches:
        carry, metrics = engine.train(carry, engine.put_chunk(_chunk(batch)))
        history.append(jax.device_get(metrics))
    return engine, carry, history


def _run_all(model, batches, image_shape, optimizer=None):
    """The same training on 1 device (reference), pmap over 4 and jit over 4."""
    devices = jax.devices()
    assert len(devices) == 4, "tests/conftest.py should give 4 simulated CPU devices"
    return {
        "one": _train("jit", devices[:1], model, batches, image_shape, optimizer),
        "pmap": _train("pmap", devices, model, batches, image_shape, optimizer),
        "jit": _train("jit", devices, model, batches, image_shape, optimizer),
    }


@pytest.fixture(scope="module")
def cnn_runs():
    model = models.create_model(CNN, NUM_CLASSES)
    return model, _run_all(model, digits_batches(NUM_STEPS, GLOBAL_BATCH), (8, 8, 1))


@pytest.fixture(scope="module")
def resnet_runs():
    model = models.create_model(
        {"name": "resnet", "stage_sizes": (1,), "num_filters": 4}, NUM_CLASSES
    )
    return model, _run_all(model, digits_batches(NUM_STEPS, GLOBAL_BATCH, channels=3), (8, 8, 3))


def _assert_trees_close(actual, expected, what):
    def check(path, a, e):
        a, e = np.asarray(a), np.asarray(e)
        worst = np.max(np.abs(a - e) / (ATOL + RTOL * np.abs(e)), initial=0.0)
        assert worst <= 1.0, f"{what} {jax.tree_util.keystr(path)}: {worst:.2f} x tolerance"

    jax.tree_util.tree_map_with_path(check, actual, expected)


@pytest.mark.parametrize("engine", ["pmap", "jit"])
# The CNN's parity over devices is also checked by the grid below (default suite).
@pytest.mark.parametrize("runs", ["resnet_runs", pytest.param("cnn_runs", marks=pytest.mark.slow)])
def test_four_devices_match_one_device(runs, engine, request):
    model, results = request.getfixturevalue(runs)
    one_engine, one_carry, one_history = results["one"]
    multi_engine, multi_carry, multi_history = results[engine]
    reference = one_engine.get_members(one_carry)
    got = multi_engine.get_members(multi_carry)
    state, ref_state = got.states[0], reference.states[0]
    assert int(state.step) == int(ref_state.step) == NUM_STEPS
    assert got.alive.tolist() == [True] and got.diverged_at.tolist() == [0]
    # Training moved every parameter tensor by far more than the tolerance: the check has teeth.
    image_shape = (8, 8, 1) if runs == "cnn_runs" else (8, 8, 3)
    initial = create_train_state(0, model, optax.adam(1e-3), image_shape)
    moved = jax.tree.map(lambda a, b: np.max(np.abs(a - b)), ref_state.params, initial.params)
    assert min(jax.tree.leaves(moved)) > 100 * ATOL
    _assert_trees_close(state.params, ref_state.params, "params")
    _assert_trees_close(state.opt_state, ref_state.opt_state, "opt_state")
    # BatchNorm running statistics: synced over devices (pmap: axis_name; jit: global batch).
    _assert_trees_close(state.batch_stats, ref_state.batch_stats, "batch_stats")
    np.testing.assert_array_equal(state.rng, ref_state.rng)
    for got_metrics, want in zip(multi_history, one_history, strict=True):
        assert set(got_metrics) == set(want) == {*members.LOGGED, "finite"}
        assert bool(got_metrics["finite"].all()) and bool(want["finite"].all())
        for key in ("loss", "accuracy", "learning_rate", "grad_norm", "update_norm"):
            np.testing.assert_allclose(got_metrics[key], want[key], rtol=1e-5, atol=1e-7,
                                       err_msg=key)  # fmt: skip
        # [K, implementations]: reduced across devices, one copy (no device axis).
        assert np.shape(got_metrics["loss"]) == (1, 1)


def test_resnet_has_batch_stats_that_moved(resnet_runs):
    _, results = resnet_runs
    engine, carry, _ = results["pmap"]
    stats = engine.get_members(carry).states[0].batch_stats
    means = [np.abs(x).max() for x in jax.tree.leaves(stats) if x.ndim == 1]
    assert stats and max(means) > 1e-2  # the check above compared real statistics


@pytest.fixture(scope="module")
def eval_batch():
    images, labels = load_digits(return_X_y=True)
    real = 28  # 28 real examples padded to 32 (8 per device); padding labels out of range
    image = np.zeros((32, 8, 8, 3), np.float32)  # the ResNet's 3 channels
    image[:real] = (images[-real:] / 16.0).reshape(real, 8, 8, 1)
    label = np.full(32, -1, np.int32)
    label[:real] = labels[-real:]
    return {"image": image, "label": label, "mask": np.arange(32) < real}


def test_eval_sums_equal_across_engines_and_numpy(resnet_runs, eval_batch):
    model, results = resnet_runs
    one_engine, one_carry, _ = results["one"]
    state = one_engine.get_members(one_carry).states[0]
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    logits = np.asarray(model.apply(variables, eval_batch["image"], train=False), np.float64)
    mask = eval_batch["mask"]
    labels, predictions = eval_batch["label"][mask], logits[mask].argmax(-1)
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    log_probs = scipy.special.log_softmax(logits[mask], axis=-1)
    expected_loss = -log_probs[np.arange(mask.sum()), labels].sum()

    for name in ("pmap", "jit"):
        engine, carry, _ = results[name]
        per_implementation = engine.evaluate(carry, engine.put_batch(eval_batch))
        assert len(per_implementation) == 1, name
        sums = jax.device_get(per_implementation[0])
        assert int(sums["count"]) == 28, name
        assert int(sums["correct"]) == int((predictions == labels).sum()), name
        np.testing.assert_array_equal(sums["confusion"], confusion, err_msg=name)
        assert float(sums["loss_sum"]) == pytest.approx(expected_loss, rel=1e-5), name


def test_get_members_is_a_host_copy_that_survives_donation(resnet_runs):
    model, results = resnet_runs
    for name in ("pmap", "jit"):
        engine = results[name][0]
        tx = optax.adam(optax.constant_schedule(1e-3))  # the engine's optimizer
        carry = engine.put_members(_one_run(model, tx, (8, 8, 3)))
        copy = engine.get_members(carry)
        assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(copy))
        kernel = copy.states[0].params["Dense_0"]["kernel"]
        assert kernel.shape == (4, NUM_CLASSES)  # one copy, no device axis
        snapshot = kernel.copy()
        batch = _chunk(digits_batches(1, GLOBAL_BATCH, channels=3)[0])
        new_carry, _ = engine.train(carry, engine.put_chunk(batch))
        assert all(x.is_deleted() for x in jax.tree.leaves(carry.states[0].params))  # donated
        np.testing.assert_array_equal(copy.states[0].params["Dense_0"]["kernel"], snapshot)
        new_kernel = engine.get_members(new_carry).states[0].params["Dense_0"]["kernel"]
        assert not np.array_equal(new_kernel, snapshot)


def test_steps_compile_once(resnet_runs):
    _, results = resnet_runs
    engine, carry, _ = results["jit"]
    # 3 train chunks of K = 1 ran on this engine, all of one shape: one compiled program.
    assert engine._train[False]._cache_size() == 1  # The plain step (no layer statistics).
    batch = engine.put_batch(digits_batches(1, GLOBAL_BATCH, channels=3)[0])
    engine.evaluate(carry, batch)  # Compiles for this shape unless another test did.
    compiled = engine._evaluate._cache_size()
    assert compiled >= 1
    engine.evaluate(carry, batch)
    assert engine._evaluate._cache_size() == compiled  # The same shape: no new one.


def test_engines_place_members_and_batches_as_documented(resnet_runs):
    _, results = resnet_runs
    P = jax.sharding.PartitionSpec
    jit_engine, jit_carry, _ = results["jit"]
    leaf = jax.tree.leaves(jit_carry.states[0].params)[0]
    assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 4
    chunk = jit_engine.put_chunk(_chunk(*digits_batches(2, GLOBAL_BATCH)))  # K = 2
    assert chunk.length == 2
    assert chunk.batches["image"].sharding.spec == P(None, "data")  # [K, B, ...]: B split
    assert {s.data.shape[:2] for s in chunk.batches["image"].addressable_shards} == {(2, 8)}
    batch = jit_engine.put_batch(digits_batches(1, GLOBAL_BATCH)[0])
    assert batch["image"].sharding.spec == P("data")

    pmap_engine, pmap_carry, _ = results["pmap"]
    assert jax.tree.leaves(pmap_carry.states[0].params)[0].shape[0] == 4  # leading device axis
    assert pmap_carry.alive.shape == (4, 1)
    chunk = pmap_engine.put_chunk(_chunk(*digits_batches(2, GLOBAL_BATCH)))
    assert chunk.batches["image"].shape == (4, 2, 8, 8, 8, 1)  # [devices, K, B / devices, ...]
    assert pmap_engine.synchronous and jit_engine.synchronous  # several CPU devices
    assert not results["one"][0].synchronous  # a single device keeps async dispatch


def test_put_chunk_rejects_the_wrong_layout(resnet_runs):
    _, results = resnet_runs
    flat = digits_batches(1, GLOBAL_BATCH)[0]
    for name in ("pmap", "jit"):
        engine = results[name][0]
        with pytest.raises(ValueError, match=r"axis 1 \(the batch\)"):
            engine.put_chunk(flat)  # [B, ...] without the leading K axis
        with pytest.raises(ValueError, match="divisible by this process's 4 devices"):
            engine.put_chunk(_chunk({k: v[:30] for k, v in flat.items()}))
        two = _chunk(flat, flat)
        for length in (0, 3):
            with pytest.raises(
                ValueError, match=r"length must be in \[1, 2\] \(the chunk's rows\)"
            ):
                engine.put_chunk(two, length)


def test_engine_config_validation():
    with pytest.raises(
        ValueError, match="train.engine='pjit' is not an engine; allowed: jit, pmap"
    ):
        engines.Engine("pjit", None, [], None, 10)
    with pytest.raises(ValueError, match="train.batch_size=30 is not divisible by the 4 devices"):
        engines.validate_batch_size(30, 4)
    with pytest.raises(ValueError, match="must be a positive int"):
        engines.validate_batch_size(0, 1)
    with pytest.raises(ValueError, match="train.eval_batch_size=100 is not divisible by the 8"):
        engines.validate_batch_size(100, 8, what="train.eval_batch_size")
    engines.validate_batch_size(100, 4, what="train.eval_batch_size")  # 100 splits over 4
    with pytest.raises(ValueError, match="devices must name at least one device"):
        engines.Engine("jit", None, [], None, 10, devices=[])
    with pytest.raises(ValueError, match="ZeRO-1.*grid of \\(2, 3\\) members"):
        engines.Engine("jit", None, [], None, 10, grid=(2, 3), shard_optimizer=True)


# ------------------------------------------------------------------- a grid of members

VALUES = (3e-3, 1e-2)  # The swept learning rates.
SEEDS = (0, 1)
IMPLEMENTATIONS = ("ours", "optax")
GRID_STEPS = 4  # Also K of the one-dispatch run.
GRID_BATCH = 16


def _swept_adams():
    """Adam, ours and the optax twin, with the learning rate held in the optimizer state."""
    section = {"name": "adam", "learning_rate": 1e-2, "schedule": "constant"}
    built = [
        optimizers.make_optimizer(
            section | {"implementation": impl}, GRID_STEPS, swept=("learning_rate",)
        )
        for impl in IMPLEMENTATIONS
    ]
    return [tx for tx, _ in built], built[0][1]


def _with_learning_rate(swept_txs, value):
    return [optimizers.with_values(tx, {"learning_rate": value}) for tx in swept_txs]


def _grid_members(model, swept_txs, values):
    """Step-0 members of the grid: values x SEEDS x implementations, as `adamlab compare`."""
    makers = [lambda v, tx=tx: optimizers.with_values(tx, v) for tx in swept_txs]
    txs = _with_learning_rate(swept_txs, values[0])
    values = {"learning_rate": np.asarray(values, np.float32)}
    return members.initial_members(model, txs, (8, 8, 1), SEEDS, values, makers)


def _seed_streams():
    """Each seed's own batch stream (the grid stacks them on the seed axis)."""
    batches = digits_batches(len(SEEDS) * GRID_STEPS, GRID_BATCH)
    return [batches[i * GRID_STEPS : (i + 1) * GRID_STEPS] for i in range(len(SEEDS))]


def _grid_chunk(streams, steps, nan_seeds=()):
    """Steps `steps` (0-based) of every seed, [K, seeds, B, ...]; NaN images for `nan_seeds`."""

    def batch(step):
        per_seed = [
            dict(s[step], image=np.full_like(s[step]["image"], np.nan)) if i in nan_seeds
            else s[step]
            for i, s in enumerate(streams)
        ]  # fmt: skip
        return jax.tree.map(lambda *xs: np.stack(xs), *per_seed)

    return _chunk(*[batch(step) for step in steps])


def _train_grid(engine, initial, streams, nan_at=None):
    """Trains GRID_STEPS chunks of K = 1; returns the host members after each step and metrics.

    `nan_at=(step, seeds)` replaces those seeds' images of that 1-based step by NaNs."""
    carry = engine.put_members(initial)
    after, history = [], []
    for step in range(GRID_STEPS):
        nan_seeds = nan_at[1] if nan_at and nan_at[0] == step + 1 else ()
        chunk = engine.put_chunk(_grid_chunk(streams, [step], nan_seeds))
        carry, metrics = engine.train(carry, chunk)
        after.append(engine.get_members(carry))
        history.append(jax.device_get(metrics))
    return after, history


def _member(carry, v, s, m):
    """Member (value v, seed s) of implementation m: its TrainState without grid axes."""
    return jax.tree.map(lambda x: x[v, s], carry.states[m])


@pytest.fixture(scope="module")
def grid_runs():
    """The grid on jit and pmap over 4 devices, and every grid point alone on 1 device."""
    model = models.create_model(CNN, NUM_CLASSES)
    swept, schedule = _swept_adams()
    streams = _seed_streams()
    grid = (len(VALUES), len(SEEDS))
    txs = _with_learning_rate(swept, VALUES[0])
    results = {}
    for name in ("jit", "pmap"):
        # conv_matmul: what the loop uses for a grid on CPU (adamlab.training.cpu_conv).
        engine = engines.Engine(name, model, txs, schedule, NUM_CLASSES, grid=grid,
                                conv_matmul=True)  # fmt: skip
        results[name] = (engine, *_train_grid(engine, _grid_members(model, swept, VALUES), streams))
    # One grid point at a time (grid (), both implementations, plain convolutions): the
    # learning rate lives in the optimizer state, so one program serves both values.
    engine = engines.Engine("jit", model, txs, schedule, NUM_CLASSES, devices=jax.devices()[:1])
    alone = {}
    for v, value in enumerate(VALUES):
        for s, seed in enumerate(SEEDS):
            run_txs = _with_learning_rate(swept, value)
            initial = members.initial_members(model, run_txs, (8, 8, 1), (seed,), {},
                                              [lambda _: None] * len(run_txs))  # fmt: skip
            carry, losses = engine.put_members(initial), []
            for batch in streams[s]:
                carry, metrics = engine.train(carry, engine.put_chunk(_chunk(batch)))
                losses.append(jax.device_get(metrics["loss"])[0])  # [implementations]
            alone[(v, s)] = (engine.get_members(carry), np.array(losses))
    return model, streams, results, alone


@pytest.mark.parametrize("engine", ["jit", "pmap"])
def test_grid_equals_members_trained_one_at_a_time(grid_runs, engine):
    """2 values x 2 seeds x (ours, optax) in one program == each grid point alone on 1 device."""
    _, _, results, alone = grid_runs
    _, after, history = results[engine]
    final = after[-1]
    assert final.alive.shape == (len(VALUES), len(SEEDS), len(IMPLEMENTATIONS))
    assert final.alive.all() and not final.diverged_at.any()
    for (v, s), (single, losses) in alone.items():
        assert single.alive.shape == (len(IMPLEMENTATIONS),)  # grid (): no grid axes
        for m, impl in enumerate(IMPLEMENTATIONS):
            member, state = _member(final, v, s, m), single.states[m]
            where = f"learning rate {VALUES[v]} seed {SEEDS[s]} {impl}"
            assert int(member.step) == int(state.step) == GRID_STEPS
            lr = member.opt_state.hyperparams["learning_rate"]
            assert float(lr) == pytest.approx(VALUES[v], rel=1e-7), where
            _assert_trees_close(member.params, state.params, f"{where} params")
            _assert_trees_close(member.opt_state, state.opt_state, f"{where} opt_state")
            np.testing.assert_array_equal(member.rng, state.rng)
        got = np.array([h["loss"][0, v, s] for h in history])  # [steps, implementations]
        np.testing.assert_allclose(got, losses, rtol=1e-5, err_msg=f"{v=} {s=}")
    # The members differ: seeds start from other parameters, values take other steps.
    kernels = final.states[0].params["Dense_1"]["kernel"]  # [values, seeds, ...]
    assert np.abs(kernels[0, 0] - kernels[0, 1]).max() > 1e-2
    assert np.abs(kernels[0, 0] - kernels[1, 0]).max() > 1e-3
    # Ours and the optax twin stayed together (parity measured 0 here; float32 rounding at most).
    assert final.parity.shape == (len(VALUES), len(SEEDS)) and final.parity.max() < 1e-5


@pytest.mark.parametrize("padded", [True, False])
def test_one_dispatch_of_k_steps_equals_k_dispatches(grid_runs, padded):
    """K = 4 steps in one dispatch == 4 dispatches of K = 1, bitwise: as the loop of traced
    length that CPU and TPU engines run (padded chunks) and as the `lax.scan` of known length
    that a GPU engine runs (forced here on the CPU)."""
    model, streams, results, _ = grid_runs
    engine, after, history = results["jit"]
    swept, schedule = _swept_adams()
    assert engine.padded_chunks  # the CPU's default
    if not padded:
        txs = _with_learning_rate(swept, VALUES[0])
        grid = (len(VALUES), len(SEEDS))
        engine = engines.Engine("jit", model, txs, schedule, NUM_CLASSES, grid=grid,
                                conv_matmul=True, padded_chunks=False)  # fmt: skip
        two_of_four = engines.pad_rows(_grid_chunk(streams, range(2)), GRID_STEPS)
        with pytest.raises(ValueError, match=r"give it exactly length=2 rows, not 4"):
            engine.put_chunk(two_of_four, 2)
    initial = engine.put_members(_grid_members(model, swept, VALUES))
    chunk = engine.put_chunk(_grid_chunk(streams, range(GRID_STEPS)))
    carry, metrics = engine.train(initial, chunk)
    assert_trees_equal(engine.get_members(carry), after[-1])
    metrics = jax.device_get(metrics)
    for key in members.LOGGED:
        assert metrics[key].shape == (GRID_STEPS, len(VALUES), len(SEEDS), len(IMPLEMENTATIONS))
        stepped = np.concatenate([h[key] for h in history])
        np.testing.assert_array_equal(metrics[key], stepped, err_msg=key)


@pytest.mark.parametrize("engine", ["jit", "pmap"])
def test_chunks_padded_to_one_capacity_share_one_program_and_its_numbers(grid_runs, engine):
    """Chunks of 1 and GRID_STEPS - 1 steps, each padded to GRID_STEPS + 2 rows, are one
    compiled program (the length is an argument, not a shape) and give bitwise the members and
    metrics of one step per dispatch; the padding rows are never trained (their metrics zero)."""
    model, streams, results, _ = grid_runs
    eng, after, history = results[engine]
    swept, _ = _swept_adams()
    capacity = GRID_STEPS + 2
    carry = eng.put_members(_grid_members(model, swept, VALUES))
    programs = eng._train[False]._cache_size() if engine == "jit" else None
    rows = []
    for steps in ([0], range(1, GRID_STEPS)):
        chunk = eng.put_chunk(engines.pad_rows(_grid_chunk(streams, steps), capacity), len(steps))
        carry, metrics = eng.train(carry, chunk)
        rows.append((jax.device_get(metrics), len(steps)))
    if engine == "jit":
        assert eng._train[False]._cache_size() == programs + 1  # one for both lengths
    assert_trees_equal(eng.get_members(carry), after[-1])
    for key in members.LOGGED:
        stepped = np.concatenate([h[key] for h in history])
        for metrics, length in rows:
            assert metrics[key].shape[0] == capacity, key
            assert not metrics[key][length:].any(), key  # padding: not trained
        trained = np.concatenate([metrics[key][:length] for metrics, length in rows])
        np.testing.assert_array_equal(trained, stepped, err_msg=key)


def test_diverged_member_is_frozen_and_the_others_are_untouched(grid_runs):
    """Learning rate 1e30 overflows at step 2 (both seeds); seed 1's batch of step 3 is NaN.

    The diverged members keep their last finite state with alive=False and diverged_at = the
    step; the member with neither (value 3e-3, seed 0) equals the undiverged grid bitwise.
    """
    model, streams, results, _ = grid_runs
    engine, clean, _ = results["jit"]  # The same compiled program: only the values differ.
    swept, _ = _swept_adams()
    initial = _grid_members(model, swept, (VALUES[0], 1e30))
    after, history = _train_grid(engine, initial, streams, nan_at=(3, (1,)))
    final = after[-1]
    expected_at = np.array([[[0, 0], [3, 3]], [[2, 2], [2, 2]]], np.int32)  # [v, s, impl]
    np.testing.assert_array_equal(final.diverged_at, expected_at)
    np.testing.assert_array_equal(final.alive, expected_at == 0)
    assert bool(history[0]["finite"].all())  # step 1 was finite for everyone
    assert not history[1]["finite"][0, 1].any()  # lr 1e30 at step 2
    assert not history[2]["finite"][0, 0, 1].any()  # the NaN batch at step 3
    for m in range(len(IMPLEMENTATIONS)):
        # Untouched: bitwise the undiverged run's state (params, moments, rng, step).
        assert_trees_equal(_member(final, 0, 0, m), _member(clean[-1], 0, 0, m))
        # Frozen at the state after the last finite step; only the step counter advances.
        for (v, s), last_finite in (((0, 1), after[1]), ((1, 0), after[0]), ((1, 1), after[0])):
            frozen, expected = _member(final, v, s, m), _member(last_finite, v, s, m)
            assert int(frozen.step) == GRID_STEPS
            assert_trees_equal(frozen.replace(step=expected.step), expected)
            assert all(np.isfinite(x).all() for x in jax.tree.leaves(frozen.params))


def test_conv_matmul_rewrites_the_train_step_and_leaves_evaluation_to_xla():
    """On CPU a scan or a grid computes the train step's convolutions as matmuls (faster in a
    loop); evaluation, in no loop, keeps XLA's convolutions (0.30-0.57x the time,
    benchmarks/eval_convolutions.py)."""
    model = models.create_model(CNN, NUM_CLASSES)
    tx = optax.adam(1e-3)
    engine = engines.Engine("jit", model, [tx], optax.constant_schedule(1e-3), NUM_CLASSES,
                            devices=jax.devices()[:1], conv_matmul=True)  # fmt: skip
    carry = engine.put_members(_one_run(model, tx, (8, 8, 1)))
    batch = digits_batches(2, GLOBAL_BATCH)
    chunk = engine.put_chunk(_chunk(*batch))
    train_text = engine._train[False].lower(carry, *chunk).as_text()
    eval_text = engine._evaluate.lower(carry, engine.put_batch(batch[0])).as_text()
    assert "convolution" not in train_text
    assert "convolution" in eval_text


def test_layer_stats_from_an_engine_built_without_them_is_refused():
    model = models.create_model(CNN, NUM_CLASSES)
    tx = optax.adam(1e-3)
    engine = engines.Engine("jit", model, [tx], optax.constant_schedule(1e-3), NUM_CLASSES,
                            devices=jax.devices()[:1])  # fmt: skip
    carry = engine.put_members(_one_run(model, tx, (8, 8, 1)))
    chunk = engine.put_chunk(_chunk(*digits_batches(1, GLOBAL_BATCH)))
    for call in (engine.train, engine.compile_train):
        with pytest.raises(ValueError, match="built without layer_stats"):
            call(carry, chunk, layer_stats=True)
