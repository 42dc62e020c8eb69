r"""Fused variants of the Adam family: the same update rules with one division per element.

`transform.py` follows optax operation for operation, and optax bias-corrects each moment
by dividing it, elementwise, by :math:`1-\beta^t`:

.. math::
    u_t = \frac{m_t / (1-\beta_1^t)}{\sqrt{v_t / (1-\beta_2^t) + \epsilon_{root}} + \epsilon}

That is three divisions and a square root per parameter. A vector division costs as much
as a square root and several times a multiplication, so on a CPU the step may be bound by
arithmetic as much as by memory (what this bought on a shared 2-core CPU, 0.72-1.10 of the
unfused step's time depending on the run: README "Benchmarks", benchmarks/vs_pytorch.py).
Here the two corrections are scalars inverted once per step, :math:`r = 1/(1-\beta^t)`,
and the moments are multiplied by them:

.. math::
    u_t = \frac{m_t r_1}{\sqrt{v_t r_2 + \epsilon_{root}} + \epsilon}

(Nadam's look-ahead moment becomes :math:`m_t \beta_1 r_1' + g_t (1-\beta_1) r_1`, with
:math:`r_1' = 1/(1-\beta_1^{t+1})`.) :math:`m r` and :math:`m / (1/r)` differ by at most one
rounding, so a fused update is within a few float32 ulps of the unfused one and the moments
``mu`` and ``nu`` are computed by the same `numerics` functions, bit for bit; over 500 steps
the parameters stay within 1e-6 relative of the unfused optimizer's (tests/test_optim_fused.py).

Each fused transform has the same state as its unfused twin (`transform.ScaleByAdamState`,
`transform.ScaleByAmsgradState`), the same signature and the same conventions, and takes and
returns the user's pytrees: a checkpoint of one restores into the other, and everything that
works on the unfused transforms (jit, vmap, pmap, `inject_hyperparams`, schedules, masks,
`multi_transform`) works here. Reach them with ``fused=True`` on the aliases or
``optim.create(name, fused=True, ...)``.

What bounds it on a CPU (`benchmarks/vs_pytorch.py`, README "Benchmarks"): XLA's cost analysis
of the compiled step (update and apply) counts 40 bytes per float32 parameter for this, the
unfused and optax's Adam alike, where one pass would move 28 (read p, g, m, v; write p, m, v).
XLA:CPU splits a loop fusion over its threads only when the fusion has one output, so it
writes m, v and the parameters in three parallel passes instead of one single-threaded pass;
at 10M-50M parameters those 40 bytes move at 84-101% of a triad's bandwidth measured beside
them, while `torch.optim.Adam(fused=True)` moves 28 in one multi-threaded pass (1.3-1.6x
faster). `optim.update_and_apply` therefore runs ``adam``, ``adamw``, ``nadam`` and ``nadamw``
with ``fused=True`` as one pass on a C++ kernel (`adamlab.optim.one_pass`): the same
operations, 28 bytes per parameter.

Measured and rejected (`python benchmarks/vs_pytorch.py --candidates`, README "Benchmarks"):
packing the state of all leaves into one flat buffer per dtype. The gradients and the
parameters stay a tree, so every step concatenates the gradients and slices the update back
into leaves; on the 2-core CPU that step took 4.4x the per-leaf one at 10M parameters in 200
leaves (167 vs 38 ms), and won only at 1M (0.81x), where the step is dominated by dispatch.
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from adamlab.optim import numerics, transform, validation

Tree = Any

# The optimizers with a fused variant, and the conventions it exists for.
FUSED: dict[str, tuple[str, ...]] = {
    "adam": numerics.CONVENTIONS,
    "adamw": numerics.CONVENTIONS,
    "amsgrad": numerics.CONVENTIONS,
    "nadam": ("optax",),
    "nadamw": ("optax",),
    "adamax": numerics.CONVENTIONS,
    "adabelief": ("optax", "paper"),
}


def check_fused(optimizer: str, fused: Any, convention: str) -> None:
    """`fused` is a bool, and True only where a fused variant exists (`FUSED`)."""
    validation.check_bool(optimizer, "fused", fused)
    if not fused:
        return
    if optimizer not in FUSED:
        raise ValueError(
            f"{optimizer}: fused=True does not exist for {optimizer}; fused variants exist "
            f"for {', '.join(FUSED)}"
        )
    if convention not in FUSED[optimizer]:
        raise ValueError(
            f"{optimizer}: fused=True exists for convention "
            f"{' or '.join(map(repr, FUSED[optimizer]))}, got {convention!r}; "
            "use fused=False"
        )


def reciprocal_correction(decay: Any, count: jax.Array, convention: str) -> jax.Array:
    """1 / (1 - decay^t), once per step: the scalar that bias-corrects by multiplication.

    1 - decay^t is formed as `numerics.bias_correction_for(convention)` forms it (optax: in
    float32 from decay rounded to float32; PyTorch and the papers: float64-accurate).
    """
    if convention == "optax":
        return 1 / (1 - decay**count)
    return 1 / numerics.one_minus_power(decay, count)


def scale(tree: Tree, factor: jax.Array) -> Tree:
    """Every leaf times the scalar `factor`, cast to the leaf's dtype (as the unfused
    `numerics.bias_correction` casts its divisor)."""
    return jax.tree.map(lambda x: x * factor.astype(x.dtype), tree)


def nesterov_coefficients(b1: Any, count: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(b1 / (1 - b1^(t+1)), (1 - b1) / (1 - b1^t)): the scalars of Nadam's bias-corrected
    look-ahead moment, `numerics.nesterov_first_moment` with its two divisions folded in."""
    coef_mu = b1 * reciprocal_correction(b1, numerics.safe_increment(count), "optax")
    coef_grad = (1 - b1) * reciprocal_correction(b1, count, "optax")
    return coef_mu, coef_grad


