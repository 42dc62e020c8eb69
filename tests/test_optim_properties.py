"""Properties of our optimizers that follow from the papers, independent of optax.

Hand-derived first steps, identities between variants, convergence on classic test functions,
behaviour under JAX transformations and optax wrappers, dtypes, and multi-device equivalence.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest

from adamlab import optim
from adamlab.optim import registry, validation

LR = 1e-2
# Ours with an optax twin (`optim.reference`); SOAP has none (tests/test_optim_soap.py).
GRAD = jnp.array([0.5, -2.0, 3e-3, -7.0])
PARAMS = jnp.array([1.0, -1.0, 0.5, 2.0])


def _first_update(tx, grads=GRAD, params=PARAMS):
    updates, _ = tx.update(grads, tx.init(params), params)
    return updates


# --- The first step, by hand --------------------------------------------------------------
# After one step m_1 = (1-b1) g and v_1 = (1-b2) g^2, so the bias-corrected moments are g and
# g^2 exactly and, with eps -> 0, Adam moves every coordinate by lr in the direction -sign(g),
# whatever the gradient's scale (Kingma & Ba 2015, Section 2.1).
#
# Tolerance: in float32, 0.999 is stored as 0.99900001 and the bias correction 1 - b2^t is
# computed in float32 (as in optax), so (1 - b2) and 1 - b2^1 differ by ~2^-24 / (1 - b2)
# = 6e-5 relative: the exact identity holds to ~1e-4, not to float32 epsilon.
FIRST_STEP_RTOL = 1e-4


@pytest.mark.parametrize("name", ["adam", "amsgrad", "adamax"])
def test_first_step_is_minus_lr_times_sign_of_gradient(name):
    tx = optim.create(name, learning_rate=LR, eps=0.0)
    np.testing.assert_allclose(_first_update(tx), -LR * jnp.sign(GRAD), rtol=FIRST_STEP_RTOL)


def test_adamw_first_step_adds_decoupled_decay():
    tx = optim.adamw(LR, eps=0.0, weight_decay=0.1)
    np.testing.assert_allclose(
        _first_update(tx), -LR * (jnp.sign(GRAD) + 0.1 * PARAMS), rtol=FIRST_STEP_RTOL
    )


def test_nadam_first_step_looks_one_step_ahead():
    # m_hat = b1 m_1 / (1 - b1^2) + (1 - b1) g / (1 - b1) = g (1 + b1 / (1 + b1)).
    b1 = 0.9
    tx = optim.nadam(LR, b1=b1, eps=0.0)
    np.testing.assert_allclose(
        _first_update(tx), -LR * (1 + b1 / (1 + b1)) * jnp.sign(GRAD), rtol=FIRST_STEP_RTOL
    )


def test_radam_first_steps_are_momentum_sgd():
    # rho_1 = 1 < threshold: the update is the bias-corrected first moment, i.e. -lr * g.
    tx = optim.radam(LR)
    np.testing.assert_allclose(_first_update(tx), -LR * GRAD, rtol=FIRST_STEP_RTOL)


def test_adabelief_first_step():
    # s_1 = (1-b2) (g - (1-b1) g)^2 = (1-b2) b1^2 g^2, so s_hat = b1^2 g^2 and the step is
    # -lr * sign(g) / b1 (eps, eps_root -> 0).
    b1 = 0.9
    tx = optim.adabelief(LR, b1=b1, eps=0.0, eps_root=0.0)
    np.testing.assert_allclose(_first_update(tx), -LR * jnp.sign(GRAD) / b1, rtol=FIRST_STEP_RTOL)


def test_lion_first_steps_are_the_sign_of_the_interpolated_momentum():
    """Step 1: m_0 = 0, so c_1 = (1 - b1) g and the update is -lr (sign(g) + wd theta).
    Step 2: c_2 = b1 (1 - b2) g_1 + (1 - b1) g_2, chosen so that the momentum outvotes the
    gradient in the first coordinate (0.009 - 0.005 > 0) but not in the others."""
    b1, b2, wd = 0.9, 0.99, 0.1
    tx = optim.lion(LR, b1=b1, b2=b2, weight_decay=wd)
    g1, g2 = jnp.array([1.0, 1.0, -1.0]), jnp.array([-0.05, -0.2, 0.5])
    params = jnp.array([1.0, -2.0, 0.5])
    updates, state = tx.update(g1, tx.init(params), params)
    np.testing.assert_allclose(updates, -LR * (jnp.sign(g1) + wd * params), rtol=1e-6)
    np.testing.assert_allclose(state[0].mu, (1 - b2) * g1, rtol=1e-6)
    updates, _ = tx.update(g2, state, params)
    interpolated = b1 * (1 - b2) * g1 + (1 - b1) * g2
    np.testing.assert_array_equal(jnp.sign(interpolated), jnp.array([1.0, -1.0, 1.0]))
    np.testing.assert_allclose(updates, -LR * (jnp.sign(interpolated) + wd * params), rtol=1e-6)


def test_lamb_first_step_is_the_sign_scaled_to_the_weights_norm():
    """eps -> 0: Adam's first direction is sign(g), of norm sqrt(n); the trust ratio rescales
    it to ||w||: w = (3, -4), ||w|| = 5, g = (1, 1) moves by -lr 5/sqrt(2) (1, 1). A zero
    layer (a fresh bias) keeps ratio 1: -lr sign(g)."""
    tx = optim.lamb(LR, eps=0.0)
    params = {"w": jnp.array([3.0, -4.0]), "b": jnp.zeros(3)}
    grads = {"w": jnp.array([1.0, 1.0]), "b": jnp.array([0.5, -2.0, 1.0])}
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -LR * 5 / np.sqrt(2) * np.ones(2), rtol=1e-6)
    # 1 - b2 rounded in float32 (FIRST_STEP_RTOL); the norms' ratio is exact.
    np.testing.assert_allclose(updates["b"], -LR * np.sign(grads["b"]), rtol=FIRST_STEP_RTOL)


def _quintic(x, steps=5):
    """Muon's Newton-Schulz map on one singular value: x -> a x + b x^3 + c x^5, `steps` times."""
    a, b, c = optim.transform.MUON_NS_COEFFS
    for _ in range(steps):
        x = a * x + b * x**3 + c * x**5
    return x


def test_muon_first_step_by_hand():
    """A rank-1 gradient g = ones(4, 3) has one singular value, ||g||_F: normalised it is 1,
    and five quintic steps take it to q = p^5(1) (p(1) = a + b + c = 0.701, then on). The
    Nesterov momentum of step 1 is a multiple of g, so the matrix moves by
    -lr sqrt(max(1, 3/4)) q g / ||g||_F. The bias (AdamW with Nesterov, optax's NAdamW) moves
    by -lr (1 + b1/(1 + b1)) sign(g) as eps -> 0."""
    tx = optim.muon(LR, eps=0.0)
    params = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
    grads = {"w": jnp.ones((4, 3)), "b": jnp.array([0.5, -2.0, 1.0])}
    updates, _ = tx.update(grads, tx.init(params), params)
    q = _quintic(1.0)
    np.testing.assert_allclose(updates["w"], -LR * q / np.sqrt(12) * np.ones((4, 3)), rtol=1e-5)
    nesterov = 1 + 0.9 / 1.9  # b1 m_1 / (1 - b1^2) + (1 - b1) g / (1 - b1), over g
    expected = -LR * nesterov * np.sign(grads["b"])
    np.testing.assert_allclose(updates["b"], expected, rtol=FIRST_STEP_RTOL)


# Muon's band. Newton-Schulz acts on each singular value alone (X = U S V^T gives
# p(X) = U p(S) V^T), so the update's singular values are p^5(s_i / ||G||_F). Scanning p^5 over
# x in [2e-3, 1] with NumPy gives the band [0.6818, 1.2024]: the quintic's slope at 0
# (a = 3.4445) lifts small values fast but its coefficients trade convergence for that, so
# values oscillate around 1 instead of reaching it (Jordan: S' ~ Uniform(0.5, 1.5) for less
# well-conditioned inputs; below x = 1.6e-3, p^5(x) < 0.7). Hence [0.68, 1.21].
MUON_BAND = (0.68, 1.21)
MUON_BAND_FROM = 2e-3  # the smallest normalised singular value the band covers


