r"""The Adam family's gradient transformations, written from the papers.

Each factory returns an `optax.GradientTransformation(init, update)`: state goes in and comes
out as a NamedTuple of arrays, nothing is mutated, so every transform is safe under `jax.jit`,
`jax.vmap`, `jax.pmap` and optax's wrappers (`inject_hyperparams`, `MultiSteps`, `masked`,
`apply_if_finite`). The transforms only *rescale* gradients; the aliases in `alias.py` chain
them with `scale_by_learning_rate` (and `add_decayed_weights` for the decoupled variants).

Notation: g_t gradient, m_t first moment, v_t second moment, t = 1, 2, ... the step count
after the update, hats denote bias-corrected moments.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamlab.optim import numerics, validation

Tree = Any


class ScaleByAdamState(NamedTuple):
    """State of Adam-like transforms: step count, first moment, second (or infinity) moment."""

    count: jax.Array  # shape (), int32: number of updates applied so far
    mu: Tree
    nu: Tree


class ScaleByAmsgradState(NamedTuple):
    """AMSGrad also keeps the running maximum of the (bias-corrected) second moment."""

    count: jax.Array
    mu: Tree
    nu: Tree
    nu_max: Tree


class ScaleByScheduleState(NamedTuple):
    """Step count for a scheduled scale (learning rate or weight decay)."""

    count: jax.Array


def _check_moment_hparams(name: str, b1: Any, b2: Any, eps: Any, eps_root: Any = 0.0) -> None:
    validation.check_decay(name, "b1", b1)
    validation.check_decay(name, "b2", b2)
    validation.check_non_negative(name, "eps", eps)
    validation.check_non_negative(name, "eps_root", eps_root)


def _zero_count() -> jax.Array:
    return jnp.zeros([], jnp.int32)


def scale_by_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    r"""Rescales gradients by Adam's bias-corrected moment estimates.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        \hat m_t = m_t / (1-\beta_1^t), \quad \hat v_t = v_t / (1-\beta_2^t) \\
        u_t = \hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)

    With ``nesterov=True`` (Nadam, Dozat 2016) the first moment looks one step ahead:
    :math:`\hat m_t = \beta_1 m_t/(1-\beta_1^{t+1}) + (1-\beta_1) g_t/(1-\beta_1^t)`.

    Args:
      b1: decay of the first-moment average, in [0, 1).
      b2: decay of the second-moment average, in [0, 1).
      eps: added to the denominator outside the square root (the paper's epsilon), >= 0.
      eps_root: added inside the square root; > 0 keeps meta-gradients finite, >= 0.
      mu_dtype: dtype in which to *store* the first moment (e.g. ``jnp.bfloat16`` to halve its
        memory); the update is computed in the promoted dtype. None keeps the params' dtype.
      nesterov: use Nesterov momentum (Nadam).

    Returns:
      An ``optax.GradientTransformation`` with state :class:`ScaleByAdamState`.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = optax.chain(scale_by_adam(), optax.scale(-1e-3))
      >>> params = {"w": jnp.ones(3)}
      >>> updates, state = tx.update({"w": jnp.ones(3)}, tx.init(params))

    References:
      Kingma & Ba, Adam: A Method for Stochastic Optimization, ICLR 2015, Algorithm 1.
      Dozat, Incorporating Nesterov Momentum into Adam, ICLR workshop 2016.
    """
    _check_moment_hparams("scale_by_adam", b1, b2, eps, eps_root)
    validation.check_mu_dtype("scale_by_adam", mu_dtype)
    mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)

    def init_fn(params):
        return ScaleByAdamState(
            count=_zero_count(),
            mu=numerics.zeros_like(params, dtype=mu_dtype),
            nu=numerics.zeros_like(params),
        )

    def update_fn(updates, state, params=None):
        del params
        mu = numerics.first_moment(updates, state.mu, b1)
        nu = numerics.second_moment(updates, state.nu, b2)
        count = numerics.safe_increment(state.count)
        if nesterov:
            mu_hat = numerics.nesterov_first_moment(mu, updates, b1, count)
        else:
            mu_hat = numerics.bias_correction(mu, b1, count)
        nu_hat = numerics.bias_correction(nu, b2, count)
        updates = numerics.adaptive_step(mu_hat, nu_hat, eps, eps_root)
        # The moments are computed in the promoted dtype and stored in their own dtypes.
        mu = numerics.cast(mu, mu_dtype)
        nu = numerics.cast_like(nu, state.nu)
        return updates, ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_amsgrad(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
) -> optax.GradientTransformation:
    r"""Rescales gradients like Adam, but divides by the running maximum of the second moment.

    .. math::
        \hat v^{max}_t = \max(\hat v^{max}_{t-1}, \hat v_t), \quad
        u_t = \hat m_t / (\sqrt{\hat v^{max}_t + \epsilon_{root}} + \epsilon)

    The maximum makes the effective per-coordinate step size non-increasing, which repairs
    Adam's convergence proof (Reddi et al. 2018). Following optax, the moments are
    bias-corrected before the maximum by default; ``bias_correction_mu=False,
    bias_correction_nu=False`` gives the paper's uncorrected Algorithm 2.

    Args:
      b1, b2, eps, eps_root, mu_dtype: as in :func:`scale_by_adam`.
      bias_correction_mu: bias-correct the first moment.
      bias_correction_nu: bias-correct the second moment before taking the maximum.

    References:
      Reddi, Kale & Kumar, On the Convergence of Adam and Beyond, ICLR 2018.
    """
    _check_moment_hparams("scale_by_amsgrad", b1, b2, eps, eps_root)
    validation.check_mu_dtype("scale_by_amsgrad", mu_dtype)
    validation.check_bool("scale_by_amsgrad", "bias_correction_mu", bias_correction_mu)
    validation.check_bool("scale_by_amsgrad", "bias_correction_nu", bias_correction_nu)
    mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)

    def init_fn(params):
        return ScaleByAmsgradState(
            count=_zero_count(),
            mu=numerics.zeros_like(params, dtype=mu_dtype),
            nu=numerics.zeros_like(params),
            nu_max=numerics.zeros_like(params),
        )

    def update_fn(updates, state, params=None):
        del params
        mu = numerics.first_moment(updates, state.mu, b1)
        nu = numerics.second_moment(updates, state.nu, b2)
        count = numerics.safe_increment(state.count)
        mu_hat = numerics.bias_correction(mu, b1, count) if bias_correction_mu else mu
        nu_hat = numerics.bias_correction(nu, b2, count) if bias_correction_nu else nu
        nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu_hat)
        updates = numerics.adaptive_step(mu_hat, nu_max, eps, eps_root)
        mu = numerics.cast(mu, mu_dtype)
        return updates, ScaleByAmsgradState(count=count, mu=mu, nu=nu, nu_max=nu_max)

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_radam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    threshold: float = 5.0,
    *,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    r"""Rescales gradients by Rectified Adam: Adam once the variance of v_t is tractable.

    The length of the approximated simple moving average behind v_t is

    .. math::
        \rho_\infty = 2/(1-\beta_2) - 1, \quad
        \rho_t = \rho_\infty - 2 t \beta_2^t / (1 - \beta_2^t).

    While :math:`\rho_t <` ``threshold`` the adaptive learning rate's variance is
    intractable and the update is plain bias-corrected momentum :math:`\hat m_t`; after that
    it is the Adam step scaled by the variance rectification term

    .. math::
        r_t = \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}}.

    Args:
      b1, b2, eps, eps_root, nesterov: as in :func:`scale_by_adam`.
      threshold: the value of rho_t from which the rectified Adam step is used (the paper
        uses 4, optax 5); must be >= 4, below which r_t is not real.

    References:
      Liu et al., On the Variance of the Adaptive Learning Rate and Beyond, ICLR 2020.
    """
    _check_moment_hparams("scale_by_radam", b1, b2, eps, eps_root)
    validation.check_range("scale_by_radam", "threshold", threshold, low=4.0)
    rho_inf = 2.0 / (1.0 - b2) - 1.0

    def rectified(rho, mu_hat, nu_hat):
        r = jnp.sqrt(
            (rho - 4.0) * (rho - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho)
        )
        return jax.tree.map(
            lambda m, v: r.astype(m.dtype) * m / (jnp.sqrt(v + eps_root) + eps), mu_hat, nu_hat
        )

    def init_fn(params):
        return ScaleByAdamState(
            count=_zero_count(), mu=numerics.zeros_like(params), nu=numerics.zeros_like(params)
        )

    def update_fn(updates, state, params=None):
        del params
        mu = numerics.first_moment(updates, state.mu, b1)
        nu = numerics.second_moment(updates, state.nu, b2)
        count = numerics.safe_increment(state.count)
        b2_t = b2**count
        rho = rho_inf - 2 * count * b2_t / (1 - b2_t)
        if nesterov:
            mu_hat = numerics.nesterov_first_moment(mu, updates, b1, count)
        else:
            mu_hat = numerics.bias_correction(mu, b1, count)
        nu_hat = numerics.bias_correction(nu, b2, count)
        # Both branches are computed; `where` selects (the rejected one may hold NaNs from a
        # negative square root, which never reach the result).
        updates = jax.tree.map(
            lambda adam_step, momentum: jnp.where(rho >= threshold, adam_step, momentum),
            rectified(rho, mu_hat, nu_hat),
            mu_hat,
        )
        return updates, ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_adamax(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformation:
    r"""Rescales gradients by Adamax: Adam with the L2 norm of past gradients replaced by L-inf.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
        u_t = \max(\beta_2 u_{t-1}, |g_t| + \epsilon), \quad
        \text{update} = \hat m_t / u_t.

    The infinity norm needs no bias correction (it is not an average that starts at zero).

    References:
      Kingma & Ba, Adam: A Method for Stochastic Optimization, ICLR 2015, Algorithm 2.
    """
    _check_moment_hparams("scale_by_adamax", b1, b2, eps)

    def init_fn(params):
        return ScaleByAdamState(
            count=_zero_count(), mu=numerics.zeros_like(params), nu=numerics.zeros_like(params)
        )

    def update_fn(updates, state, params=None):
        del params
        count = numerics.safe_increment(state.count)
        mu = numerics.first_moment(updates, state.mu, b1)
        nu = numerics.infinity_moment(updates, state.nu, b2, eps)
        mu_hat = numerics.bias_correction(mu, b1, count)
        updates = jax.tree.map(lambda m, u: m / u, mu_hat, nu)
        return updates, ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_belief(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-16,
    eps_root: float = 1e-16,
    *,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    r"""Rescales gradients by AdaBelief: Adam with the variance of the gradient around its
    prediction m_t in place of its raw second moment.

    .. math::
        s_t = \beta_2 s_{t-1} + (1-\beta_2)(g_t - m_t)^2 + \epsilon_{root}, \quad
        u_t = \hat m_t / (\sqrt{\hat s_t} + \epsilon)

    A gradient close to its prediction ("belief") gives a small s_t and a large step.

    Args:
      b1, b2, nesterov: as in :func:`scale_by_adam`.
      eps: added outside the square root (paper: 1e-16).
      eps_root: added to s_t at every step (the paper's epsilon inside Algorithm 2).

    References:
      Zhuang et al., AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed
      Gradients, NeurIPS 2020.
    """
    _check_moment_hparams("scale_by_belief", b1, b2, eps, eps_root)

    def init_fn(params):
        return ScaleByAdamState(
            count=_zero_count(), mu=numerics.zeros_like(params), nu=numerics.zeros_like(params)
        )

    def update_fn(updates, state, params=None):
        del params
        mu = numerics.first_moment(updates, state.mu, b1)
        surprise = jax.tree.map(lambda g, m: g - m, updates, mu)
        nu = numerics.second_moment(surprise, state.nu, b2)
        nu = jax.tree.map(lambda s: s + eps_root, nu)
        count = numerics.safe_increment(state.count)
        if nesterov:
            mu_hat = numerics.nesterov_first_moment(mu, updates, b1, count)
        else:
            mu_hat = numerics.bias_correction(mu, b1, count)
        nu_hat = numerics.bias_correction(nu, b2, count)
        updates = numerics.adaptive_step(mu_hat, nu_hat, eps, 0.0)
        return updates, ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def _decay_leaf(g: jax.Array, p: jax.Array, decayed: Any, rate: Any) -> jax.Array:
    """g + rate * p where the mask says so (Python bools decide at trace time)."""
    if decayed is False:
        return g
    if decayed is True:
        return g + rate * p
    return jnp.where(decayed, g + rate * p, g)


def _broadcast_mask(mask: Any, params: Tree) -> Tree:
    """Expands a mask that is a prefix of `params` (or a callable) to one bool per leaf."""
    mask_tree = mask(params) if callable(mask) else mask
    return jax.tree.map(lambda m, subtree: jax.tree.map(lambda _: m, subtree), mask_tree, params)


def add_decayed_weights(weight_decay: Any = 0.0, mask: Any = None) -> optax.GradientTransformation:
    r"""Adds ``weight_decay * params`` to the updates: decoupled weight decay.

    Placed after the adaptive rescaling (AdamW), the decay is not divided by
    :math:`\sqrt{\hat v_t}`, so every weight decays at the same relative rate; Loshchilov &
    Hutter show this is what L2 regularisation was meant to do. As in optax and PyTorch the
    decay is later multiplied by the learning rate.

    Args:
      weight_decay: a non-negative float, or a schedule of the step.
      mask: None (decay everything), a pytree of bools that is a prefix of the params, or a
        callable returning one from the params. ``False`` leaves are not decayed (biases,
        normalisation scales).

    References:
      Loshchilov & Hutter, Decoupled Weight Decay Regularization, ICLR 2019.
    """
    validation.check_non_negative("add_decayed_weights", "weight_decay", weight_decay)
    validation.check_mask("add_decayed_weights", mask)
    scheduled = callable(weight_decay)

    def init_fn(params):
        del params
        return ScaleByScheduleState(count=_zero_count()) if scheduled else optax.EmptyState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("add_decayed_weights needs the params: call update(g, state, params)")
        if scheduled:
            rate = weight_decay(state.count)
            state = ScaleByScheduleState(count=numerics.safe_increment(state.count))
        elif isinstance(weight_decay, int | float) and weight_decay == 0.0:
            return updates, state  # nothing to add; skip the tree traversal
        else:
            rate = weight_decay
        if mask is None:
            decayed = jax.tree.map(lambda _: True, params)
        else:
            decayed = _broadcast_mask(mask, params)
        updates = jax.tree.map(lambda g, p, d: _decay_leaf(g, p, d, rate), updates, params, decayed)
        return updates, state

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_learning_rate(learning_rate: Any) -> optax.GradientTransformation:
    """Multiplies updates by ``-learning_rate`` (a float, or a schedule of the step count).

    The sign flip turns the ascent direction computed by the transforms into a descent step,
    so that ``optax.apply_updates(params, updates)`` minimises the loss.
    """
    validation.check_learning_rate("scale_by_learning_rate", learning_rate)

    if not callable(learning_rate):

        def update_constant(updates, state, params=None):
            del params
            step_size = -1 * learning_rate
            return jax.tree.map(lambda g: step_size * g, updates), state

        return optax.GradientTransformation(lambda params: optax.EmptyState(), update_constant)

    def init_fn(params):
        del params
        return ScaleByScheduleState(count=_zero_count())

    def update_fn(updates, state, params=None):
        del params
        step_size = -1 * learning_rate(state.count)
        updates = jax.tree.map(lambda g: jnp.array(step_size, dtype=g.dtype) * g, updates)
        return updates, ScaleByScheduleState(count=numerics.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)
