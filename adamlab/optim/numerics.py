"""Numerical building blocks shared by the optimizers: moments, bias correction, counters.

Each helper is one line of a paper's update rule, its floating-point operations in the order
optax uses (so the transforms match it to the bit). The helpers after "Conventions" are where
"pytorch" or "paper" differ, one function per difference (docs/conventions.md tabulates them).
"""

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import optax

Tree = Any

# The numerics conventions every alias accepts: whose update rule to reproduce.
CONVENTIONS: tuple[str, ...] = ("optax", "pytorch", "paper")


def safe_increment(count: jax.Array) -> jax.Array:
    """`count + 1`, saturating at the dtype's maximum: a wrapped (negative) count would blow
    up `1 - b**count`."""
    count = jnp.asarray(count)
    if jnp.issubdtype(count.dtype, jnp.integer):
        max_value = jnp.iinfo(count.dtype).max
    elif jnp.issubdtype(count.dtype, jnp.floating):
        max_value = jnp.finfo(count.dtype).max
    else:
        raise ValueError(f"step counter must be an integer or float array, got {count.dtype}")
    max_value = jnp.array(max_value, count.dtype)
    return jnp.where(count < max_value, count + jnp.array(1, count.dtype), max_value)


def value_at(value: Any, count: jax.Array | None) -> Any:
    """A hyperparameter at step `count`: ``value(count)`` for a schedule, else `value`."""
    return value(count) if callable(value) else value


def abs_sq(x: jax.Array) -> jax.Array:
    """|x|^2 elementwise; for real x this is x * x, for complex x it is real(conj(x) x)."""
    if jnp.iscomplexobj(x):
        return (x.conj() * x).real
    return x * x


def zeros_like(tree: Tree, dtype: Any = None) -> Tree:
    """A tree of zeros shaped like `tree` (None leaves and empty subtrees stay as they are)."""
    return jax.tree.map(lambda x: jnp.zeros_like(x, dtype=dtype), tree)


def cast(tree: Tree, dtype: Any) -> Tree:
    """Casts every leaf to `dtype`; `dtype=None` means leave the tree as it is."""
    if dtype is None:
        return tree
    return jax.tree.map(lambda x: x.astype(dtype), tree)


def cast_like(tree: Tree, like: Tree) -> Tree:
    """Casts every leaf of `tree` to the dtype of the matching leaf of `like`."""
    return jax.tree.map(lambda x, y: x.astype(y.dtype), tree, like)


def first_moment(grads: Tree, mu: Tree, b1: Any) -> Tree:
    """m_t = b1 * m_{t-1} + (1 - b1) * g_t (Kingma & Ba 2015, Algorithm 1)."""
    return jax.tree.map(lambda g, m: (1 - b1) * g + b1 * m, grads, mu)


def second_moment(grads: Tree, nu: Tree, b2: Any) -> Tree:
    """v_t = b2 * v_{t-1} + (1 - b2) * |g_t|^2 (elementwise; |.| handles complex gradients)."""
    return jax.tree.map(lambda g, v: (1 - b2) * abs_sq(g) + b2 * v, grads, nu)


def infinity_moment(grads: Tree, nu: Tree, b2: Any, eps: Any) -> Tree:
    """u_t = max(b2 * u_{t-1}, |g_t| + eps): Adamax's infinity norm (Kingma & Ba 2015, Section
    7.1); eps keeps u_t > 0 where the gradient has always been zero."""
    return jax.tree.map(lambda g, u: jnp.maximum(jnp.abs(g) + eps, b2 * u), grads, nu)


def decay_correction(decay: Any, count: jax.Array, convention: str = "optax") -> jax.Array:
    """1 - decay^t: in float32 from fl32(decay) for "optax", else to float64 accuracy
    (`one_minus_power`)."""
    return 1 - decay**count if convention == "optax" else one_minus_power(decay, count)


def reciprocal_correction(decay: Any, count: jax.Array, convention: str = "optax") -> jax.Array:
    """1 / (1 - decay^t): the scalar that bias-corrects by one multiplication per element."""
    return 1 / decay_correction(decay, count, convention)