def test_muon_band_of_the_quintic_is_what_numpy_finds():
    x = np.linspace(MUON_BAND_FROM, 1.0, 1_000_001)
    y = _quintic(x)
    assert MUON_BAND[0] <= y.min() < 0.69 and 1.20 < y.max() <= MUON_BAND[1]
    assert _quintic(1.5e-3) < 0.7  # the band needs the lower limit


@pytest.mark.parametrize("shape", [(64, 16), (16, 64), (128, 8), (24, 24)])
def test_muon_orthogonalised_update_has_singular_values_in_the_band(shape):
    g = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    normalised = np.linalg.svd(g / np.linalg.norm(g), compute_uv=False)
    assume = normalised.min() >= MUON_BAND_FROM  # true for these shapes and seeds
    assert assume, normalised.min()
    tx = optim.scale_by_muon(nesterov=False, eps=0.0)  # step 1: the momentum's m_hat is g
    u, _ = tx.update(jnp.asarray(g), tx.init(jnp.asarray(g)))
    width = np.sqrt(max(1.0, shape[1] / shape[0]))  # sqrt(max(1, fan_out / fan_in))
    s = np.linalg.svd(np.asarray(u, np.float64) / width, compute_uv=False)
    assert MUON_BAND[0] <= s.min() and s.max() <= MUON_BAND[1], (s.min(), s.max())
    # And each is p^5 of its input's: the update is U p^5(S) V^T.
    np.testing.assert_allclose(s, np.sort(_quintic(normalised))[::-1], rtol=0, atol=2e-4)


def test_lamb_moves_each_layer_by_lr_times_its_norm():
    """Weight decay 0: the trust ratio makes every layer's step ||w|| lr, at every step,
    whatever the gradients' scale (a layer of zeros would keep ratio 1)."""
    keys = jax.random.split(jax.random.key(3), 6)
    params = {
        "w": jax.random.normal(keys[0], (8, 5)),
        "k": jax.random.normal(keys[1], (3, 3, 2, 4)) * 0.1,
        "b": jax.random.normal(keys[2], (5,)) * 1e-3,
    }
    tx, lr = optim.lamb(LR), LR
    state = tx.init(params)
    for step in range(3):
        key, scale = keys[3 + step], 10.0**step  # gradients of any scale
        grads = jax.tree.map(lambda p, k=key, c=scale: jax.random.normal(k, p.shape) * c, params)
        updates, state = tx.update(grads, state, params)
        for name in params:
            np.testing.assert_allclose(
                jnp.linalg.norm(updates[name]), lr * jnp.linalg.norm(params[name]), rtol=1e-5
            )
        params = optax.apply_updates(params, updates)


def test_cautious_first_steps_by_hand():
    """Step 1: m_1 = (1 - b1) g agrees in sign with g everywhere, so C-AdamW's first step is
    AdamW's, -lr (sign(g) + wd theta) (eps -> 0). Step 2: u_2 has the sign of
    m_2 = b1 (1 - b1) g_1 + (1 - b1) g_2 = 0.09 g_1 + 0.1 g_2, chosen to disagree with g_2 in
    coordinates 0 (0.085 > 0, g < 0) and 2 (-0.04 < 0, g > 0): phi = [0, 1, 0, 1], its mean
    1/2, and the kept coordinates move twice as far as AdamW's."""
    b1, b2, wd = 0.9, 0.999, 0.1
    tx = optim.cautious_adamw(LR, b1=b1, b2=b2, eps=0.0, weight_decay=wd)
    g1, g2 = jnp.array([1.0, 1.0, -1.0, 1.0]), jnp.array([-0.05, -2.0, 0.5, 3.0])
    updates, state = tx.update(g1, tx.init(PARAMS), PARAMS)
    np.testing.assert_allclose(updates, -LR * (jnp.sign(g1) + wd * PARAMS), rtol=FIRST_STEP_RTOL)
    updates, _ = tx.update(g2, state, PARAMS)
    m = b1 * (1 - b1) * g1 + (1 - b1) * g2
    v = b2 * (1 - b2) * g1**2 + (1 - b2) * g2**2
    u = (m / (1 - b1**2)) / jnp.sqrt(v / (1 - b2**2))
    np.testing.assert_array_equal(u * g2 > 0, jnp.array([False, True, False, True]))
    phi = jnp.array([0.0, 1.0, 0.0, 1.0])
    expected = -LR * (u * phi / (0.5 + 1e-8) + wd * PARAMS)
    np.testing.assert_allclose(updates, expected, rtol=FIRST_STEP_RTOL)


@pytest.mark.parametrize("name,base", [("cautious_adamw", "adamw"), ("cautious_lion", "lion")])
def test_cautious_with_all_signs_agreeing_is_its_base(name, base):
    """Gradients of a fixed sign per coordinate keep m_t (and so u_t) of that sign: the mask is
    all ones, the reference's rescaling 1 / (1 + eps), which is 1 in float32 for eps = 1e-8:
    C-AdamW is AdamW and C-Lion is Lion, bit for bit, over 200 steps. With eps = 1e-3 the
    direction is the base's divided by 1 + eps (decay off)."""
    rng = np.random.default_rng(0)
    signs = np.where(rng.random(6) < 0.5, -1.0, 1.0).astype(np.float32)
    grads = jnp.asarray(signs * (np.abs(rng.normal(size=(200, 6))) + 1e-3).astype(np.float32))
    p0 = jnp.asarray(rng.normal(size=6).astype(np.float32))

    def run(tx):
        def step(carry, g):
            p, state = carry
            updates, state = tx.update(g, state, p)
            return (optax.apply_updates(p, updates), state), updates

        return jax.jit(lambda: jax.lax.scan(step, (p0, tx.init(p0)), grads)[1])()

    np.testing.assert_array_equal(
        run(optim.create(name, learning_rate=LR)), run(optim.create(base, learning_rate=LR))
    )
    eps = 1e-3
    cautious = run(optim.create(name, learning_rate=LR, weight_decay=0.0, caution_eps=eps))
    plain = run(optim.create(base, learning_rate=LR, weight_decay=0.0))
    np.testing.assert_allclose(cautious, plain / (1 + eps), rtol=1e-6)


def test_adopt_first_steps_by_hand():
    """Step 1 (count 0) reads g_0 into v_0 = g_0^2 and takes no step; step 2 moves by
    -lr (1 - b1) clip(g_1 / max(|g_0|, eps), 1^(1/4)); step 3 clips at c_2 = 2^(1/4)."""
    b1, b2, eps = 0.9, 0.9999, 1e-6
    tx = optim.adopt(LR, b1=b1, b2=b2, eps=eps)
    g0 = jnp.array([0.5, -2.0, 3e-3, -7.0, 0.0])
    g1 = jnp.array([1.0, -1.0, 6e-3, -3.5, 1e-7])  # ratios 2 (clipped), -0.5, 2, -0.5, 0.1
    params = jnp.zeros(5)
    updates, state = tx.update(g0, tx.init(params), params)
    np.testing.assert_array_equal(updates, jnp.zeros(5))
    np.testing.assert_array_equal(state[0].nu, g0 * g0)
    np.testing.assert_array_equal(state[0].mu, jnp.zeros(5))
    updates, state = tx.update(g1, state, params)
    normalised = jnp.array([1.0, -0.5, 1.0, -0.5, 0.1])  # g_1 / max(|g_0|, eps), clipped at 1
    np.testing.assert_allclose(updates, -LR * (1 - b1) * normalised, rtol=1e-6)
    # optax forms 1 - b2 from b2 as a float32 array: 1 - fl32(0.9999) is 1.7e-4 too large (the
    # g_1^2 term of the last coordinate shows it); the paper convention forms it exactly.
    v1 = b2 * g0 * g0 + (1 - b2) * g1 * g1
    np.testing.assert_allclose(state[0].nu, v1, rtol=2e-4)
    paper = optim.adopt(LR, b1=b1, b2=b2, eps=eps, convention="paper")
    paper_state = paper.update(g0, paper.init(params), params)[1]
    np.testing.assert_allclose(paper.update(g1, paper_state, params)[1][0].nu, v1, rtol=1e-6)
    g2 = 5.0 * g0  # |g_2| / sqrt(v_1) ~ 5 > 2^(1/4): clipped at c_2
    updates, _ = tx.update(g2, state, params)
    clipped = jnp.clip(g2 / jnp.maximum(jnp.sqrt(state[0].nu), eps), -(2**0.25), 2**0.25)
    assert np.allclose(jnp.abs(clipped[:4]), 2**0.25)
    expected = -LR * (b1 * (1 - b1) * normalised + (1 - b1) * clipped)
    np.testing.assert_allclose(updates, expected, rtol=1e-6)


