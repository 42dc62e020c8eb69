"""Per-step parity of every adamlab optimizer with its optax twin.

Each case runs ours and `adamlab.optim.reference` (optax) for 500 jitted steps from the same
start on the same gradients, and compares parameters and the optimizer's moments leaf by leaf
at *every* step.

Tolerance. Both implementations evaluate the same float32 operations in the same order, so
each step is expected to agree to the last bit (and does, on XLA:CPU today). What two separately
compiled XLA programs may legitimately do differently is fuse or contract operations (an FMA
instead of a multiply and an add), a difference of at most a few ulp (~1e-7 relative) per
operation. The moment updates are contractions (factors b1, b2 < 1), so such differences do
not grow there; in the parameters they add up over steps at the scale of lr * 1e-7. A relative
tolerance of 1e-6 (with the same absolute floor for values near zero) therefore admits
compiler-level reordering over 500 steps while failing on any real difference in the update
rule: a wrong bias correction, eps placement or decay changes the first step by >= 1e-4.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adamlab import optim
from adamlab.optim import registry

NUM_STEPS = 500
RTOL = 1e-6
ATOL = 1e-6


def _decay_matrices(params):
    """Decay only weight matrices: the usual mask that exempts biases and scales."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


_SCHEDULE = optax.warmup_cosine_decay_schedule(0.0, 1e-2, 50, NUM_STEPS, 1e-4)
_B3_SCHEDULE = optax.linear_schedule(0.9, 0.9999, NUM_STEPS)  # any optax schedule of b3