def bias_correction(
    moment: Tree, decay: Any, count: jax.Array, convention: str = "optax", fused: bool = False
) -> Tree:
    """moment / (1 - decay^t): undoes the zero initialisation of an exponential moving average.

    1 - decay^t (`decay_correction`) is formed in `decay`'s precision and only then cast to
    the moment's dtype (in bfloat16 decay^t rounds to 1). ``fused=True`` multiplies by the
    reciprocal instead (`reciprocal_correction`): one scalar division per step, at most one
    rounding apart.
    """
    if fused:
        factor = reciprocal_correction(decay, count, convention)
        return jax.tree.map(lambda m: m * factor.astype(m.dtype), moment)
    correction = decay_correction(decay, count, convention)
    return jax.tree.map(lambda m: m / correction.astype(m.dtype), moment)


def nesterov_coefficients(b1: Any, count: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(b1 / (1 - b1^(t+1)), (1 - b1) / (1 - b1^t)): the scalars of Nadam's fused moment."""
    coef_mu = b1 * reciprocal_correction(b1, safe_increment(count))
    return coef_mu, (1 - b1) * reciprocal_correction(b1, count)


def nesterov_first_moment(
    mu: Tree, grads: Tree, b1: Any, count: jax.Array, fused: bool = False
) -> Tree:
    """Nadam's look-ahead first moment (Dozat 2016, Algorithm 2), the next step's momentum:

        m_hat = b1 * m_t / (1 - b1^(t+1)) + (1 - b1) * g_t / (1 - b1^t)

    ``fused=True`` folds the two divisions into the scalars of `nesterov_coefficients`.
    """
    if fused:
        coef_mu, coef_grad = nesterov_coefficients(b1, count)
        return jax.tree.map(
            lambda m, g: coef_mu.astype(m.dtype) * m + coef_grad.astype(g.dtype) * g, mu, grads
        )
    return jax.tree.map(
        lambda m, g: b1 * m + (1 - b1) * g,
        bias_correction(mu, b1, safe_increment(count)),
        bias_correction(grads, b1, count),
    )


def caution(directions: Tree, grads: Tree, eps: Any) -> Tree:
    """u phi / (mean(phi) + eps), phi = 1[u g > 0], per tensor: Liang et al. 2024's cautious
    update (Algorithm 1, ``u * m / (m.mean() + eps)``). The mean is taken in float32 (a
    bfloat16 sum would round), then cast to u's dtype. Real parameters only.
    """

    def leaf(u, g):
        agree = (u * g > 0).astype(jnp.float32)
        return u * (agree / (jnp.mean(agree) + eps)).astype(u.dtype)

    return jax.tree.map(leaf, directions, grads)


# --- Low precision ---------------------------------------------------------------------------


def widen(x: jax.Array) -> jax.Array:
    """float16 -> float32; other dtypes unchanged. In float16 eps = 1e-8 rounds to 0 and an
    all-zero gradient gives 0 / 0 (optax #1754), so float16 denominators are formed in float32;
    bfloat16 holds eps and, like float32, keeps optax's program."""
    return x.astype(jnp.float32) if x.dtype == jnp.float16 else x


def safe_divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """numerator / denominator; a float16 numerator is divided in float32 and cast back."""
    if numerator.dtype != jnp.float16:
        return numerator / denominator
    return (numerator.astype(jnp.float32) / denominator).astype(jnp.float16)


def adaptive_step(mu_hat: Tree, nu_hat: Tree, eps: Any, eps_root: Any) -> Tree:
    """m_hat / (sqrt(v_hat + eps_root) + eps): `eps` is the paper's; `eps_root` keeps the
    derivative finite at v_hat = 0 (for differentiating through the optimizer)."""
    return jax.tree.map(
        lambda m, v: safe_divide(m, jnp.sqrt(widen(v) + eps_root) + eps), mu_hat, nu_hat
    )


# --- Conventions -----------------------------------------------------------------------------


def _log(decay: Any) -> Any:
    """log(decay): in float64 at trace time for a Python number, else in the array's dtype."""
    if isinstance(decay, numbers.Real) and not isinstance(decay, jax.Array):
        return -math.inf if decay == 0 else math.log(decay)
    return jnp.log(decay)


def power(decay: Any, exponent: jax.Array) -> jax.Array:
    """decay ** exponent as float64 Python gives it, to float32 precision: exp(t log(decay))
    with log(decay) taken in float64 while tracing (jnp's power first rounds decay to
    float32, an error that grows with the exponent)."""
    return jnp.exp(exponent * _log(decay))


def one_minus_power(decay: Any, exponent: jax.Array) -> jax.Array:
    """1 - decay ** exponent as -expm1(t log(decay)): PyTorch's and the papers' float64
    bias correction, to float32 precision (optax forms it in float32 from fl32(decay))."""
    return -jnp.expm1(exponent * _log(decay))


def radam_sma_length(b2: Any, t: jax.Array) -> jax.Array:
    """rho_t = rho_inf - 2 t b2^t / (1 - b2^t), accurate to float32 precision (formed directly,
    as optax does, it is the difference of two numbers near rho_inf).

    With x = -log(b2) and y = t x: rho_t = (2/x)(1 - B(y)) + (rho_inf - 2/x), where
    B(y) = y / (e^y - 1) and rho_inf - 2/x = coth(x/2) - 2/x is a float64 constant. For y < 1,
    1 - B(y) = y/2 - sum_k B_2k y^2k / (2k)! (Bernoulli numbers; 7 terms: < 1e-9), free of
    cancellation; for y >= 1 the direct 1 - y / expm1(y) >= 0.41 is accurate.
    """
    x = -_log(b2)
    if isinstance(x, float):
        offset = (2.0 / (1.0 - b2) - 1.0) - 2.0 / x  # in float64, while tracing
    else:  # an injected b2: coth(x/2) - 2/x by its series (rho_inf >= 4 needs x <= 0.51)
        offset = x / 6 - x**3 / 360 + x**5 / 15120
    y = t * x
    series = y / 2 - sum(c * y ** (2 * k) for k, c in enumerate(_BERNOULLI_SERIES, start=1))
    direct = 1 - y / jnp.expm1(jnp.maximum(y, 1.0))
    return (2.0 / x) * jnp.where(y < 1.0, series, direct) + offset


# B_2k / (2k)! for k = 1..7: y / (e^y - 1) = 1 - y/2 + sum_k B_2k / (2k)! y^2k.
_BERNOULLI_SERIES = (1 / 12, -1 / 720, 1 / 30240, -1 / 1209600, 1 / 47900160)
_BERNOULLI_SERIES += (-691 / 1307674368000, 1 / 74724249600)


def lerp_first_moment(grads: Tree, mu: Tree, b1: Any) -> Tree:
    """m_t = m_{t-1} + (1 - b1)(g_t - m_{t-1}): PyTorch's `exp_avg.lerp_(grad, 1 - beta1)`,
    `first_moment` rounded as torch rounds it (`torch_lerp`)."""
    return jax.tree.map(lambda g, m: torch_lerp(m, g, 1 - b1), grads, mu)


def torch_lerp(start: jax.Array, end: jax.Array, weight: Any) -> jax.Array:
    """start + weight (end - start) as ATen's CPU `lerp` rounds it: that for a weight < 0.5,
    end - (end - start)(1 - weight) otherwise (a Python weight picks the branch at trace
    time)."""
    small = start + weight * (end - start)
    if isinstance(weight, numbers.Real):
        return small if weight < 0.5 else end - (end - start) * (1 - weight)
    return jnp.where(weight < 0.5, small, end - (end - start) * (1 - weight))


def pytorch_second_moment(grads: Tree, nu: Tree, b2: Any) -> Tree:
    """v_t = b2 v_{t-1} + (1 - b2) g_t^2 in PyTorch's order of rounding,
    `exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)`: ((1 - b2) g) g + v b2
    (one fused multiply-add in ATen, as in XLA:CPU with this operand first); |g|^2 if complex.
    """

    def update(g, v):
        if jnp.iscomplexobj(g):
            return (1 - b2) * abs_sq(g) + v * b2
        return (1 - b2) * g * g + v * b2

    return jax.tree.map(update, grads, nu)


def moments_for(convention: str):
    """(first_moment, second_moment): PyTorch's rounding for "pytorch", else optax's (the
    papers' m_t = b1 m + (1 - b1) g rounds as optax's does)."""
    if convention == "pytorch":
        return lerp_first_moment, pytorch_second_moment
    return first_moment, second_moment


def nadam_momentum(b1: Any, momentum_decay: Any, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mu_t, 1 - mu_t) with mu_t = b1 (1 - 0.5 * 0.96^(t psi)): Nadam's momentum schedule
    (Dozat 2016, Section 3; psi is PyTorch's `momentum_decay`). 1 - mu_t is summed from
    positive terms, (1 - b1) + b1 * 0.5 * 0.96^(t psi), free of cancellation.
    """
    half_decayed = 0.5 * power(0.96**momentum_decay, t)
    return b1 * (1.0 - half_decayed), (1.0 - b1) + b1 * half_decayed


def nadam_first_moment(
    mu: Tree, grads: Tree, b1: Any, momentum_decay: Any, count: jax.Array, product: jax.Array
) -> tuple[Tree, jax.Array]:
    """Nadam's first moment with the momentum schedule (Dozat 2016, Alg. 2; torch NAdam):

        m_bar = (1 - mu_t) g_t / (1 - prod_{i<=t} mu_i) + mu_{t+1} m_t / (1 - prod_{i<=t+1} mu_i)

    and prod_{i<=t} mu_i (float32, as torch's ``mu_product``) from `product`, prod_{i<t}.
    """
    mu_t, one_minus_mu_t = nadam_momentum(b1, momentum_decay, count)
    mu_next, _ = nadam_momentum(b1, momentum_decay, safe_increment(count))
    product = (product * mu_t).astype(jnp.float32)
    coef_grad = one_minus_mu_t / (1.0 - product)
    coef_mu = mu_next / (1.0 - product * mu_next)
    moment = jax.tree.map(
        lambda m, g: coef_grad.astype(g.dtype) * g + coef_mu.astype(m.dtype) * m, mu, grads
    )
    return moment, product


def dozat_second_moment(nu_hat: Tree, b2: Any) -> Tree:
    """n_hat = nu * n_t / (1 - nu^t): Dozat 2016, Algorithm 2 scales the bias-corrected second
    moment by nu = b2 once more (PyTorch and optax do not)."""
    return jax.tree.map(lambda v: b2 * v, nu_hat)


def raw_max_second_moment(nu_max: Tree, nu: Tree) -> Tree:
    """max(v_max, v_t) of the *raw* second moment: PyTorch's AMSGrad and Reddi et al.'s
    Algorithm 2 (optax's is of the bias-corrected v_hat, optax #1389)."""
    return jax.tree.map(jnp.maximum, nu_max, nu)


def pytorch_radam_step(
    mu_hat: Tree, nu: Tree, b2: Any, count: jax.Array, eps: Any, eps_root: Any
) -> Tree:
    """m_hat * sqrt(1 - b2^t) / (sqrt(v_t + eps_root) + eps): PyTorch's RAdam adaptive term,
    eps added to the root of the *uncorrected* v_t (torch/optim/radam.py); `eps_root` is ours.
    """
    sqrt_correction = jnp.sqrt(one_minus_power(b2, count))

    def step(m, v):
        denominator = jnp.sqrt(widen(v) + eps_root) + eps
        return safe_divide(m * sqrt_correction.astype(m.dtype), denominator)

    return jax.tree.map(step, mu_hat, nu)


def infinity_step(mu_hat: Tree, nu: Tree, eps: Any, *, eps_outside: bool) -> Tree:
    """Adamax's m_hat / u_t, eps inside u_t (`infinity_moment`: optax, PyTorch), or with
    `eps_outside` m_hat / (u_t + eps) (the paper's u_t has none). A float16 u_t is widened to
    float32 and floored at eps."""

    def step(m, u):
        if eps_outside:
            return safe_divide(m, widen(u) + eps)
        if u.dtype == jnp.float16:
            return safe_divide(m, jnp.maximum(widen(u), eps))
        return m / u

    return jax.tree.map(step, mu_hat, nu)


def infinity_moment_paper(grads: Tree, nu: Tree, b2: Any) -> Tree:
    """u_t = max(b2 * u_{t-1}, |g_t|): Kingma & Ba 2015, Algorithm 2 (AdaMax), without eps."""
    return jax.tree.map(lambda g, u: jnp.maximum(b2 * u, jnp.abs(g)), grads, nu)


def belief_paper_correction(nu: Tree, eps_root: Any) -> Tree:
    """s_t + eps: Zhuang et al. 2020, Algorithm 2 adds eps to s_t in the state *and* again
    before the bias correction, s_hat = (s_t + eps) / (1 - b2^t) (optax once, optax #440)."""
    return jax.tree.map(lambda s: s + eps_root, nu)


# --- ADOPT and AdEMAMix ----------------------------------------------------------------------


def adopt_normalised(grads: Tree, nu: Tree, eps: Any, clip: Any = None) -> Tree:
    """clip(g_t / max(sqrt(v_{t-1}), eps), c_t): ADOPT's normalised gradient (Taniguchi et al.
    2024, Algorithm 1; the clip to [-c_t, c_t] of their Section 5), in optax's operation order.
    `nu` is the *previous* second moment; `clip` None leaves it unclipped."""

    def normalise(g, v):
        scaled = g / jnp.maximum(jnp.sqrt(v), eps)
        return scaled if clip is None else jnp.clip(scaled, -clip, clip)

    return jax.tree.map(normalise, grads, nu)


def adopt_second_moment(grads: Tree, nu: Tree, b2: Any, count: jax.Array) -> Tree:
    """v_0 = g_0^2 at count 0, then v_t = b2 v_{t-1} + (1 - b2) g_t^2 (Taniguchi et al. 2024,
    Algorithm 1), 1 - b2 from the Python float (optax's from a float32 array)."""
    return jax.tree.map(
        lambda g, v, new: jnp.where(count > 0, new, abs_sq(g)), grads, nu,
        second_moment(grads, nu, b2),
    )  # fmt: skip


def adopt_first_moment(normalised: Tree, mu: Tree, b1: Any, count: jax.Array) -> Tree:
    """m_0 = 0 at count 0 (the call that reads g_0 takes no step), then Algorithm 1's
    m_t = b1 m_{t-1} + (1 - b1) clip(...), with 1 - b1 from the Python float."""
    return jax.tree.map(
        lambda m, new: jnp.where(count > 0, new, m), mu, first_moment(normalised, mu, b1)
    )


def ademamix_alpha(alpha: Any, warmup: int | None) -> Any:
    """alpha(t) = min(t alpha / T_alpha, alpha): AdEMAMix's linear warmup of the slow EMA's
    weight (Pagliardini et al. 2024, Section 3, f_alpha); `alpha` itself for no warmup."""
    if warmup is None:
        return alpha
    return lambda t: alpha * jnp.minimum(jnp.asarray(t, jnp.float32) / warmup, 1.0)


def ademamix_b3(b3: Any, b_start: Any, warmup: int | None, complement: bool = False) -> Any:
    """beta3(t) = min(exp(ln b_start ln b3 / ((1 - t/T) ln b3 + (t/T) ln b_start)), b3):
    AdEMAMix's warmup of the slow EMA's decay (Pagliardini et al. 2024, Section 3, f_beta3,
    beta_start = beta1: the half-life grows linearly in t); `b3` itself for no warmup.

    ``complement=True`` gives 1 - beta3(t), as -expm1 of the exponent (to float32's relative
    precision, unlike 1 - fl32(beta3(t))): the "paper" convention weighs g_t by it.
    """
    if warmup is None:
        if not complement:
            return b3
        return (lambda t: 1 - b3(t)) if callable(b3) else 1 - b3

    def schedule(t):
        a = jnp.minimum(jnp.asarray(t, jnp.float32) / warmup, 1.0)
        log_start, log_end = _log(b_start), _log(b3)
        exponent = log_start * log_end / ((1 - a) * log_end + a * log_start)
        if complement:
            return jnp.maximum(-jnp.expm1(exponent), 1 - b3)
        return jnp.minimum(jnp.exp(exponent), b3)

    return schedule


def slow_moment(grads: Tree, mu: Tree, decay: Any, one_minus_decay: Any) -> Tree:
    """m_t = b m_{t-1} + (1 - b) g_t with 1 - b given, not formed from b: the "paper"
    convention's slow EMA of AdEMAMix (`ademamix_b3`'s complement)."""
    return jax.tree.map(lambda g, m: one_minus_decay * g + decay * m, grads, mu)


# --- Schedule-Free ---------------------------------------------------------------------------


def schedule_free_learning_rate(
    learning_rate: Any, warmup_steps: int | None, b2: Any, convention: str
) -> Any:
    """gamma_t, Schedule-Free's learning rate at step t = 1, 2, ... (a schedule of t, or the
    constant): the linear warmup min(1, t/T_warmup) and, for "paper", Adam's bias correction.

    optax warms a constant up by `warmup_constant_schedule(0, lr, T)`, (0 - lr)(1 - t/T) + lr,
    PyTorch multiplies, lr (t/T); Defazio et al.'s Algorithm 1 (line 8) puts the bias
    correction here, gamma_t = gamma sqrt(1 - b2^t) min(1, t/T_warmup), and none in the
    denominator (`schedule_free_denominator`). A schedule is multiplied by the warmup.
    """
    lr = learning_rate
    if warmup_steps is not None:
        if convention == "optax" and not callable(learning_rate):
            lr = optax.warmup_constant_schedule(0.0, learning_rate, warmup_steps)
        else:
            lr = lambda t: (
                value_at(learning_rate, t)
                * jnp.minimum(jnp.asarray(t, jnp.float32) / warmup_steps, 1.0)
            )
    if convention != "paper":
        return lr
    return lambda t: value_at(lr, t) * jnp.sqrt(one_minus_power(b2, t))


def schedule_free_denominator(nu: Tree, b2: Any, count: jax.Array, convention: str) -> Tree:
    """The v_t whose root divides the gradient: bias-corrected v_t / (1 - b2^t) (optax in
    float32, PyTorch's `exp_avg_sq.div(bias_correction2)` to float64 accuracy), or v_t itself
    for "paper", whose gamma_t carries sqrt(1 - b2^t) (`schedule_free_learning_rate`)."""
    if convention == "paper":
        return nu
    return bias_correction(nu, b2, count, convention)


def reciprocal_step(grads: Tree, nu_hat: Tree, eps: Any) -> Tree:
    """g (1 / (sqrt(v_hat) + eps)): optax's `scale_by_rms` order (a multiplication by the
    reciprocal where `adaptive_step` divides); a float16 denominator formed in float32
    (`widen`)."""
    return jax.tree.map(
        lambda g, v: ((1 / (jnp.sqrt(widen(v)) + eps)) * widen(g)).astype(g.dtype), grads, nu_hat
    )


def schedule_free_average_weight(weight: jax.Array, total: jax.Array) -> jax.Array:
    """c_{t+1} = w_t / sum_{i<=t} w_i, w_t = gamma_max^p (Defazio et al. 2024, Algorithm 1,
    line 10, with their code's largest learning rate so far); 0 where the sum is 0, NaN
    propagated, as optax writes it."""
    return jnp.where(
        jnp.logical_or(jnp.isnan(weight), jnp.isnan(total)),
        jnp.full(weight.shape, jnp.nan),
        jnp.nan_to_num(weight / total, nan=0.0, posinf=jnp.inf),
    )


def schedule_free_x(y: Tree, z: Tree, b1: Any) -> Tree:
    """x = (y - (1 - b1) z) / b1: the averaged iterate, from the gradient point
    y = (1 - b1) z + b1 x (Defazio et al. 2024, Algorithm 1, line 5). b1 > 0."""
    return jax.tree.map(lambda yi, zi: (yi - (1.0 - b1) * zi) / b1, y, z)


def schedule_free_y(
    y: Tree, z: Tree, z_next: Tree, steps: Tree, c: Any, b1: Any, convention: str
) -> Tree:
    """y_{t+1} = (1 - b1) z_{t+1} + b1 x_{t+1}, x_{t+1} = (1 - c) x_t + c z_{t+1}, where
    z_{t+1} = z_t + s_t (`steps`, s_t = -gamma_t u_t).

    optax and the paper form x_t (`schedule_free_x`); PyTorch's `AdamWScheduleFree` moves y
    in place, `y.lerp_(z, c); y.add_(u, alpha=lr (b1 (1 - c) - 1))`: the same point, rounded
    another way (`torch_lerp`).
    """
    if convention != "pytorch":
        x = jax.tree.map(lambda xi, zi: (1.0 - c) * xi + c * zi, schedule_free_x(y, z, b1), z_next)
        return jax.tree.map(lambda xi, zi: b1 * xi + (1.0 - b1) * zi, x, z_next)

    def step(yi, zi, si):
        return torch_lerp(yi, zi, c) + (1 - b1 * (1 - c)) * si

    return jax.tree.map(step, y, z, steps)


# --- MARS and Adam-mini ----------------------------------------------------------------------


def mars_correction(grads: Tree, previous: Tree, b1: Any, gamma: Any) -> Tree:
    """c_t = g_t + gamma b1 / (1 - b1) (g_t - g_{t-1}): MARS's variance-reduced gradient
    (Yuan et al. 2024, Algorithm 1, approximate form), in the authors' order,
    ``(grad - last_grad).mul(gamma * (beta1 / (1 - beta1))).add(grad)``."""
    scale = gamma * (b1 / (1 - b1))
    return jax.tree.map(lambda g, p: (g - p) * scale + g, grads, previous)


def clip_to_unit_norm(tree: Tree) -> Tree:
    """Clip(c, 1) = c / ||c||_2 where ||c||_2 > 1, else c, per tensor: MARS's clipping (Yuan et
    al. 2024, Algorithm 1), as c / max(||c||, 1) (no 0 / 0 for a zero tensor)."""
    return jax.tree.map(lambda c: c / jnp.maximum(jnp.linalg.norm(c), 1.0).astype(c.dtype), tree)


def mars_previous_gradient(grads: Tree, last_grads: Tree, count: jax.Array) -> Tree:
    """g_{t-1} for the paper's correction: g_t itself at the first step (Algorithm 1 sets
    x_1 = x_0, so c_1 = g_1; the authors' code starts ``last_grad`` at zero)."""
    return jax.tree.map(lambda g, last: jnp.where(count == 0, g, last), grads, last_grads)


def block_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of Adam-mini's second moment for a leaf of `shape`: (1, ..., 1, out), one per
    output unit (the last axis), for ndim >= 2; one per coordinate for ndim <= 1."""
    if len(shape) <= 1:
        return shape
    return (1,) * (len(shape) - 1) + shape[-1:]


def block_mean_square(g: jax.Array) -> jax.Array:
    """mean(|g|^2) over each block of `block_shape` (g^2 itself for ndim <= 1), in float32 at
    least (a bfloat16 sum would round)."""
    squares = abs_sq(g)
    if g.ndim <= 1:
        return squares
    dtype = jnp.promote_types(squares.dtype, jnp.float32)
    return jnp.mean(squares, axis=tuple(range(g.ndim - 1)), keepdims=True, dtype=dtype)


def block_second_moment(grads: Tree, nu: Tree, b2: Any, convention: str = "optax") -> Tree:
    """v_t = b2 v_{t-1} + (1 - b2) mean(g_t ⊙ g_t) per block (Zhang et al. 2024, Algorithm 1,
    line 8); for ndim <= 1 Adam's v_t (in `convention`'s rounding, `moments_for`)."""
    _, second_moment = moments_for(convention)

    def leaf(g, v):
        if g.ndim <= 1:
            return second_moment(g, v, b2)
        return (1 - b2) * block_mean_square(g) + b2 * v

    return jax.tree.map(leaf, grads, nu)