def _nesterov_first_moment(mu: Tree, grads: Tree, b1: Any, count: jax.Array) -> Tree:
    """coef_mu m + coef_grad g (`nesterov_coefficients`), leaf by leaf."""
    coef_mu, coef_grad = nesterov_coefficients(b1, count)
    return jax.tree.map(
        lambda m, g: coef_mu.astype(m.dtype) * m + coef_grad.astype(g.dtype) * g, mu, grads
    )


def _check(name: str, b1: Any, b2: Any, eps: Any, eps_root: Any, convention: str) -> None:
    validation.check_decay(name, "b1", b1)
    validation.check_decay(name, "b2", b2)
    validation.check_non_negative(name, "eps", eps)
    validation.check_non_negative(name, "eps_root", eps_root)
    validation.check_convention(name, convention)


def scale_by_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
    convention: str = "optax",
) -> optax.GradientTransformation:
    r"""`transform.scale_by_adam` with the bias corrections as scalar multiplications.

    Same rule, arguments and state (:class:`transform.ScaleByAdamState`); Nadam
    (``nesterov=True``) in the optax convention only (PyTorch's and Dozat's momentum schedule
    has no fused variant). See the module docstring for what changes in the rounding.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = scale_by_adam()
      >>> updates, state = tx.update({"w": jnp.ones(3)}, tx.init({"w": jnp.ones(3)}))
    """
    _check("scale_by_adam", b1, b2, eps, eps_root, convention)
    validation.check_mu_dtype("scale_by_adam", mu_dtype)
    if nesterov:
        check_fused("nadam", True, convention)
    mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)
    first_moment, second_moment = numerics.moments_for(convention)

    def init_fn(params):
        return transform.ScaleByAdamState(
            count=transform._zero_count(),
            mu=numerics.zeros_like(params, dtype=mu_dtype),
            nu=numerics.zeros_like(params),
        )

    def update_fn(updates, state, params=None):
        del params
        mu = first_moment(updates, state.mu, b1)
        nu = second_moment(updates, state.nu, b2)
        count = numerics.safe_increment(state.count)
        if nesterov:
            mu_hat = _nesterov_first_moment(mu, updates, b1, count)
        else:
            mu_hat = scale(mu, reciprocal_correction(b1, count, convention))
        nu_hat = scale(nu, reciprocal_correction(b2, count, convention))
        updates = numerics.adaptive_step(mu_hat, nu_hat, eps, eps_root)
        mu = transform._store(mu, state.mu, mu_dtype)
        nu = transform._store(nu, state.nu)
        return updates, transform.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_amsgrad(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    bias_correction_mu: bool | None = None,
    bias_correction_nu: bool | None = None,
    *,
    convention: str = "optax",
) -> optax.GradientTransformation:
    """`transform.scale_by_amsgrad` with the bias corrections as scalar multiplications.

    Same rule, arguments, conventions and state (:class:`transform.ScaleByAmsgradState`).
    In the optax convention the running maximum is of :math:`v_t r_2`, which may differ from
    the unfused maximum of :math:`v_t / (1-\\beta_2^t)` by one rounding.
    """
    _check("scale_by_amsgrad", b1, b2, eps, eps_root, convention)
    validation.check_mu_dtype("scale_by_amsgrad", mu_dtype)
    optax_mu, optax_nu = transform.amsgrad_bias_corrections(
        bias_correction_mu, bias_correction_nu, convention
    )
    correct_mu = convention == "pytorch" or (convention == "optax" and optax_mu)
    correct_nu = convention == "optax" and optax_nu
    mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)
    first_moment, second_moment = numerics.moments_for(convention)

    def init_fn(params):
        return transform.ScaleByAmsgradState(
            count=transform._zero_count(),
            mu=numerics.zeros_like(params, dtype=mu_dtype),
            nu=numerics.zeros_like(params),
            nu_max=numerics.zeros_like(params),
        )

    def update_fn(updates, state, params=None):
        del params
        mu = first_moment(updates, state.mu, b1)
        nu = second_moment(updates, state.nu, b2)
        count = numerics.safe_increment(state.count)
        r1 = reciprocal_correction(b1, count, convention)
        r2 = reciprocal_correction(b2, count, convention)
        mu_hat = scale(mu, r1) if correct_mu else mu
        if convention == "optax":
            nu_max = jax.tree.map(jnp.maximum, state.nu_max, scale(nu, r2) if correct_nu else nu)
            nu_max_hat = nu_max
        else:  # the maximum of the raw v_t, bias-corrected after it by PyTorch only
            nu_max = numerics.raw_max_second_moment(state.nu_max, nu)
            nu_max_hat = scale(nu_max, r2) if convention == "pytorch" else nu_max
        updates = numerics.adaptive_step(mu_hat, nu_max_hat, eps, eps_root)
        mu = transform._store(mu, state.mu, mu_dtype)
        nu, nu_max = transform._store(nu, state.nu), transform._store(nu_max, state.nu_max)
        return updates, transform.ScaleByAmsgradState(count=count, mu=mu, nu=nu, nu_max=nu_max)

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_adamax(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, *, convention: str = "optax"
) -> optax.GradientTransformation:
    """`transform.scale_by_adamax` with the first moment's bias correction as a scalar
    multiplication (one division per element instead of two). Same rule, conventions and
    state (:class:`transform.ScaleByAdamState`)."""
    _check("scale_by_adamax", b1, b2, eps, 0.0, convention)
    first_moment, _ = numerics.moments_for(convention)

    def init_fn(params):
        return transform.ScaleByAdamState(
            count=transform._zero_count(),
            mu=numerics.zeros_like(params),
            nu=numerics.zeros_like(params),
        )

    def update_fn(updates, state, params=None):
        del params
        count = numerics.safe_increment(state.count)
        mu = first_moment(updates, state.mu, b1)
        if convention == "paper":
            nu = numerics.infinity_moment_paper(updates, state.nu, b2)
        else:
            nu = numerics.infinity_moment(updates, state.nu, b2, eps)
        mu_hat = scale(mu, reciprocal_correction(b1, count, convention))
        updates = numerics.infinity_step(mu_hat, nu, eps, eps_outside=convention == "paper")
        mu, nu = transform._store(mu, state.mu), transform._store(nu, state.nu)
        return updates, transform.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_belief(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-16,
    eps_root: float = 1e-16,
    *,
    nesterov: bool = False,
    convention: str = "optax",
) -> optax.GradientTransformation:
    """`transform.scale_by_belief` with the bias corrections as scalar multiplications.

    Same rule, arguments and state; conventions "optax" and "paper" (PyTorch has no
    AdaBelief), Nesterov in the optax convention only, as unfused.
    """
    _check("scale_by_belief", b1, b2, eps, eps_root, convention)
    check_fused("adabelief", True, convention)
    if nesterov and convention != "optax":
        raise ValueError(
            f"scale_by_belief: nesterov=True exists only for convention='optax', got {convention!r}"
        )

    def init_fn(params):
        return transform.ScaleByAdamState(
            count=transform._zero_count(),
            mu=numerics.zeros_like(params),
            nu=numerics.zeros_like(params),
        )

    def update_fn(updates, state, params=None):
        del params
        mu = numerics.first_moment(updates, state.mu, b1)
        surprise = jax.tree.map(lambda g, m: g - m, updates, mu)
        nu = numerics.second_moment(surprise, state.nu, b2)
        nu = jax.tree.map(lambda s: s + eps_root, nu)
        count = numerics.safe_increment(state.count)
        if nesterov:
            mu_hat = _nesterov_first_moment(mu, updates, b1, count)
        else:
            mu_hat = scale(mu, reciprocal_correction(b1, count, convention))
        if convention == "paper":
            nu_hat = numerics.belief_paper_correction(nu, eps_root)
        else:
            nu_hat = nu
        nu_hat = scale(nu_hat, reciprocal_correction(b2, count, convention))
        updates = numerics.adaptive_step(mu_hat, nu_hat, eps, 0.0)
        mu, nu = transform._store(mu, state.mu), transform._store(nu, state.nu)
        return updates, transform.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)