def test_adopt_converges_on_reddi_et_al_counterexample_where_adam_fails():
    """Reddi, Kale & Kumar 2018, Section 3 (Theorem 1): online f_t(x) = C x for t mod 3 = 1,
    else -x, on [-1, 1], with C = 3 > 2: the regret-minimising point is x = -1 (the average
    gradient is (C - 2)/3 > 0), yet Adam with b1 = 0 and b2 = 1/(1 + C^2) goes to +1. ADOPT at
    that b2 reaches -1 (Taniguchi et al., Section 6: it converges with any b2). The step size
    is Reddi et al.'s alpha / sqrt(t), the iterate projected onto [-1, 1]."""
    c, steps = 3.0, 3000
    b2 = 1 / (1 + c * c)
    rate = lambda count: 0.1 / jnp.sqrt(count + 1.0)  # noqa: E731

    def iterates(tx):
        def body(carry, t):
            x, state = carry
            g = jnp.where(t % 3 == 1, c, -1.0)[None]  # t = 1, 2, ...
            updates, state = tx.update(g, state, x)
            x = jnp.clip(optax.apply_updates(x, updates), -1.0, 1.0)
            return (x, state), x[0]

        x0 = jnp.zeros(1)
        run = jax.jit(lambda x: jax.lax.scan(body, (x, tx.init(x)), jnp.arange(1, steps + 1)))
        return np.asarray(run(x0)[1])

    adam, adopt = (
        iterates(optim.adam(rate, b1=0.0, b2=b2)),
        iterates(optim.adopt(rate, b1=0.0, b2=b2)),
    )
    assert adam[-300:].min() > 0.99  # Adam sits at the wrong end, +1
    assert adopt[-300:].max() < -0.99  # ADOPT at the optimum, -1
    assert adopt[-1] == pytest.approx(-1.0, abs=5e-3)


def test_ademamix_first_step_by_hand():
    """m1_hat = g and nu_hat = g^2 after one step, m2 = (1 - b3) g (not bias-corrected), so
    with eps -> 0 the step is -lr (sign(g) (1 + alpha (1 - b3)) + wd theta). With the
    warmups optax evaluates alpha(t) at the count before the step (alpha(0) = 0: Adam's
    first step), the paper at t = 1: alpha / T_alpha, and b3(1) by its half-life formula."""
    b1, b3, alpha, wd = 0.9, 0.999, 5.0, 0.1
    tx = optim.ademamix(LR, b1=b1, b3=b3, alpha=alpha, eps=0.0, weight_decay=wd)
    expected = -LR * (jnp.sign(GRAD) * (1 + alpha * (1 - b3)) + wd * PARAMS)
    np.testing.assert_allclose(_first_update(tx), expected, rtol=FIRST_STEP_RTOL)
    warmups = {"b1": b1, "b3": b3, "alpha": alpha, "eps": 0.0, "alpha_warmup": 10}
    warmups["b3_warmup"] = 20
    tx = optim.ademamix(LR, **warmups)
    np.testing.assert_allclose(_first_update(tx), -LR * jnp.sign(GRAD), rtol=FIRST_STEP_RTOL)
    tx = optim.ademamix(LR, **warmups, convention="paper")
    a = 1 / 20
    b3_1 = np.exp(np.log(b1) * np.log(b3) / ((1 - a) * np.log(b3) + a * np.log(b1)))
    assert b1 < b3_1 < b3
    expected = -LR * jnp.sign(GRAD) * (1 + alpha / 10 * (1 - b3_1))
    np.testing.assert_allclose(_first_update(tx), expected, rtol=FIRST_STEP_RTOL)


@pytest.mark.parametrize("convention", optim.CONVENTIONS)
def test_schedule_free_first_steps_by_hand(convention):
    """Step 1: c_2 = w_1 / w_1 = 1, so x_2 = z_2 = y_2 = y_1 - gamma_1 (u_1 + wd y_1), with
    u_1 = sign(g) for eps -> 0 in every convention. The paper's gamma_t carries k_t =
    sqrt(1 - b2^t) and its denominator none, so its Adam step is the same but its decay is k_t
    times smaller and its weights gamma_t^2 grow: c_3 = k_2^2 / (k_1^2 + k_2^2), 1/2 for
    optax and PyTorch. Step 2: x_3 = (1 - c_3) x_2 + c_3 z_3, the params are
    y_3 = (1 - b1) z_3 + b1 x_3 and the point evaluated is x (`schedule_free_eval_params`)."""
    b1, b2, wd = 0.8, 0.5, 0.1
    k = (lambda t: np.sqrt(1 - b2**t)) if convention == "paper" else (lambda t: 1.0)
    tx = optim.schedule_free_adamw(
        LR, b1=b1, b2=b2, eps=0.0, weight_decay=wd, convention=convention
    )
    state = tx.init(PARAMS)
    updates, state = tx.update(GRAD, state, PARAMS)
    z2 = PARAMS - LR * (jnp.sign(GRAD) + k(1) * wd * PARAMS)
    y2 = optax.apply_updates(PARAMS, updates)
    np.testing.assert_allclose(y2, z2, rtol=1e-6)
    np.testing.assert_allclose(optim.schedule_free_eval_params(state, y2), z2, rtol=1e-6)
    g2 = -3 * GRAD  # v_2 = b2 (1 - b2) g^2 + (1 - b2) 9 g^2, bias-corrected by 1 - b2^2
    v_hat = (b2 * (1 - b2) + (1 - b2) * 9) * GRAD**2 / (1 - b2**2)
    updates, state = tx.update(g2, state, y2)
    z3 = z2 - LR * (g2 / jnp.sqrt(v_hat) + k(2) * wd * y2)
    c3 = k(2) ** 2 / (k(1) ** 2 + k(2) ** 2)
    x3 = (1 - c3) * z2 + c3 * z3
    np.testing.assert_allclose(state.z, z3, rtol=1e-6)
    y3 = optax.apply_updates(y2, updates)
    np.testing.assert_allclose(y3, (1 - b1) * z3 + b1 * x3, rtol=1e-6)
    np.testing.assert_allclose(optim.schedule_free_eval_params(state, y3), x3, rtol=1e-6)


def test_schedule_free_average_is_the_mean_of_the_z_iterates():
    """With a constant learning rate the weights gamma^2 are equal: x_{T+1} is the plain mean
    of z_2, ..., z_{T+1} (c_{t+1} = 1/t; Defazio et al., Section 2: x is an online average),
    and with a warmup the gamma_t^2-weighted mean. Ours' state and optax's give the same x."""
    rng = np.random.default_rng(3)
    grads = jnp.asarray(rng.normal(size=(30, 4)), jnp.float32)
    for warmup in (None, 10):
        tx = optim.schedule_free_adamw(LR, warmup_steps=warmup, weight_decay=1e-2)
        twin = optax.contrib.schedule_free_adamw(LR, warmup_steps=warmup, weight_decay=1e-2)
        params, state, zs = PARAMS, tx.init(PARAMS), []
        for g in grads:
            updates, state = tx.update(g, state, params)
            params = optax.apply_updates(params, updates)
            zs.append(state.z)
        t = np.arange(1, 31)
        weights = np.minimum(1.0, t / warmup) ** 2 if warmup else np.ones(30)
        expected = np.average(np.stack(zs), axis=0, weights=weights)
        x = optim.schedule_free_eval_params(state, params)
        np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-6)
        params, state = PARAMS, twin.init(PARAMS)
        for g in grads:
            updates, state = twin.update(g, state, params)
            params = optax.apply_updates(params, updates)
        twin_x = optax.contrib.schedule_free_eval_params(state, params)
        np.testing.assert_array_equal(optim.schedule_free_eval_params(state, params), twin_x)


