"""Train and eval steps on one device: learning, exact metrics, non-finite flag, donation, cache."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.special
from sklearn.datasets import load_digits

from adamlab import models
from adamlab.training.steps import make_eval_step, make_train_step
from adamlab.training.train_state import TrainState, create_train_state

NUM_CLASSES = 10
DROPOUT_MLP = {"name": "mlp", "hidden": (16,), "dropout_rate": 0.5}  # Cheap to compile.


class CountingSchedule:
    """A warmup-cosine schedule that counts its calls: calls happen only while jax traces."""

    def __init__(self):
        self.calls = 0
        self.schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-2, 4, 40)

    def __call__(self, step):
        self.calls += 1
        return self.schedule(step)


@pytest.fixture(scope="module")
def batch():
    images, labels = load_digits(return_X_y=True)
    return {
        "image": (images[:32] / 16.0).reshape(32, 8, 8, 1).astype(np.float32),
        "label": labels[:32].astype(np.int32),
    }


@pytest.fixture(scope="module")
def setup():
    """One small CNN, optimizer and jitted (donating) step shared by the tests."""
    model = models.create_model(
        {"name": "cnn", "features": (8,), "dense_features": 16}, NUM_CLASSES
    )
    schedule = CountingSchedule()
    tx = optax.adam(schedule)
    step = jax.jit(make_train_step(model, tx, schedule), donate_argnums=0)
    state = create_train_state(jax.random.key(0), model, tx, (8, 8, 1))
    return model, tx, schedule, step, jax.device_get(state)


def _fresh(state):
    """A device copy of the host state (the step donates its input)."""
    return jax.tree.map(jnp.array, state)


def _loss_and_logits(model, params, batch):
    logits = model.apply({"params": params}, batch["image"], train=True)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return loss, logits


def test_initial_state(setup):
    _, _, _, _, state = setup
    assert int(state.step) == 0 and state.step.dtype == jnp.int32
    assert state.rng.dtype == jnp.uint32  # raw key data: the state holds arrays only
    assert state.batch_stats == {}  # the CNN has no BatchNorm


def test_loss_decreases_on_a_fixed_batch(setup, batch):
    _, _, _, step, state = setup
    state = _fresh(state)
    losses = []
    for _ in range(20):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 20
    # 20 Adam steps (lr up to 3e-2) on 32 examples: memorisation is well under way.
    assert losses[-1] < 0.4 * losses[0], losses
    assert all(b <= a for a, b in zip(losses[5:], losses[6:], strict=False)), losses
    assert float(metrics["accuracy"]) > 0.8


def test_metrics_equal_independent_computations(setup, batch):
    model, tx, schedule, step, state = setup
    # Advance 2 steps so the learning rate is mid-warmup and the state is not the initial one.
    device_state = _fresh(state)
    for _ in range(2):
        device_state, _ = step(device_state, batch)
    before = jax.device_get(device_state)
    after, metrics = step(device_state, batch)
    metrics = jax.device_get(metrics)

    (loss, logits), grads = jax.jit(
        jax.value_and_grad(lambda p: _loss_and_logits(model, p, batch), has_aux=True)
    )(before.params)
    hand_correct = sum(
        int(np.argmax(row) == y) for row, y in zip(logits, batch["label"], strict=True)
    )
    assert metrics["accuracy"] == pytest.approx(hand_correct / 32, abs=1e-7)
    assert metrics["loss"] == pytest.approx(float(loss), rel=1e-5)
    assert metrics["learning_rate"] == pytest.approx(float(schedule.schedule(2)), rel=1e-6)
    # Mid-warmup: half the peak.
    assert metrics["learning_rate"] == pytest.approx(3e-2 * 2 / 4, rel=1e-6)
    assert metrics["grad_norm"] == pytest.approx(float(optax.tree.norm(grads)), rel=1e-4)

    updates, _ = jax.jit(tx.update)(grads, before.opt_state, before.params)
    assert metrics["update_norm"] == pytest.approx(float(optax.tree.norm(updates)), rel=1e-4)
    new_params = jax.device_get(after.params)
    assert metrics["param_norm"] == pytest.approx(float(optax.tree.norm(new_params)), rel=1e-6)
    assert metrics["update_param_ratio"] == pytest.approx(
        metrics["update_norm"] / metrics["param_norm"], rel=1e-6
    )
    assert bool(metrics["finite"]) is True
    assert int(after.step) == 3


def test_non_finite_input_sets_finite_false(setup, batch):
    _, _, _, step, state = setup
    bad = dict(batch, image=batch["image"].copy())
    bad["image"][3, 2, 2, 0] = np.nan
    new_state, metrics = step(_fresh(state), bad)
    assert bool(metrics["finite"]) is False
    assert not np.isfinite(float(metrics["loss"]))
    assert int(new_state.step) == 1  # the step reports; the loop decides to stop


def test_state_is_donated_and_step_compiles_once(setup, batch):
    _, _, schedule, step, state = setup
    device_state, _ = step(_fresh(state), batch)  # Compiles, unless an earlier test did.
    traced_before = schedule.calls
    size_before = step._cache_size()
    old_params = device_state.params
    device_state, _ = step(device_state, batch)
    assert all(x.is_deleted() for x in jax.tree.leaves(old_params))
    device_state, _ = step(device_state, batch)
    # Two more steps with the same shapes: no new trace, still one cache entry.
    assert schedule.calls == traced_before
    assert step._cache_size() == size_before == 1


def test_dropout_keys_differ_per_step_and_repeat_on_resume(batch):
    model = models.create_model(DROPOUT_MLP, NUM_CLASSES)
    tx = optax.sgd(0.0)  # zero learning rate: only the dropout mask changes between steps
    schedule = optax.constant_schedule(0.0)
    step = jax.jit(make_train_step(model, tx, schedule))
    state = create_train_state(0, model, tx, (8, 8, 1))
    _, first = step(state, batch)
    _, first_again = step(state, batch)
    _, second = step(state.replace(step=jnp.ones((), jnp.int32)), batch)
    assert float(first["loss"]) == float(first_again["loss"])  # fold_in(rng, step): reproducible
    assert float(first["loss"]) != float(second["loss"])  # a new mask every step


# ---------------------------------------------------------------------------------- eval step


def test_eval_sums_match_numpy_on_the_masked_batch(setup, batch):
    model, _, _, _, state = setup
    eval_step = jax.jit(make_eval_step(model, NUM_CLASSES))
    padded = {
        "image": np.concatenate([batch["image"], np.zeros((8, 8, 8, 1), np.float32)]),
        # Padding labels out of range on purpose: they must not index the confusion matrix.
        "label": np.concatenate([batch["label"], np.full(8, -1, np.int32)]),
        "mask": np.arange(40) < 32,
    }
    sums = jax.device_get(eval_step(state, padded))

    logits = np.asarray(model.apply({"params": state.params}, batch["image"], train=False))
    predictions = logits.argmax(-1)
    log_probs = scipy.special.log_softmax(logits.astype(np.float64), axis=-1)
    expected_confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for y, p in zip(batch["label"], predictions, strict=True):
        expected_confusion[y, p] += 1

    assert int(sums["count"]) == 32
    assert int(sums["correct"]) == int((predictions == batch["label"]).sum())
    np.testing.assert_array_equal(sums["confusion"], expected_confusion)
    expected_loss = -log_probs[np.arange(32), batch["label"]].sum()
    assert float(sums["loss_sum"]) == pytest.approx(expected_loss, rel=1e-5)


def test_eval_without_mask_counts_every_example(setup, batch):
    model, _, _, _, state = setup
    sums = jax.jit(make_eval_step(model, NUM_CLASSES))(state, batch)
    assert int(sums["count"]) == 32 and int(sums["confusion"].sum()) == 32


def test_train_state_accepts_seed_key_or_key_data():
    model = models.create_model(DROPOUT_MLP, NUM_CLASSES)  # Its init is compiled already.
    tx = optax.sgd(0.1)
    by_int = create_train_state(7, model, tx, (8, 8, 1))
    by_key = create_train_state(jax.random.key(7), model, tx, (8, 8, 1))
    by_data = create_train_state(jax.random.key_data(jax.random.key(7)), model, tx, (8, 8, 1))
    for other in (by_key, by_data):
        jax.tree.map(np.testing.assert_array_equal, by_int, other)
    assert isinstance(by_int, TrainState)
    with pytest.raises(ValueError, match="image_shape must be"):
        create_train_state(7, model, tx, (8, 8))
