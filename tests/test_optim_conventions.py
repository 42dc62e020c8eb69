"""The `convention` argument: how it is reached and refused, transformations, low precision.

Numbers against optax, torch.optim and the papers are in test_optim_parity.py,
test_optim_torch.py and test_optim_paper.py; here: every alias and convention under jit,
vmap and inject_hyperparams, exact-zero gradients in float16/bfloat16 (optax #1754), float32
hyperparameters with bfloat16 params (optax #1414), and the errors.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adamlab import optim
from adamlab.optim import registry
from adamlab.optim.program import step_program

LR = 1e-2
SUPPORTED = [  # what the table offers: not PyTorch's AdaBelief, nor its Lion
    (name, convention)
    for name in optim.names()
    for convention in optim.CONVENTIONS
    if convention not in registry.entry(name).missing
]


def _tree(dtype):
    return {
        "w": jnp.linspace(-1.0, 1.0, 12, dtype=jnp.float32).reshape(3, 4).astype(dtype),
        "b": jnp.zeros(4, dtype),
    }


@pytest.mark.parametrize("name", optim.names())
def test_optax_is_the_default_and_the_same_program(name):
    params = _tree(jnp.float32)
    default = step_program(optim.create(name, learning_rate=LR), params)
    assert default == step_program(optim.create(name, learning_rate=LR, convention="optax"), params)
    assert "convention" in optim.hyperparameters(name)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("name,convention", SUPPORTED)
def test_exact_zero_gradients_never_give_nan_in_low_precision(name, convention, dtype):
    """optax #1754: eps = 1e-8 (AdaBelief: 1e-16) is 0 in float16, and 0 / (sqrt(0) + 0) is
    NaN. 10 steps: RAdam's rectified branch starts at step 5 or 6."""
    params = _tree(dtype)
    grads = jax.tree.map(jnp.zeros_like, params)
    grads["w"] = grads["w"].at[0].set(jnp.asarray(0.5, dtype))  # some coordinates do move
    tx = optim.create(name, learning_rate=LR, convention=convention)
    step = jax.jit(lambda p, s: tx.update(grads, s, p))
    state = tx.init(params)
    for _ in range(10):
        updates, state = step(params, state)
        params = optax.apply_updates(params, updates)
    for leaf in jax.tree.leaves((params, updates, state)):
        assert np.all(np.isfinite(np.asarray(leaf, np.float32))), (name, convention)
    assert params["w"].dtype == dtype
    moved = np.asarray(params["w"][0], np.float32) < np.linspace(-1, 1, 12)[:4]
    # SOAP rotates: the rotated gradient's zero coordinates are rounding noise, which Adam
    # normalises to steps of O(lr) in any direction; the row moves, not each coordinate down.
    assert moved.any() if name == "soap" else moved.all()


@pytest.mark.parametrize("name", ["adam", "adamw", "nadam", "amsgrad", "radam", "adabelief"])
def test_injected_hyperparameters_stay_float32_with_bfloat16_params(name):
    """optax #1414: optax.inject_hyperparams casts them to the params' dtype, and
    b2 = 0.999 is 1.0 in bfloat16. optim.inject_hyperparams keeps float32, the state keeps
    its dtypes from step to step (a scan carry), and the steps are those of the fixed
    hyperparameters (to bfloat16 rounding)."""
    params = _tree(jnp.bfloat16)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.25), params)
    factory = getattr(optim, name)
    # Upstream, b2 arrives as bfloat16 1.0; our validation refuses it rather than divide by 0.
    with pytest.raises(ValueError, match=r"b2 must be in \[0, 1\), got Array\(1, dtype=bfloat16"):
        optax.inject_hyperparams(factory)(learning_rate=LR).init(params)

    injected = optim.inject_hyperparams(factory)(learning_rate=LR)
    state = injected.init(params)
    assert all(v.dtype == jnp.float32 for v in state.hyperparams.values())
    assert float(state.hyperparams["b2"]) == pytest.approx(0.999)

    def body(carry, _):
        p, s = carry
        u, s = injected.update(grads, s, p)
        return (optax.apply_updates(p, u), s), None

    (p_injected, final), _ = jax.lax.scan(body, (params, state), None, length=5)
    assert jax.tree.map(lambda x: x.dtype, final) == jax.tree.map(lambda x: x.dtype, state)
    fixed, s = factory(LR), factory(LR).init(params)
    p_fixed = params
    for _ in range(5):
        u, s = fixed.update(grads, s, p_fixed)
        p_fixed = optax.apply_updates(p_fixed, u)
    for a, b in zip(jax.tree.leaves(p_injected), jax.tree.leaves(p_fixed), strict=True):
        assert a.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.float32(a), np.float32(b), rtol=2**-7, atol=2**-7)