def _run(tx, params, grads):
    """Params and the rescaling's state after each of the fixed `grads`, jitted (a scan)."""

    def step(carry, g):
        params, state = carry
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
        return (params, state), (params, state[0])

    return jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), grads)[1])(params)


_TREE_GRADS = {  # 100 fixed gradients of a kernel (in, out), a bias and a scalar
    "kernel": jax.random.normal(jax.random.key(3), (100, 4, 3)),
    "bias": jax.random.normal(jax.random.key(4), (100, 3)),
    "scale": jax.random.normal(jax.random.key(5), (100,)),
}
_TREE = {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3), "scale": jnp.array(0.5)}


@pytest.mark.parametrize("convention", ["optax", "paper"])
def test_mars_without_correction_and_clipping_is_adamw(convention):
    """gamma = 0 makes c_t = g_t exactly and use_clipping=False leaves it: MARS-AdamW is then
    AdamW operation for operation, bitwise over 100 steps (params and moments). "optax" is
    adamw's optax convention; "paper" is Adam's paper convention with MARS's decay (the
    learning rate times lambda theta, Yuan et al. Alg. 2), which is adamw's optax place of it.
    ("pytorch" divides by (sqrt(v) + eps) / sqrt(1 - b2^t), pytorch_optimizer's place of eps,
    not torch.optim.AdamW's: no exact identity there.)"""
    hparams = {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 1e-2}
    mars = optim.mars_adamw(LR, **hparams, gamma=0.0, use_clipping=False, convention=convention)
    if convention == "optax":
        adamw = optim.adamw(LR, **hparams)
    else:  # Adam's "paper" rule with the decay where optax's adamw puts it
        rescale = optim.scale_by_adam(0.9, 0.999, 1e-8, convention="paper")
        adamw = optax.chain(
            rescale, optim.add_decayed_weights(1e-2), optim.scale_by_learning_rate(LR)
        )
    (p_mars, s_mars), (p_adamw, s_adamw) = (_run(tx, _TREE, _TREE_GRADS) for tx in (mars, adamw))
    for a, b in zip(jax.tree.leaves(p_mars), jax.tree.leaves(p_adamw), strict=True):
        np.testing.assert_array_equal(a, b)
    for field in ("mu", "nu"):
        for a, b in zip(
            *(jax.tree.leaves(getattr(s, field)) for s in (s_mars, s_adamw)), strict=True
        ):
            np.testing.assert_array_equal(a, b)
    # With the correction on, it is not: the trajectories part within a few steps.
    corrected = _run(optim.mars_adamw(LR, **hparams, convention=convention), _TREE, _TREE_GRADS)
    assert not np.allclose(corrected[0]["kernel"], p_adamw["kernel"], rtol=1e-3)


def test_mars_first_steps_by_hand():
    """The authors' code (optax, pytorch) starts from g_0 = 0: c_1 = (1 + gamma b1/(1-b1)) g_1,
    clipped to norm 1, so m_1 = (1 - b1) g_1 / ||g_1|| for a gradient of norm > 1. The paper
    (x_1 = x_0) has no correction at t = 1: c_1 = g_1, the same direction, clipped the same.
    Step 2 tells them apart: c_2 = g_2 + gamma b1/(1-b1) (g_2 - g_1) in all three."""
    b1, gamma = 0.9, 0.5
    g1, g2 = GRAD, jnp.array([1.0, 0.5, -0.25, 0.0])  # ||g1|| > 1, ||g2|| > 1
    scale = gamma * b1 / (1 - b1)

    def unit(c):
        c = np.asarray(c, np.float64)
        return c / max(np.linalg.norm(c), 1.0)

    for convention in ("optax", "pytorch", "paper"):
        tx = optim.scale_by_mars(b1=b1, gamma=gamma, convention=convention)
        _, state = tx.update(g1, tx.init(PARAMS))
        np.testing.assert_allclose(state.mu, (1 - b1) * unit(g1), rtol=1e-6)
        np.testing.assert_array_equal(state.last_grad, g1)
        _, state = tx.update(g2, state)
        c2 = unit(g2 + scale * (g2 - g1))
        first = unit(g1)  # both first steps' c~_1: g_1 / ||g_1|| here
        np.testing.assert_allclose(state.mu, b1 * (1 - b1) * first + (1 - b1) * c2, rtol=1e-5)
    # A gradient of norm < 1: the authors' first c_1 = (1 + scale) g_1 is larger, the paper's not.
    small = jnp.array([0.1, -0.05, 0.0, 0.02])
    for convention, factor in (("optax", 1 + scale), ("paper", 1.0)):
        tx = optim.scale_by_mars(b1=b1, gamma=gamma, convention=convention)
        _, state = tx.update(small, tx.init(PARAMS))
        np.testing.assert_allclose(state.mu, (1 - b1) * unit(factor * small), rtol=1e-6)


def test_adam_mini_first_step_by_hand_and_its_state():
    """One v per output unit: after one step v_hat = mean over the unit's inputs of g^2, so
    with eps -> 0 a kernel's column moves by -lr g / rms(g of that column) (not -lr sign(g));
    a bias or scalar (its own blocks) by Adam's -lr sign(g). The state holds m in full and v
    as (1, out) per kernel: 3 + 3 + 1 values of v for 12 + 3 + 1 params."""
    tx = optim.adam_mini(LR, eps=0.0)
    grads = jax.tree.map(lambda g: g[0], _TREE_GRADS)
    updates, state = tx.update(grads, tx.init(_TREE), _TREE)
    rms = np.sqrt(np.mean(np.square(np.asarray(grads["kernel"], np.float64)), axis=0))
    np.testing.assert_allclose(updates["kernel"], -LR * grads["kernel"] / rms, rtol=FIRST_STEP_RTOL)
    for leaf in ("bias", "scale"):
        np.testing.assert_allclose(updates[leaf], -LR * jnp.sign(grads[leaf]), rtol=FIRST_STEP_RTOL)
    nu = state[0].nu
    assert (nu["kernel"].shape, nu["bias"].shape, nu["scale"].shape) == ((1, 3), (3,), ())
    assert jax.tree.map(jnp.shape, state[0].mu) == jax.tree.map(jnp.shape, _TREE)
    # 1-D params are all blocks of one: Adam-mini is Adam, bitwise over 100 steps.
    vector, vector_grads = {"b": jnp.zeros(3)}, {"b": _TREE_GRADS["bias"]}
    (p_mini, s_mini), (p_adam, s_adam) = (
        _run(tx, vector, vector_grads)
        for tx in (optim.adam_mini(LR), optim.adamw(LR, weight_decay=0.0))
    )
    np.testing.assert_array_equal(p_mini["b"], p_adam["b"])
    np.testing.assert_array_equal(s_mini.nu["b"], s_adam.nu["b"])


def test_adam_with_b1_zero_is_bias_corrected_rmsprop():
    """b1 = 0 removes momentum: Adam becomes RMSProp with a bias-corrected v (numpy model)."""
    b2, eps, steps = 0.99, 1e-8, 100
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(steps, 6)).astype(np.float32)
    params = np.ones(6, np.float32)
    v = np.zeros(6, np.float64)
    expected = params.astype(np.float64)
    for t, g in enumerate(grads, start=1):
        v = b2 * v + (1 - b2) * g.astype(np.float64) ** 2
        expected = expected - LR * g / (np.sqrt(v / (1 - b2**t)) + eps)

    tx = optim.adam(LR, b1=0.0, b2=b2, eps=eps)
    p, state = jnp.asarray(params), tx.init(jnp.asarray(params))
    update = jax.jit(tx.update)
    for g in grads:
        updates, state = update(jnp.asarray(g), state, p)
        p = optax.apply_updates(p, updates)
    np.testing.assert_allclose(p, expected, rtol=1e-5)


# --- Convergence table --------------------------------------------------------------------

_TARGET = jnp.array([1.0, -2.0, 3.0])
_CURVATURE = jnp.array([1.0, 10.0, 100.0])


def _quadratic(p):
    return 0.5 * jnp.sum(_CURVATURE * (p - _TARGET) ** 2)