# (case id, optimizer name, hyperparameters). Every alias, and every option the issue names:
# schedules, masks, nesterov, eps_root > 0, mu_dtype=bfloat16. Cautious's twin is optax's
# AdamW / Lion with the paper's one line (optax has no Cautious). MARS and Adam-mini have no
# twin (optax has neither): test_optim_torch.py and test_optim_paper.py prove them.
CASES = [
    ("adam", "adam", {}),
    ("adam-schedule", "adam", {"learning_rate": _SCHEDULE}),
    ("adam-eps_root", "adam", {"eps_root": 1e-8}),
    ("adam-mu_bf16", "adam", {"mu_dtype": jnp.bfloat16}),
    ("adam-nesterov", "adam", {"nesterov": True}),
    ("adamw", "adamw", {"weight_decay": 1e-2}),
    ("adamw-mask", "adamw", {"weight_decay": 1e-2, "mask": _decay_matrices}),
    ("adamw-schedules", "adamw", {"learning_rate": _SCHEDULE, "weight_decay": _SCHEDULE}),
    ("amsgrad", "amsgrad", {}),
    ("amsgrad-paper", "amsgrad", {"bias_correction_mu": False, "bias_correction_nu": False}),
    ("nadam", "nadam", {}),
    ("nadam-mu_bf16-eps_root", "nadam", {"mu_dtype": jnp.bfloat16, "eps_root": 1e-8}),
    ("nadamw", "nadamw", {"weight_decay": 1e-2, "mask": _decay_matrices}),
    ("radam", "radam", {}),
    ("radam-nesterov-threshold4", "radam", {"nesterov": True, "threshold": 4.0}),
    ("radamw", "radamw", {"weight_decay": 1e-2, "mask": _decay_matrices}),
    ("adamax", "adamax", {}),
    ("adamax-schedule", "adamax", {"learning_rate": _SCHEDULE}),
    ("adabelief", "adabelief", {}),
    ("adabelief-nesterov", "adabelief", {"nesterov": True, "eps_root": 1e-12}),
    ("lion", "lion", {}),
    ("lion-mu_bf16", "lion", {"mu_dtype": jnp.bfloat16}),
    (
        "lion-schedule-mask",
        "lion",
        {"learning_rate": _SCHEDULE, "weight_decay": 1e-2, "mask": _decay_matrices},
    ),
    ("lamb", "lamb", {}),
    ("lamb-eps_root-mu_bf16", "lamb", {"eps_root": 1e-8, "mu_dtype": jnp.bfloat16}),
    (
        "lamb-schedule-mask",
        "lamb",
        {"learning_rate": _SCHEDULE, "weight_decay": 1e-2, "mask": _decay_matrices},
    ),
    ("muon", "muon", {}),  # the dense kernel orthogonalised, conv kernels and biases NAdamW
    ("muon-no_nesterov-mu_bf16", "muon", {"nesterov": False, "mu_dtype": jnp.bfloat16}),
    (  # HWIO conv kernels as (H*W*I) x O matrices, decayed; an AdamW of its own rate
        "muon-conv-decay-adam_lr",
        "muon",
        {
            "learning_rate": _SCHEDULE,
            "weight_decay": 1e-2,
            "adam_learning_rate": 1e-3,
            "adam_weight_decay": 1e-2,
            "muon_weight_dimension_numbers": optim.conv_dimension_numbers,
        },
    ),
    ("muon-consistent_rms", "muon", {"consistent_rms": 0.2, "beta": 0.9}),
    ("cautious_adamw", "cautious_adamw", {"weight_decay": 1e-2}),
    (
        "cautious_adamw-nesterov-mask-mu_bf16",
        "cautious_adamw",
        {"nesterov": True, "mask": _decay_matrices, "mu_dtype": jnp.bfloat16},
    ),
    ("cautious_lion", "cautious_lion", {"caution_eps": 1e-3}),
    ("adopt", "adopt", {}),
    ("adopt-b2_0.5-schedule", "adopt", {"b2": 0.5, "learning_rate": _SCHEDULE}),
    ("adopt-nesterov-mu_bf16", "adopt", {"nesterov": True, "mu_dtype": jnp.bfloat16}),
    ("adopt-unclipped", "adopt", {"use_clipping": False}),
    ("adopt-clip_fn", "adopt", {"clip_value_fn": lambda count: 0.5 + 0.01 * count}),
    ("ademamix", "ademamix", {}),
    ("ademamix-eps_root-b3_0.999", "ademamix", {"b3": 0.999, "alpha": 8.0, "eps_root": 1e-8}),
    (
        "ademamix-warmups-decay-mask",
        "ademamix",
        {"alpha_warmup": 300, "b3_warmup": 400, "weight_decay": 1e-2, "mask": _decay_matrices},
    ),
    ("ademamix-schedules", "ademamix", {"learning_rate": _SCHEDULE, "b3": _B3_SCHEDULE}),
    ("schedule_free_adamw", "schedule_free_adamw", {}),
    (
        "schedule_free_adamw-warmup-decay-b1",
        "schedule_free_adamw",
        {"warmup_steps": 50, "weight_decay": 1e-2, "b1": 0.95},
    ),
    (
        "schedule_free_adamw-schedule-z_bf16",
        "schedule_free_adamw",
        {"learning_rate": _SCHEDULE, "state_dtype": jnp.bfloat16},
    ),
]


def _build(name, hparams):
    hparams = {"learning_rate": 1e-2, **hparams}
    return optim.create(name, **hparams), optim.reference(name, **hparams)


def _trajectory(tx, params, grad_fn, num_steps):
    """Params and optimizer state after each of `num_steps` updates, stacked on axis 0."""

    def step(carry, i):
        params, state = carry
        updates, state = tx.update(grad_fn(params, i), state, params)
        params = optax.apply_updates(params, updates)
        return (params, state), (params, state)

    _, history = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), jnp.arange(num_steps)))(
        params
    )
    return history


def _moments(state):
    """The fields of the Adam-family state (the first transform of the chain), by name; for a
    partition (Muon: matrices and the rest), those of each group's chain; for Schedule-Free,
    its z, its averaging scalars and its base's."""
    if hasattr(state, "z"):
        fields = ("b1", "weight_sum", "step_count", "max_lr", "z")
        return {f: getattr(state, f) for f in fields} | _moments(state.base_optimizer_state)
    inner = state[0]
    if isinstance(inner, dict):  # optax.partition's inner_states: label -> MaskedState
        return {label: _moments(group.inner_state) for label, group in inner.items()}
    return {field: getattr(inner, field) for field in inner._fields}