@pytest.mark.parametrize("name,convention", SUPPORTED)
def test_every_convention_under_jit_vmap_and_inject_hyperparams(name, convention):
    params = jnp.stack([jnp.linspace(-1.0, 1.0, 5)] * 3)
    grads = jnp.stack([jnp.linspace(0.5, -0.5, 5), jnp.ones(5), jnp.zeros(5)])
    tx = optim.create(name, learning_rate=LR, convention=convention)

    def two_steps(g, p):
        s = tx.init(p)
        for _ in range(2):
            u, s = tx.update(g, s, p)
            p = optax.apply_updates(p, u)
        return p

    batched = jax.jit(jax.vmap(two_steps))(grads, params)
    for i in range(3):
        np.testing.assert_allclose(batched[i], two_steps(grads[i], params[i]), rtol=1e-6)
    # A learning-rate sweep in one program: convention is a static (string) argument.
    factory = getattr(optim, name)
    swept = jax.jit(
        jax.vmap(
            lambda lr: optim.inject_hyperparams(factory)(
                learning_rate=lr, convention=convention
            ).update(
                grads[0],
                optim.inject_hyperparams(factory)(learning_rate=lr, convention=convention).init(
                    params[0]
                ),
                params[0],
            )[0]
        )
    )(jnp.array([1e-3, 1e-2]))
    single = factory(1e-2, convention=convention)
    expected = single.update(grads[0], single.init(params[0]), params[0])[0]
    np.testing.assert_allclose(swept[1], expected, rtol=1e-4)


def test_conventions_that_do_not_exist_are_refused_clearly():
    with pytest.raises(
        ValueError,
        match=r"adabelief: convention='pytorch' does not exist: "
        r"torch.optim has no AdaBelief; use 'optax' or 'paper'",
    ):
        optim.create("adabelief", learning_rate=LR, convention="pytorch")
    with pytest.raises(ValueError, match=r"convention must be one of 'optax', 'pytorch', 'paper'"):
        optim.create("adam", learning_rate=LR, convention="keras")
    with pytest.raises(ValueError, match=r"nesterov=True exists only for convention='optax'"):
        optim.create("radam", learning_rate=LR, nesterov=True, convention="pytorch")
    with pytest.raises(ValueError, match=r"nesterov=True exists only for convention='optax'"):
        optim.create("adabelief", learning_rate=LR, nesterov=True, convention="paper")
    with pytest.raises(
        ValueError,
        match=r"bias_correction_nu=False cannot be combined with "
        r"convention='pytorch'",
    ):
        optim.create("amsgrad", learning_rate=LR, bias_correction_nu=False, convention="pytorch")
    with pytest.raises(
        ValueError,
        match=r"momentum_decay=0.004 cannot be combined with "
        r"convention='optax' \(optax's Nadam has no momentum schedule\)",
    ):
        optim.create("nadam", learning_rate=LR, momentum_decay=0.004)
    with pytest.raises(ValueError, match=r"reference\('adam'\) is optax's implementation"):
        optim.reference("adam", learning_rate=LR, convention="pytorch")


def test_convention_changes_the_update_where_the_table_says():
    """First steps: AMSGrad's conventions part at once (optax and PyTorch bias-correct, the
    paper does not); RAdam's at step 5 (rho_5 = 4.996: > 4 for the paper, < 5 otherwise)."""
    params, grads = jnp.ones(3), jnp.array([0.5, -1.0, 2.0])

    def steps(name, convention, n):
        tx = optim.create(name, learning_rate=LR, convention=convention)
        s, out = tx.init(params), []
        for _ in range(n):
            u, s = tx.update(grads, s, params)
            out.append(u)
        return out

    paper, optax_ = steps("amsgrad", "paper", 1)[0], steps("amsgrad", "optax", 1)[0]
    np.testing.assert_allclose(paper, optax_ * (1 - 0.9) / np.sqrt(1 - 0.999), rtol=1e-4)
    radam = {c: steps("radam", c, 6) for c in optim.CONVENTIONS}
    for t in range(4):
        np.testing.assert_allclose(radam["paper"][t], radam["optax"][t], rtol=1e-5)
    assert not np.allclose(radam["paper"][4], radam["optax"][4], rtol=1e-3)  # rectified
    np.testing.assert_allclose(radam["pytorch"][4], radam["optax"][4], rtol=1e-5)  # momentum
    assert (
        "ScaleByNadamState" in type(optim.nadam(LR, convention="pytorch").init(params)[0]).__name__
    )