def _rosenbrock(p):
    return (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2


def _minimise(tx, f, p0, steps):
    def body(carry, _):
        p, state = carry
        updates, state = tx.update(jax.grad(f)(p), state, p)
        return (optax.apply_updates(p, updates), state), None

    (p, _), _ = jax.jit(lambda p0: jax.lax.scan(body, (p0, tx.init(p0)), None, length=steps))(p0)
    return p


# Learning rates per optimizer for Rosenbrock from (-1.2, 1), 10k steps. AMSGrad needs a large
# one (its step size never grows back after the huge early gradients), RAdam a small one (its
# first steps are plain momentum SGD on gradients of size ~200).
ROSENBROCK_LR = {
    "adam": 3e-2,
    "adamw": 3e-2,
    "amsgrad": 3e-1,
    "nadam": 1e-2,
    "nadamw": 1e-2,
    "radam": 1e-3,
    "radamw": 1e-3,
    "adamax": 3e-2,
    "adabelief": 3e-2,
    "lion": 3e-3,
    "lamb": 1e-2,
    "muon": 3e-3,  # 1-D parameters: Muon's NAdamW part
    "cautious_adamw": 3e-2,
    "cautious_lion": 3e-3,
    "adopt": 3e-1,  # as AMSGrad: it divides by a v_{t-1} that remembers the early gradients
    "ademamix": 1e-2,
    "schedule_free_adamw": 3e-2,
    "mars_adamw": 1e-2,
    "adam_mini": 1e-2,
    "soap": 1e-2,  # 1-D parameters: Adam (b1 = b2 = 0.95) after the first call
}
# AdEMAMix's slow EMA (b3 = 0.9999, a half-life of 6931 steps) still holds the gradients of
# the descent when these short runs end, and holds the iterate off the optimum: b3 = 0.999,
# the paper's choice for short runs (Pagliardini et al., Appendix C.1.5).
SHORT_RUN = {"ademamix": {"b3": 0.999}}
# Lion's sign steps move every coordinate by the full rate, LAMB's every layer by lr * ||w||:
# they settle as the rate decays.
DECAYED = {"lion", "lamb", "cautious_lion"}


def _rate(name, lr, steps):
    return optax.cosine_decay_schedule(lr, steps) if name in DECAYED else lr


@pytest.mark.parametrize("name", optim.names())
def test_converges_on_quadratic_and_rosenbrock(name):
    quad_lr, hparams = _rate(name, 3e-2, 2000), SHORT_RUN.get(name, {})
    tx = optim.create(name, learning_rate=quad_lr, **hparams)
    p = _minimise(tx, _quadratic, jnp.zeros(3), 2000)
    # Decoupled weight decay pulls the optimum towards 0 by ~wd/curvature: 1e-4 relative here.
    np.testing.assert_allclose(p, _TARGET, rtol=1e-3, atol=1e-3)
    tx = optim.create(name, learning_rate=_rate(name, ROSENBROCK_LR[name], 10_000), **hparams)
    p = _minimise(tx, _rosenbrock, jnp.array([-1.2, 1.0]), 10_000)
    np.testing.assert_allclose(p, jnp.ones(2), atol=1e-2)


# --- Compilation, transformations and optax wrappers -------------------------------------


def test_no_recompilation_on_second_step():
    traces = []
    tx = optim.adamw(LR)

    @jax.jit
    def step(params, state, grads):
        traces.append(1)  # runs only while tracing
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params, state = PARAMS, tx.init(PARAMS)
    for _ in range(3):
        params, state = step(params, state, GRAD)
    assert len(traces) == 1
    assert step._cache_size() == 1


@pytest.mark.parametrize("name", optim.names())
def test_vmap_over_a_batch_of_problems_equals_a_loop(name):
    tx = optim.create(name, learning_rate=LR)
    grads = jnp.stack([GRAD, -GRAD * 3, GRAD**2])
    params = jnp.stack([PARAMS] * 3)
    batched, _ = jax.vmap(lambda g, p: tx.update(g, tx.init(p), p))(grads, params)
    for i in range(3):
        np.testing.assert_allclose(batched[i], _first_update(tx, grads[i], params[i]), rtol=1e-6)


@pytest.mark.parametrize("name", optim.names())
def test_inject_hyperparams_matches_fixed_hyperparams_and_vmaps_over_them(name):
    factory = getattr(optim, name)
    momentum = {"muon": "adam_b1"}.get(name, "b1")  # PARAMS is 1-D: Muon's AdamW part
    injected = optax.inject_hyperparams(factory)(learning_rate=LR, **{momentum: 0.8})
    state = injected.init(PARAMS)
    updates, state = injected.update(GRAD, state, PARAMS)
    # optax's nadam/nadamw are partials with nesterov=True; inject into the underlying alias.
    # optax has no radamw: the registry's twin chains optax's pieces.
    # optax's adopt defaults clip_value_fn to a function, which inject_hyperparams would take
    # for a schedule: it is a static argument there (ours defaults it to None).
    twins = {
        "nadam": (optax.adam, {"nesterov": True}),
        "nadamw": (optax.adamw, {"nesterov": True}),
        "radamw": (registry.entry("radamw").twin, {}),
        "lamb": (registry.entry("lamb").twin, {}),
        "muon": (optax.contrib.muon, {}),
        "cautious_adamw": (registry.entry("cautious_adamw").twin, {}),
        "cautious_lion": (registry.entry("cautious_lion").twin, {}),
        "adopt": (optax.contrib.adopt, {}, ("clip_value_fn",)),
        "ademamix": (optax.contrib.ademamix, {}),
        "schedule_free_adamw": (optax.contrib.schedule_free_adamw, {}),
    }
    if registry.entry(name).twin is not None:  # MARS, Adam-mini, SOAP have none
        twin_factory, twin_kwargs, *static = (
            twins[name] if name in twins else (getattr(optax, name), {})
        )
        twin = optax.inject_hyperparams(twin_factory, static_args=static[0] if static else ())
        ref = twin(learning_rate=LR, **{momentum: 0.8}, **twin_kwargs)
        ref_updates, _ = ref.update(GRAD, ref.init(PARAMS), PARAMS)
        np.testing.assert_allclose(updates, ref_updates, rtol=1e-6)
    # Injected hyperparameters are float32 arrays, so 1 - b2 is rounded in float32, where the
    # fixed version uses the Python float: the two agree to FIRST_STEP_RTOL, not to 1e-6.
    fixed = factory(LR, **{momentum: 0.8})
    np.testing.assert_allclose(updates, _first_update(fixed), rtol=FIRST_STEP_RTOL)
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(LR)

    # A learning-rate sweep as one vmapped program: the first step scales with the rate.
    rates = jnp.array([1e-3, 1e-2, 1e-1])

    def first_step(lr):
        tx = optax.inject_hyperparams(factory)(learning_rate=lr)
        return tx.update(GRAD, tx.init(PARAMS), PARAMS)[0]

    swept = jax.jit(jax.vmap(first_step))(rates)
    for lr, row in zip(rates, swept, strict=True):
        np.testing.assert_allclose(row, _first_update(factory(float(lr))), rtol=FIRST_STEP_RTOL)


def test_multisteps_accumulates_like_optax():
    ours = optax.MultiSteps(optim.adam(LR), every_k_schedule=3)
    ref = optax.MultiSteps(optax.adam(LR), every_k_schedule=3)
    p_ours, p_ref = PARAMS, PARAMS
    s_ours, s_ref = ours.init(PARAMS), ref.init(PARAMS)
    for i in range(7):
        g = GRAD * (i + 1)
        u, s_ours = ours.update(g, s_ours, p_ours)
        p_ours = optax.apply_updates(p_ours, u)
        u, s_ref = ref.update(g, s_ref, p_ref)
        p_ref = optax.apply_updates(p_ref, u)
        np.testing.assert_allclose(p_ours, p_ref, rtol=1e-6)
    assert not np.allclose(p_ours, PARAMS)


def test_masked_freezes_the_masked_out_leaves():
    params = {"backbone": jnp.ones(3), "head": jnp.ones(2)}
    grads = {"backbone": jnp.ones(3), "head": -jnp.ones(2)}
    tx = optax.masked(optim.adam(LR), {"backbone": False, "head": True})
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_array_equal(updates["backbone"], grads["backbone"])  # passed through
    np.testing.assert_allclose(updates["head"], LR * jnp.ones(2), rtol=FIRST_STEP_RTOL)


def test_apply_if_finite_skips_non_finite_updates_and_keeps_state():
    tx = optax.apply_if_finite(optim.adam(LR), max_consecutive_errors=2)
    state = tx.init(PARAMS)
    updates, state = tx.update(GRAD.at[0].set(jnp.nan), state, PARAMS)
    np.testing.assert_array_equal(updates, jnp.zeros_like(PARAMS))
    assert int(state.notfinite_count) == 1
    assert int(state.inner_state[0].count) == 0  # the Adam state did not advance
    updates, state = tx.update(GRAD, state, PARAMS)
    np.testing.assert_allclose(updates, _first_update(optim.adam(LR)), rtol=1e-6)


def test_pmap_over_four_devices_matches_one_device():
    """Data-parallel Adam: per-device gradients averaged with pmean, same optimizer step.

    The only difference from one device is the order of the gradient reduction (a mean of 4
    partial means vs one mean), ~1e-7 relative per step in float32; 20 steps stay < 1e-5.
    """
    assert jax.local_device_count() == 4
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(32, 5)), jnp.float32)
    y = x @ jnp.array([0.5, -1.0, 0.25, 0.0, 1.0])  # realisable: the loss can reach 0
    tx = optim.adam(1e-1)

    def loss(w, x, y):
        return jnp.mean((x @ w - y) ** 2)

    def step(w, state, x, y, axis_name=None):
        g = jax.grad(loss)(w, x, y)
        if axis_name:
            g = jax.lax.pmean(g, axis_name)
        updates, state = tx.update(g, state, w)
        return optax.apply_updates(w, updates), state

    w1, s1 = jnp.zeros(5), tx.init(jnp.zeros(5))
    single = jax.jit(step)

    def replicate(tree):  # a leading device axis; pmap places one slice per device
        return jax.tree.map(lambda x: jnp.broadcast_to(x, (4, *jnp.shape(x))), tree)

    wp, sp = replicate(jnp.zeros(5)), replicate(tx.init(jnp.zeros(5)))
    parallel = jax.pmap(lambda w, s, x, y: step(w, s, x, y, "d"), axis_name="d")
    xs, ys = x.reshape(4, 8, 5), y.reshape(4, 8)
    for _ in range(20):
        w1, s1 = single(w1, s1, x, y)
        wp, sp = parallel(wp, sp, xs, ys)
    for device_copy in wp:  # every replica holds the same parameters
        np.testing.assert_allclose(device_copy, w1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sp[0].nu[0], s1[0].nu, rtol=1e-5, atol=1e-7)
    assert float(loss(w1, x, y)) < 0.5 * float(loss(jnp.zeros(5), x, y))