def _assert_close_per_step(ours, ref, what):
    for path_and_leaf, leaf_ref in zip(
        jax.tree_util.tree_leaves_with_path(ours), jax.tree.leaves(ref), strict=True
    ):
        path, leaf_ours = path_and_leaf
        a = np.asarray(leaf_ours, np.float64)
        b = np.asarray(leaf_ref, np.float64)
        assert a.shape == b.shape and a.shape[0] == NUM_STEPS
        bad = ~np.isclose(a, b, rtol=RTOL, atol=ATOL)
        if bad.any():
            first = int(np.argwhere(bad.reshape(NUM_STEPS, -1).any(axis=1))[0, 0])
            err = np.max(np.abs(a[first] - b[first]))
            pytest.fail(
                f"{what}{jax.tree_util.keystr(path)} differs from optax at step "
                f"{first + 1}: max abs diff {err:.3g}"
            )


def _random_tree(key):
    """CNN-like leaves (conv kernels, biases, a dense matrix), a None and an empty subtree."""
    keys = jax.random.split(key, 4)
    return {
        "conv": {"kernel": jax.random.normal(keys[0], (3, 3, 2, 4)), "bias": jnp.zeros(4)},
        "dense": {
            "kernel": jax.random.normal(keys[1], (16, 5)) * 0.3,
            "bias": jax.random.normal(keys[2], (5,)),
        },
        "scale": jnp.ones(()),
        "frozen": None,
        "empty": {},
    }


def _noisy_quadratic_grads(seed: int):
    """g = curvature * p + noise_t: feeds back the parameters, so trajectories can diverge.

    The noise is drawn up front with NumPy (standard normal, per leaf and step) and indexed in
    the scan: drawing it with jax.random inside the 500-step scan made threefry most of the
    test's time on CPU.
    """

    def grad_fn(params, step):
        leaves, treedef = jax.tree.flatten(params)
        grads = []
        for i, x in enumerate(leaves):
            noise = np.random.default_rng([seed, i]).standard_normal((NUM_STEPS, *x.shape))
            curvature = jnp.linspace(0.1, 3.0, x.size).reshape(x.shape)
            grads.append((curvature * x + jnp.asarray(noise, jnp.float32)[step]).astype(x.dtype))
        return jax.tree.unflatten(treedef, grads)

    return grad_fn


@pytest.mark.parametrize("case_id,name,hparams", CASES, ids=[c[0] for c in CASES])
def test_per_step_parity_on_random_pytree(case_id, name, hparams):
    key = jax.random.key(0)
    params = _random_tree(key)
    grad_fn = _noisy_quadratic_grads(seed=1)
    ours, ref = _build(name, hparams)
    params_ours, state_ours = _trajectory(ours, params, grad_fn, NUM_STEPS)
    params_ref, state_ref = _trajectory(ref, params, grad_fn, NUM_STEPS)
    assert jax.tree.structure(params_ours) == jax.tree.structure(params_ref)
    _assert_close_per_step(params_ours, params_ref, "params")
    _assert_close_per_step(_moments(state_ours), _moments(state_ref), "state")
    # The run must actually move the parameters, or parity would be vacuous.
    moved = jax.tree.map(lambda h, p0: float(jnp.max(jnp.abs(h[-1] - p0))), params_ours, params)
    assert max(jax.tree.leaves(moved)) > 1e-2


def _digits_problem():
    """A small MLP on scikit-learn's bundled digits (in memory, no TF), minibatch gradients."""
    import flax.linen as nn
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    images = jnp.asarray(images / 16.0, jnp.float32)
    labels = jnp.asarray(labels, jnp.int32)

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Dense(32)(x))
            return nn.Dense(10)(x)

    model = MLP()
    params = model.init(jax.random.key(0), images[:1])["params"]

    def loss_fn(params, x, y):
        logits = model.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def grad_fn(params, step):
        idx = jax.random.choice(jax.random.fold_in(jax.random.key(1), step), len(labels), (64,))
        return jax.grad(loss_fn)(params, images[idx], labels[idx])

    return params, grad_fn, lambda p: loss_fn(p, images, labels)