# --- Pytrees and dtypes ---------------------------------------------------------------------


@pytest.mark.parametrize("name", optim.names())
def test_pytrees_with_none_and_empty_subtrees(name):
    params = {"w": jnp.ones((2, 3)), "none": None, "empty": {}, "nested": {"b": jnp.ones(2)}}
    grads = {"w": jnp.ones((2, 3)), "none": None, "empty": {}, "nested": {"b": -jnp.ones(2)}}
    tx = optim.create(name, learning_rate=LR)
    updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
    assert jax.tree.structure(updates) == jax.tree.structure(grads)
    if registry.entry(name).twin is None:  # MARS, Adam-mini, SOAP: ours on the tree without them
        ref, pruned = tx, {"w": params["w"], "nested": params["nested"]}
        ref_updates, _ = ref.update(
            {"w": grads["w"], "nested": grads["nested"]}, ref.init(pruned), pruned
        )
    else:
        ref = optim.reference(name, learning_rate=LR)
        ref_updates, _ = ref.update(grads, ref.init(params), params)
    # Schedule-Free's update is y_{t+1} - y_t, a difference of points: its rounding is at the
    # params' scale (1 here: one ulp 6e-8), which jit and eager may place differently.
    atol = 1.2e-7 if name == "schedule_free_adamw" else 0
    for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(ref_updates), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=atol)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("name", optim.names())
def test_dtypes_are_preserved(name, dtype):
    params = {"w": jnp.ones((4,), dtype), "b": jnp.zeros((2,), dtype)}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.25), params)
    tx = optim.create(name, learning_rate=LR)
    state = tx.init(params)
    for _ in range(2):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    for leaf in jax.tree.leaves(params):
        assert leaf.dtype == dtype
    moments = state[0]  # mu and nu (Lion: mu only)
    for leaf in jax.tree.leaves([getattr(moments, f) for f in ("mu", "nu") if hasattr(moments, f)]):
        assert leaf.dtype == dtype
    # It stepped in the right direction; ADOPT's second step, (1 - b1) lr = 1e-3 (its first
    # is zero), is below half a bfloat16 ulp of 1: the update says it, not the params.
    assert jnp.all(updates["w"] < 0) and jnp.all(params["w"] <= 1)
    assert name == "adopt" or jnp.all(params["w"] < 1)


def test_mu_dtype_stores_first_moment_in_bfloat16():
    params = {"w": jnp.ones((4,), jnp.float32)}
    tx = optim.adam(LR, mu_dtype=jnp.bfloat16)
    updates, state = tx.update({"w": jnp.ones(4)}, tx.init(params), params)
    assert state[0].mu["w"].dtype == jnp.bfloat16
    assert state[0].nu["w"].dtype == jnp.float32
    assert updates["w"].dtype == jnp.float32


# Every optimizer of ours with a second moment takes nu_dtype; Lion and C-Lion keep only
# m_t (and Muon's matrices only a momentum: its nu_dtype is its AdamW part's).
WITH_NU = [n for n in optim.names() if "nu_dtype" in optim.hyperparameters(n)]
FIRST_MOMENTS = ("mu", "m1", "m2")  # AdEMAMix's fast and slow EMAs are its first moments
NO_FIRST_MOMENT = ("schedule_free_adamw",)  # its momentum is the interpolation (z: state_dtype)


def test_every_optimizer_with_a_second_moment_takes_nu_dtype():
    without = set(optim.names()) - set(WITH_NU)
    assert without == {"lion", "cautious_lion"}
    for name in without:  # no second moment: nothing for nu_dtype to store
        state = optim.create(name, learning_rate=LR).init(jnp.ones(3))
        assert not [f for f in _moments(state)._fields if f.startswith("nu")], name


def test_ademamix_nu_dtype_defaults_to_mu_dtype_as_optax_stores_it():
    """optax's AdEMAMix stores nu in mu_dtype: nu_dtype None keeps that rule (the optax twin's
    state), a given nu_dtype overrides it."""
    params = jnp.ones(3)
    twin = optim.reference("ademamix", learning_rate=LR, mu_dtype=jnp.bfloat16)
    assert twin.init(params)[0].nu.dtype == jnp.bfloat16
    for nu_dtype, expected in ((None, jnp.bfloat16), (jnp.float32, jnp.float32)):
        tx = optim.ademamix(LR, mu_dtype=jnp.bfloat16, nu_dtype=nu_dtype)
        state = tx.update(params, tx.init(params), params)[1][0]
        assert state.nu.dtype == expected, nu_dtype
        assert state.m1.dtype == state.m2.dtype == jnp.bfloat16


def _state_bytes(state):
    return sum(leaf.nbytes for leaf in jax.tree.leaves(state))


def _moments(state):
    """The NamedTuple that holds an optimizer's moments: the first of its state's with a mu or
    nu (the chain's rescaling; Muon's AdamW part, in optax.partition's state)."""

    def is_moments(x):
        return hasattr(x, "_fields") and bool({"mu", "nu"} & set(x._fields))

    return next(x for x in jax.tree.leaves(state, is_leaf=is_moments) if is_moments(x))


@pytest.mark.parametrize("name", WITH_NU)
def test_bfloat16_moments_halve_their_bytes(name):
    """`nu_dtype` stores the second moment (and AMSGrad's maximum) in bfloat16: half the bytes
    of float32 params', as `mu_dtype` does for the first (optax #1552: optax has mu_dtype only)."""
    params = {"w": jnp.ones((8, 4)), "b": jnp.zeros(4)}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.25), params)
    full = optim.create(name, learning_rate=LR)
    half = optim.create(name, learning_rate=LR, nu_dtype=jnp.bfloat16)
    (full_state, half_state) = (
        _moments(tx.update(grads, tx.init(params), params)[1]) for tx in (full, half)
    )
    nu_fields = [f for f in full_state._fields if f.startswith("nu")]
    mu_fields = [f for f in full_state._fields if f in FIRST_MOMENTS]
    assert nu_fields and (mu_fields or name in NO_FIRST_MOMENT)
    for field in nu_fields:
        ours, reference = getattr(half_state, field), getattr(full_state, field)
        assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(ours)), field
        assert _state_bytes(ours) * 2 == _state_bytes(reference), field
    for field in mu_fields:
        assert all(
            leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(getattr(half_state, field))
        )
    mu_dtype = {} if name in NO_FIRST_MOMENT else {"mu_dtype": jnp.bfloat16}
    both = optim.create(name, learning_rate=LR, nu_dtype=jnp.bfloat16, **mu_dtype)
    both_state = _moments(both.init(params))
    moments = [getattr(both_state, f) for f in (*mu_fields, *nu_fields)]
    assert _state_bytes(moments) * 2 == _state_bytes(
        [getattr(full_state, f) for f in (*mu_fields, *nu_fields)]
    )


@pytest.mark.parametrize("name", WITH_NU)
def test_bfloat16_second_moment_stays_close_to_float32_over_100_steps(name):
    """100 steps on gradients spanning 4 decades, nu in bfloat16 against float32.

    Tolerances. bfloat16 keeps 8 significant bits: each store of v_t rounds it by up to 2^-9
    relative. With b2 = 0.999 the step's increment (1 - b2) g^2 is about v_t / t, only a few
    bfloat16 ulps of v_t by step 100, so the roundings do not average out: v_t drifts by up to
    ~7% (measured 6.7%; Adamax's u_t 10%: b2 u rounds back to u in bfloat16, so u_t cannot
    decay). The step depends on sqrt(v_t), half that relative error: measured <= 1.7% of the
    learning rate per step, and the parameters <= 0.4% of the distance lr * T they can travel.
    Bounds: nu 15%, each step 3% of lr, params 1% of lr * T; any real error (a wrong dtype in
    the arithmetic, a moment cast before it is updated) is far outside them.
    """
    steps, lr = 100, 1e-2
    rng = np.random.default_rng(0)
    scales = np.logspace(-3, 1, 64, dtype=np.float32)
    grads = jnp.asarray(rng.normal(size=(steps, 64)).astype(np.float32) * scales)

    def run(tx):
        def step(carry, g):
            p, state = carry
            updates, state = tx.update(g, state, p)
            return (optax.apply_updates(p, updates), state), updates

        p0 = jnp.zeros(64)
        (p, state), updates = jax.jit(lambda: jax.lax.scan(step, (p0, tx.init(p0)), grads))()
        return p, _moments(state).nu, updates

    p32, nu32, u32 = run(optim.create(name, learning_rate=lr))
    p16, nu16, u16 = run(optim.create(name, learning_rate=lr, nu_dtype=jnp.bfloat16))
    assert nu16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(nu16, np.float32), nu32, rtol=0.15)
    assert float(jnp.max(jnp.abs(u16 - u32))) <= 0.03 * lr
    assert float(jnp.max(jnp.abs(p16 - p32))) <= 0.01 * lr * steps


@pytest.mark.parametrize("name", ["adam", "adamw", "nadam", "amsgrad", "adabelief"])
def test_complex_parameters_match_optax(name):
    params = jnp.array([1.0 + 1.0j, -0.5 + 2.0j])
    grads = jnp.array([0.3 - 0.1j, -1.0 + 0.5j])
    ours, ref = optim.create(name, learning_rate=LR), optim.reference(name, learning_rate=LR)
    s_ours, s_ref = ours.init(params), ref.init(params)
    p_ours = p_ref = params
    for _ in range(5):
        u, s_ours = ours.update(grads, s_ours, p_ours)
        p_ours = optax.apply_updates(p_ours, u)
        u, s_ref = ref.update(grads, s_ref, p_ref)
        p_ref = optax.apply_updates(p_ref, u)
    assert p_ours.dtype == jnp.complex64
    np.testing.assert_allclose(p_ours, p_ref, rtol=1e-6)


# --- Validation -------------------------------------------------------------------------------

BAD_HPARAMS = [
    ("adam", {"learning_rate": 0.0}, r"adam: learning_rate must be in \(0, inf\), got 0.0"),
    ("adam", {"learning_rate": -1e-3}, r"learning_rate must be in \(0, inf\), got -0.001"),
    ("adam", {"learning_rate": float("nan")}, r"learning_rate must be in \(0, inf\)"),
    ("adam", {"b1": 1.0}, r"adam: b1 must be in \[0, 1\), got 1.0"),
    ("adam", {"b1": -0.1}, r"adam: b1 must be in \[0, 1\), got -0.1"),
    ("adam", {"b2": 1.5}, r"adam: b2 must be in \[0, 1\), got 1.5"),
    ("adam", {"eps": -1e-8}, r"adam: eps must be in \[0, inf\), got -1e-08"),
    ("adam", {"eps_root": -1.0}, r"adam: eps_root must be in \[0, inf\)"),
    ("adam", {"mu_dtype": jnp.int32}, r"adam: mu_dtype must be None or a floating dtype"),
    ("adamw", {"nu_dtype": "int8"}, r"adamw: nu_dtype must be None or a floating dtype"),
    ("adam", {"nesterov": "yes"}, r"adam: nesterov must be True or False"),
    ("adamw", {"weight_decay": -1e-4}, r"adamw: weight_decay must be in \[0, inf\)"),
    ("adamw", {"mask": {"w": "yes"}}, r"adamw: mask must be None, a callable, or a pytree"),
    ("nadamw", {"weight_decay": -1.0}, r"weight_decay must be in \[0, inf\), got -1.0"),
    ("amsgrad", {"b2": 1.0}, r"amsgrad: b2 must be in \[0, 1\)"),
    ("radam", {"threshold": 3.0}, r"radam: threshold must be in \[4, inf\), got 3.0"),
    ("adamax", {"b1": 2.0}, r"adamax: b1 must be in \[0, 1\)"),
    ("adabelief", {"eps": -1.0}, r"adabelief: eps must be in \[0, inf\)"),
    ("adabelief", {"learning_rate": None}, r"adabelief: learning_rate must be a positive"),
    ("lamb", {"b2": 1.0}, r"lamb: b2 must be in \[0, 1\)"),
    ("muon", {"ns_steps": 0}, r"muon: ns_steps must be a positive int \(Newton-Schulz steps; "),
    ("muon", {"ns_steps": -5}, r"muon: ns_steps must be a positive int .*, got -5"),
    ("muon", {"ns_steps": 2.5}, r"muon: ns_steps must be a positive int"),
    ("muon", {"ns_coeffs": (1.0, 2.0)}, r"muon: ns_coeffs must be three finite numbers"),
    ("muon", {"beta": 1.0}, r"muon: beta must be in \[0, 1\), got 1.0"),
    ("muon", {"adam_b2": -0.1}, r"muon: adam_b2 must be in \[0, 1\)"),
    ("muon", {"adam_learning_rate": -1.0}, r"muon: adam_learning_rate must be in \(0, inf\)"),
    ("cautious_adamw", {"caution_eps": 0.0}, r"cautious_adamw: caution_eps must be in \(0, inf\)"),
    ("adopt", {"b2": 1.0}, r"adopt: b2 must be in \[0, 1\), got 1.0"),
    ("adopt", {"use_clipping": 1}, r"adopt: use_clipping must be True or False"),
    ("adopt", {"clip_value_fn": 1.0}, r"adopt: clip_value_fn must be a callable of the step count"),
    ("ademamix", {"b3": 0.5}, r"ademamix: b3 must be in \[b1, 1\) = \[0.9, 1\).*, got 0.5"),
    ("ademamix", {"b1": 0.95, "b3": 0.94}, r"ademamix: b3 must be in \[b1, 1\) = \[0.95, 1\)"),
    ("ademamix", {"b3": 1.0}, r"ademamix: b3 must be in \[0, 1\), got 1.0"),
    ("ademamix", {"alpha": -1.0}, r"ademamix: alpha must be in \[0, inf\), got -1.0"),
    (
        "ademamix",
        {"b3_warmup": 0},
        r"ademamix: b3_warmup must be an int >= 1 \(a number of steps\), got 0",
    ),
    (
        "ademamix",
        {"alpha_warmup": 2.5},
        r"ademamix: alpha_warmup must be an int >= 1 \(a number of steps\), got 2.5",
    ),
    (
        "ademamix",
        {"b3": optax.constant_schedule(0.999), "b3_warmup": 100},
        r"ademamix: b3_warmup must be None when the value it warms up is a schedule",
    ),
    ("schedule_free_adamw", {"b1": 0.0}, r"schedule_free_adamw: b1 must be in \(0, 1\), got 0.0"),
    ("schedule_free_adamw", {"b1": 1.0}, r"schedule_free_adamw: b1 must be in \[0, 1\)"),
    ("schedule_free_adamw", {"warmup_steps": 0}, r"warmup_steps must be an int >= 1 \(a number"),
    ("schedule_free_adamw", {"weight_lr_power": -1.0}, r"weight_lr_power must be in \[0, inf\)"),
    ("schedule_free_adamw", {"state_dtype": jnp.int8}, r"state_dtype must be None or a floating"),
    ("mars_adamw", {"gamma": -0.1}, r"mars_adamw: gamma must be in \[0, inf\), got -0.1"),
    ("mars_adamw", {"gamma": float("inf")}, r"mars_adamw: gamma must be in \[0, inf\)"),
    ("mars_adamw", {"use_clipping": 1}, r"mars_adamw: use_clipping must be True or False, got 1"),
    ("mars_adamw", {"b1": 1.0}, r"mars_adamw: b1 must be in \[0, 1\), got 1.0"),
    ("mars_adamw", {"nu_dtype": jnp.int8}, r"mars_adamw: nu_dtype must be None or a floating"),
    ("adam_mini", {"b2": 1.0}, r"adam_mini: b2 must be in \[0, 1\), got 1.0"),
    ("adam_mini", {"weight_decay": -1e-2}, r"adam_mini: weight_decay must be in \[0, inf\)"),
    ("adam_mini", {"mu_dtype": "int32"}, r"adam_mini: mu_dtype must be None or a floating"),
    (
        "soap",
        {"precondition_frequency": 0},
        r"soap: precondition_frequency must be a positive int \(steps between two refreshes "
        r"of the eigenbases; the paper's 10\), got 0",
    ),
    ("soap", {"precondition_frequency": -10}, r"soap: precondition_frequency .*, got -10"),
    ("soap", {"precondition_frequency": 2.5}, r"soap: precondition_frequency .*, got 2.5"),
    ("soap", {"max_precond_dim": 0}, r"soap: max_precond_dim must be a positive int \(the long"),
    ("soap", {"shampoo_beta": 1.0}, r"soap: shampoo_beta must be in \[0, 1\), got 1.0"),
    ("soap", {"convention": "pytorch"}, r"soap: convention='pytorch' does not exist: torch.optim"),
    ("adopt", {"nu_dtype": "int8"}, r"adopt: nu_dtype must be None or a floating dtype"),
    ("ademamix", {"nu_dtype": jnp.int32}, r"ademamix: nu_dtype must be None or a floating"),
]