@pytest.fixture(scope="module")
def digits_problem():
    return _digits_problem()


# `test_per_step_parity_on_random_pytree` proves every optimizer per step; the real model is the
# same check on a network's gradients: in the default suite for one optimizer of each kind (a
# per-coordinate rule, a running maximum, a per-layer trust ratio, orthogonalised matrices, an
# averaged iterate), for all of them under `-m slow` (the default suite's time budget).
REAL_MODEL_DEFAULT = ("adam", "amsgrad", "lamb", "muon", "schedule_free_adamw")


@pytest.mark.parametrize(
    "name",
    [
        n if n in REAL_MODEL_DEFAULT else pytest.param(n, marks=pytest.mark.slow)
        for n in optim.names()
        if registry.entry(n).twin
    ],
)
def test_per_step_parity_on_a_real_model(name, digits_problem):
    params, grad_fn, full_loss = digits_problem
    hparams = {"learning_rate": 3e-3}
    if name == "radam":
        hparams["learning_rate"] = 1e-2  # RAdam's early steps are plain momentum SGD
    ours, ref = optim.create(name, **hparams), optim.reference(name, **hparams)
    params_ours, state_ours = _trajectory(ours, params, grad_fn, NUM_STEPS)
    params_ref, state_ref = _trajectory(ref, params, grad_fn, NUM_STEPS)
    _assert_close_per_step(params_ours, params_ref, "params")
    _assert_close_per_step(_moments(state_ours), _moments(state_ref), "state")
    # And it trains: the full-data loss falls well below its starting value (~2.3).
    final = jax.tree.map(lambda h: h[-1], params_ours)
    assert float(full_loss(final)) < 0.5 * float(full_loss(params))


@pytest.mark.parametrize(
    "name",
    [
        "adam",
        "adamw",
        "nadam",
        "amsgrad",
        "lion",
        "lamb",
        "muon",
        "cautious_adamw",
        "adopt",
        "ademamix",
        "schedule_free_adamw",
    ],
)
def test_mixed_precision_parity_with_bfloat16_params(name):
    """bfloat16 params (mixed precision) keep their dtype and track optax step by step.

    In bfloat16 one ulp is 2**-8 relative, so the float32 tolerance is replaced by one that
    admits a single-ulp rounding difference per element (2**-7 relative); no difference is
    expected with identical operation order.
    """
    key = jax.random.key(2)
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _random_tree(key))
    grad_fn = _noisy_quadratic_grads(seed=1)
    ours, ref = _build(name, {})
    (p_ours, s_ours), (p_ref, s_ref) = (_trajectory(tx, params, grad_fn, 100) for tx in (ours, ref))
    for a, b in zip(jax.tree.leaves(p_ours), jax.tree.leaves(p_ref), strict=True):
        assert a.dtype == b.dtype == jnp.bfloat16
        np.testing.assert_allclose(
            np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=2**-7, atol=2**-7
        )
    for a, b in zip(
        jax.tree.leaves(_moments(s_ours)), jax.tree.leaves(_moments(s_ref)), strict=True
    ):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(
            np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=2**-7, atol=2**-7
        )


@pytest.mark.parametrize("case_id,name,hparams", CASES, ids=[c[0] for c in CASES])
def test_lowers_to_the_same_xla_program_as_optax(case_id, name, hparams):
    """Ours and the twin compile from the same HLO (up to value names): the same operations in
    the same order, hence bitwise-equal results and equal speed on every backend."""
    from adamlab.optim.program import step_program

    params = _random_tree(jax.random.key(0))
    ours, ref = _build(name, hparams)
    assert step_program(ours, params) == step_program(ref, params)


def test_program_comparison_detects_a_different_update_rule():
    from adamlab.optim.program import step_program

    params = _random_tree(jax.random.key(0))
    assert step_program(optim.adam(1e-3), params) != step_program(
        optim.adam(1e-3, eps=1e-7), params
    )
    assert step_program(optim.adam(1e-3), params) != step_program(optim.nadam(1e-3), params)