@pytest.mark.parametrize("name,hparams,message", BAD_HPARAMS)
def test_bad_hyperparameters_are_refused_at_construction(name, hparams, message):
    hparams = {"learning_rate": LR, **hparams}
    with pytest.raises(ValueError, match=message):
        optim.create(name, **hparams)


def test_arguments_are_checked_once_at_the_public_boundary(monkeypatch):
    """A constructor checks its arguments; the transforms it chains do not check them again
    (they are called unchecked); a transform called by a user checks its own."""
    checked = []
    violations = validation.violations
    monkeypatch.setattr(
        validation, "violations", lambda arguments: checked.append(1) or violations(arguments)
    )
    optim.create("nadamw", learning_rate=LR, convention="pytorch")
    optim.lion(LR, mask=lambda params: params)
    assert len(checked) == 2
    optim.scale_by_adam(b2=0.99)
    assert len(checked) == 3


def test_transforms_validate_too():
    with pytest.raises(ValueError, match=r"scale_by_adam: b2 must be in \[0, 1\)"):
        optim.scale_by_adam(b2=1.0)
    with pytest.raises(ValueError, match=r"add_decayed_weights: weight_decay must be"):
        optim.add_decayed_weights(-0.1)
    with pytest.raises(ValueError, match=r"scale_by_ademamix: b3 must be in \[b1, 1\)"):
        optim.scale_by_ademamix(b1=0.99, b3=0.9)
    for transform, name in ((optim.scale_by_adopt, "ADOPT"), (optim.scale_by_ademamix, "AdEMAMix")):
        with pytest.raises(ValueError, match=f"convention='pytorch' does not exist: .* no {name}"):
            transform(convention="pytorch")
    with pytest.raises(ValueError, match=r"nesterov=True exists only for convention='optax'"):
        optim.scale_by_adopt(nesterov=True, convention="paper")


def test_unknown_optimizer_and_hyperparameter():
    with pytest.raises(
        ValueError, match=r"unknown optimizer 'adamz'; valid names are: adam, adamw"
    ):
        optim.create("adamz", learning_rate=LR)
    with pytest.raises(ValueError, match=r"unknown optimizer 'sgd'"):  # an optax baseline
        optim.create("sgd", learning_rate=LR)
    with pytest.raises(ValueError, match=r"adamax got unknown hyperparameter\(s\) weight_decay"):
        optim.create("adamax", learning_rate=LR, weight_decay=0.1)
    with pytest.raises(ValueError, match=r"adam needs a learning_rate"):
        optim.create("adam")
    for build in (optim.create, optim.reference):  # optax.nadam would take nesterov=False.
        with pytest.raises(ValueError, match=r"nadam got unknown hyperparameter\(s\) nesterov"):
            build("nadam", learning_rate=LR, nesterov=False)


def test_registry_builds_optax_twins():
    assert optim.names() == (
        "adam",
        "adamw",
        "amsgrad",
        "nadam",
        "nadamw",
        "radam",
        "radamw",
        "adamax",
        "adabelief",
        "lion",
        "lamb",
        "muon",
        "cautious_adamw",
        "cautious_lion",
        "adopt",
        "ademamix",
        "schedule_free_adamw",
        "mars_adamw",
        "adam_mini",
        "soap",
    )
    for name in ("mars_adamw", "adam_mini", "soap"):  # optax has none: no twin, said so
        with pytest.raises(ValueError, match=rf"{name} has no optax twin \(optax has none\)"):
            optim.reference(name, learning_rate=LR)
    assert "weight_decay" in optim.hyperparameters("adamw")
    assert "threshold" in optim.hyperparameters("radam")
    # reference() really is optax and create() really is ours: their states are different
    # classes, and they agree on the first step.
    ours, ref = (
        optim.create("nadamw", learning_rate=LR),
        optim.reference("nadamw", learning_rate=LR),
    )
    assert type(ours.init(PARAMS)[0]) is optim.ScaleByAdamState
    assert type(ref.init(PARAMS)[0]) is optax.ScaleByAdamState
    np.testing.assert_allclose(_first_update(ours), _first_update(ref), rtol=1e-6)


def test_schedules_are_accepted_and_used():
    schedule = optax.linear_schedule(1e-2, 0.0, 10)
    tx = optim.adam(schedule, eps=0.0)
    state = tx.init(PARAMS)
    for step in range(3):
        updates, state = tx.update(GRAD, state, PARAMS)
        # A constant gradient keeps the bias-corrected moments at g and g^2: the step is
        # -lr_t * sign(g) at every t, tracking the schedule.
        np.testing.assert_allclose(updates, -schedule(step) * jnp.sign(GRAD), rtol=FIRST_STEP_RTOL)
