"""The Adam family's gradient transformations and its successors', written from the papers.

Each factory returns a pure `optax.GradientTransformation` (NamedTuple state, safe under jit,
vmap and optax's wrappers) that *rescales* gradients; `alias.py` chains them with
`scale_by_learning_rate` and the weight decays. `schedule_free` wraps such a chain instead.
Notation: g_t gradient, m_t, v_t the moments, t = 1, 2, ... the count after the update, hats
bias-corrected. ``convention`` and ``fused`` as in `alias.py`; each difference between the
conventions is one function of `numerics.py`. A transform checks its arguments when a user
calls it (`validation.checked`); the constructors, having checked, call it ``.unchecked``.
"""

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax.contrib import MuonDimensionNumbers  # optax's, so that one spec serves both

from adamlab.optim import numerics, validation
from adamlab.optim.validation import checked

Tree = Any
__all__ = [  # what `adamlab.optim` exports
    "MuonDimensionNumbers",
    "ScaleByAdamState",
    "ScaleByAdemamixState",
    "ScaleByAmsgradState",
    "ScaleByLionState",
    "ScaleByMarsState",
    "ScaleByMuonState",
    "ScaleByNadamState",
    "ScaleByRmsState",
    "ScaleByScheduleState",
    "ScaleBySoapState",
    "ScheduleFreeState",
    "add_decayed_weights",
    "conv_dimension_numbers",
    "scale_by_adam",
    "scale_by_adam_mini",
    "scale_by_adamax",
    "scale_by_ademamix",
    "scale_by_adopt",
    "scale_by_amsgrad",
    "scale_by_belief",
    "scale_by_cautious",
    "scale_by_learning_rate",
    "scale_by_lion",
    "scale_by_mars",
    "scale_by_muon",
    "scale_by_radam",
    "scale_by_second_moment",
    "scale_by_soap",
    "scale_by_trust_ratio",
    "schedule_free",
    "schedule_free_eval_params",
    "subtract_decayed_weights",
]


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


class ScaleByNadamState(NamedTuple):
    """Nadam with a momentum schedule (PyTorch, Dozat 2016) also keeps prod_{i<=t} mu_i."""

    count: jax.Array
    mu: Tree
    nu: Tree
    mu_product: jax.Array  # shape (), float32, as torch.optim.NAdam's state["mu_product"]


class ScaleByLionState(NamedTuple):
    """Lion keeps one moment: the momentum m_t (optax's `ScaleByLionState`)."""

    count: jax.Array
    mu: Tree


class ScaleByMuonState(NamedTuple):
    """Muon keeps its momentum and, as optax's `MuonState` does, its Newton-Schulz coefficients
    (so that the two states match leaf for leaf)."""

    count: jax.Array
    mu: Tree
    ns_coeffs: jax.Array  # shape (3,): a, b, c of the quintic a X + b (XX^T) X + c (XX^T)^2 X


class ScaleByScheduleState(NamedTuple):
    """Step count for a scheduled scale (learning rate or weight decay)."""

    count: jax.Array


def _zero_count() -> jax.Array:
    return jnp.zeros([], jnp.int32)


def _store(new: Tree, old: Tree, dtype: Any = None) -> Tree:
    """`new`, computed in the promoted dtype, stored in `dtype`, else in `old`'s: float32
    injected hyperparameters must not change a bfloat16 state's dtypes from step to step."""
    return numerics.cast(new, dtype) if dtype is not None else numerics.cast_like(new, old)


def _storage_dtype(dtype: Any) -> Any:
    """`mu_dtype` / `nu_dtype` as a numpy dtype; None (the params' dtype) stays None."""
    return None if dtype is None else jnp.dtype(dtype)


def _init_moments(mu_dtype: Any = None, nu_dtype: Any = None):
    """The init of a `ScaleByAdamState`: count 0, zero moments stored in `mu_dtype` and
    `nu_dtype` (None: the params' dtype)."""

    def init_fn(params):
        mu = numerics.zeros_like(params, dtype=mu_dtype)
        nu = numerics.zeros_like(params, dtype=nu_dtype)
        return ScaleByAdamState(count=_zero_count(), mu=mu, nu=nu)

    return init_fn


def _moments(
    count: jax.Array, mu: Tree, nu: Tree, state: Any, mu_dtype: Any = None, nu_dtype: Any = None
):
    """The next `ScaleByAdamState`, its moments stored in `mu_dtype` and `nu_dtype`, else in
    the dtypes they had (`_store`)."""
    mu, nu = _store(mu, state.mu, mu_dtype), _store(nu, state.nu, nu_dtype)
    return ScaleByAdamState(count=count, mu=mu, nu=nu)


@checked
def scale_by_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    nu_dtype: Any = None,
    nesterov: bool = False,
    convention: str = "optax",
    momentum_decay: Any = None,
    fused: bool = False,
) -> optax.GradientTransformation:
    r"""Rescales gradients by Adam's bias-corrected moment estimates.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        \hat m_t = m_t / (1-\beta_1^t), \quad \hat v_t = v_t / (1-\beta_2^t) \\
        u_t = \hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)

    With ``nesterov=True`` (Nadam, Dozat 2016) the first moment looks one step ahead:
    :math:`\hat m_t = \beta_1 m_t/(1-\beta_1^{t+1}) + (1-\beta_1) g_t/(1-\beta_1^t)`.

    Conventions: "pytorch" and "paper" form :math:`1-\beta^t` to float64 accuracy. Their
    Nadam has the momentum schedule :math:`\mu_t = \beta_1(1 - \tfrac12 0.96^{t\psi})` for
    :math:`\beta_1` (`numerics.nadam_momentum`, state :class:`ScaleByNadamState`), and
    "paper" scales :math:`\hat v_t` by :math:`\beta_2` (`numerics.dozat_second_moment`).

    Args:
      b1: decay of the first-moment average, in [0, 1).
      b2: decay of the second-moment average, in [0, 1).
      eps: added to the denominator outside the square root (the paper's epsilon), >= 0.
      eps_root: added inside the square root; > 0 keeps meta-gradients finite, >= 0.
      mu_dtype: dtype in which to *store* the first moment (e.g. ``jnp.bfloat16``); the update
        is computed in the promoted dtype. None keeps the params' dtype.
      nu_dtype: the same for the second moment (optax has `mu_dtype` only, optax #1552).
      nesterov: use Nesterov momentum (Nadam).
      convention: "optax", "pytorch" or "paper".
      momentum_decay: Nadam's :math:`\psi` for "pytorch" and "paper"; None means 0.004.
      fused: bias-correct by scalar multiplications (`numerics.bias_correction`).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = optax.chain(scale_by_adam(), optax.scale(-1e-3))
      >>> params = {"w": jnp.ones(3)}
      >>> updates, state = tx.update({"w": jnp.ones(3)}, tx.init(params))

    References:
      Kingma & Ba, Adam: A Method for Stochastic Optimization, ICLR 2015, Algorithm 1.
      Dozat, Incorporating Nesterov Momentum into Adam, ICLR workshop 2016, Algorithm 2.
    """
    scheduled = nesterov and convention != "optax"  # Nadam's momentum schedule mu_t
    if not scheduled:
        why = "optax's Nadam has no momentum schedule" if nesterov else "Adam has no schedule"
        validation.check_unset("scale_by_adam", "momentum_decay", momentum_decay, convention, why)
    momentum_decay = 0.004 if momentum_decay is None else momentum_decay
    mu_dtype, nu_dtype = _storage_dtype(mu_dtype), _storage_dtype(nu_dtype)
    correct = functools.partial(numerics.bias_correction, convention=convention, fused=fused)
    first_moment, second_moment = numerics.moments_for(convention)

    def init_fn(params):
        moments = _init_moments(mu_dtype, nu_dtype)(params)
        return ScaleByNadamState(*moments, jnp.ones([], jnp.float32)) if scheduled else moments

    def update_fn(updates, state, params=None):
        del params
        mu = first_moment(updates, state.mu, b1)
        nu = second_moment(updates, state.nu, b2)
        count = numerics.safe_increment(state.count)
        if scheduled:
            mu_hat, product = numerics.nadam_first_moment(
                mu, updates, b1, momentum_decay, count, state.mu_product
            )
        elif nesterov:
            mu_hat = numerics.nesterov_first_moment(mu, updates, b1, count, fused)
        else:
            mu_hat = correct(mu, b1, count)
        nu_hat = correct(nu, b2, count)
        if scheduled and convention == "paper":
            nu_hat = numerics.dozat_second_moment(nu_hat, b2)
        updates = numerics.adaptive_step(mu_hat, nu_hat, eps, eps_root)
        # The moments are computed in the promoted dtype and stored in their own dtypes.
        moments = _moments(count, mu, nu, state, mu_dtype, nu_dtype)
        return updates, ScaleByNadamState(*moments, product) if scheduled else moments

    return optax.GradientTransformation(init_fn, update_fn)


def _amsgrad_bias_corrections(
    bias_correction_mu: Any, bias_correction_nu: Any, convention: str
) -> tuple[bool, bool]:
    """AMSGrad's optax-convention switches: (mu, nu), None meaning True. The other
    conventions fix where AMSGrad bias-corrects: there both must be unset (and are unused)."""
    name = "scale_by_amsgrad"
    if convention != "optax":
        why = "it fixes where AMSGrad bias-corrects"
        validation.check_unset(name, "bias_correction_mu", bias_correction_mu, convention, why)
        validation.check_unset(name, "bias_correction_nu", bias_correction_nu, convention, why)
        return True, True
    return bias_correction_mu in (None, True), bias_correction_nu in (None, True)


@checked
def scale_by_amsgrad(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    bias_correction_mu: bool | None = None,
    bias_correction_nu: bool | None = None,
    *,
    nu_dtype: Any = None,
    convention: str = "optax",
    fused: bool = False,
) -> optax.GradientTransformation:
    r"""Rescales gradients like Adam, but divides by the running maximum of the second moment.

    .. math::
        \hat v^{max}_t = \max(\hat v^{max}_{t-1}, \hat v_t), \quad
        u_t = \hat m_t / (\sqrt{\hat v^{max}_t + \epsilon_{root}} + \epsilon)

    The per-coordinate step size never increases. The conventions differ in what the maximum
    is taken of (optax #1389):

    - "optax": of the bias-corrected :math:`\hat v_t` (state ``nu_max`` holds
      :math:`\max \hat v`); ``bias_correction_mu=False, bias_correction_nu=False`` turn the
      corrections off.
    - "pytorch": of the raw :math:`v_t`, bias-corrected after the maximum: ``nu_max`` holds
      :math:`\max v` (torch's ``max_exp_avg_sq``), the step is
      :math:`\hat m_t / (\sqrt{\max v / (1-\beta_2^t)} + \epsilon)`.
    - "paper": Reddi et al.'s Algorithm 2, no bias correction at all,
      :math:`m_t / (\sqrt{\max v} + \epsilon)` (the paper has no epsilon: eps = 0 is it).

    Args:
      b1, b2, eps, eps_root, mu_dtype, nu_dtype, fused: as in :func:`scale_by_adam` (nu_dtype
        stores v_t and its running maximum).
      bias_correction_mu: bias-correct the first moment (optax convention; None = True).
      bias_correction_nu: bias-correct the second moment before taking the maximum (optax
        convention; None = True).
      convention: "optax", "pytorch" or "paper".

    References:
      Reddi, Kale & Kumar, On the Convergence of Adam and Beyond, ICLR 2018, Algorithm 2.
    """
    bias_correction_mu, bias_correction_nu = _amsgrad_bias_corrections(
        bias_correction_mu, bias_correction_nu, convention
    )
    mu_dtype, nu_dtype = _storage_dtype(mu_dtype), _storage_dtype(nu_dtype)
    first_moment, second_moment = numerics.moments_for(convention)
    correct = functools.partial(numerics.bias_correction, convention=convention, fused=fused)

    def init_fn(params):
        moments = _init_moments(mu_dtype, nu_dtype)(params)
        return ScaleByAmsgradState(*moments, nu_max=numerics.zeros_like(params, dtype=nu_dtype))

    def update_fn(updates, state, params=None):
        del params
        mu = first_moment(updates, state.mu, b1)
        nu = second_moment(updates, state.nu, b2)
        count = numerics.safe_increment(state.count)
        if convention == "optax":
            mu_hat = correct(mu, b1, count) if bias_correction_mu else mu
            nu_hat = correct(nu, b2, count) if bias_correction_nu else nu
            nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu_hat)
            nu_max_hat = nu_max
        elif convention == "pytorch":
            mu_hat = correct(mu, b1, count)
            nu_max = numerics.raw_max_second_moment(state.nu_max, nu)
            nu_max_hat = correct(nu_max, b2, count)
        else:
            mu_hat = mu
            nu_max = numerics.raw_max_second_moment(state.nu_max, nu)
            nu_max_hat = nu_max
        updates = numerics.adaptive_step(mu_hat, nu_max_hat, eps, eps_root)
        mu = _store(mu, state.mu, mu_dtype)
        nu, nu_max = _store(nu, state.nu, nu_dtype), _store(nu_max, state.nu_max, nu_dtype)
        return updates, ScaleByAmsgradState(count=count, mu=mu, nu=nu, nu_max=nu_max)

    return optax.GradientTransformation(init_fn, update_fn)


@checked
def scale_by_radam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    threshold: float | None = None,
    *,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    nesterov: bool = False,
    convention: str = "optax",
) -> optax.GradientTransformation:
    r"""Rescales gradients by Rectified Adam: Adam once the variance of v_t is tractable.

    The length of the approximated simple moving average behind v_t is

    .. math::
        \rho_\infty = 2/(1-\beta_2) - 1, \quad
        \rho_t = \rho_\infty - 2 t \beta_2^t / (1 - \beta_2^t).

    While :math:`\rho_t` is below ``threshold`` the adaptive learning rate's variance is
    intractable and the update is plain bias-corrected momentum :math:`\hat m_t`; after that
    it is the Adam step scaled by the variance rectification term

    .. math::
        r_t = \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}}.

    Conventions (optax PR #15): "optax" rectifies when :math:`\rho_t \ge 5`; "pytorch" when
    :math:`\rho_t > 5` and adds eps to :math:`\sqrt{v_t}` before the bias correction
    (`numerics.pytorch_radam_step`); "paper" (Liu et al., Algorithm 2) when
    :math:`\rho_t > 4`, with eps where Adam has it (the paper has none).

    Args:
      b1, b2, eps, eps_root, mu_dtype, nu_dtype, nesterov: as in :func:`scale_by_adam`
        (nesterov: optax only).
      threshold: the value of rho_t from which the rectified Adam step is used; None means
        the convention's (5, 5, 4). Must be >= 4, below which r_t is not real.
      convention: "optax", "pytorch" or "paper".

    References:
      Liu et al., On the Variance of the Adaptive Learning Rate and Beyond, ICLR 2020.
    """
    validation.check_optax_only(
        "scale_by_radam", nesterov, convention, "torch.optim.RAdam and Liu et al."
    )
    if threshold is None:
        threshold = 4.0 if convention == "paper" else 5.0
    rho_inf = 2.0 / (1.0 - b2) - 1.0
    first_moment, second_moment = numerics.moments_for(convention)

    def rectification(rho):
        return jnp.sqrt(
            (rho - 4.0) * (rho - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho)
        )

    def rectified_adam_step(r, mu_hat, nu_hat):
        """r_t m_hat / (sqrt(v_hat + eps_root) + eps), in optax's order of operations."""
        return jax.tree.map(
            lambda m, v: numerics.safe_divide(
                r.astype(m.dtype) * m, jnp.sqrt(numerics.widen(v) + eps_root) + eps
            ),
            mu_hat,
            nu_hat,
        )

    def sma_length(count):
        if convention == "optax":
            b2_t = b2**count
            return rho_inf - 2 * count * b2_t / (1 - b2_t)
        return numerics.radam_sma_length(b2, count)

    def tractable(rho):
        """optax rectifies from rho_t >= threshold, PyTorch and Liu et al. from rho_t > it."""
        return rho >= threshold if convention == "optax" else rho > threshold

    mu_dtype, nu_dtype = _storage_dtype(mu_dtype), _storage_dtype(nu_dtype)
    init_fn = _init_moments(mu_dtype, nu_dtype)

    def update_fn(updates, state, params=None):
        del params
        mu = first_moment(updates, state.mu, b1)
        nu = second_moment(updates, state.nu, b2)
        count = numerics.safe_increment(state.count)
        rho = sma_length(count)
        if nesterov:
            mu_hat = numerics.nesterov_first_moment(mu, updates, b1, count)
        else:
            mu_hat = numerics.bias_correction(mu, b1, count, convention)
        if convention == "pytorch":
            adam_step = numerics.pytorch_radam_step(mu_hat, nu, b2, count, eps, eps_root)
            r = rectification(rho)
            adam_step = jax.tree.map(lambda step: r.astype(step.dtype) * step, adam_step)
        else:
            nu_hat = numerics.bias_correction(nu, b2, count, convention)
            adam_step = rectified_adam_step(rectification(rho), mu_hat, nu_hat)
        # Both branches are computed; `where` selects (the rejected one may hold NaNs from a
        # negative square root, which never reach the result).
        updates = jax.tree.map(
            lambda step, momentum: jnp.where(tractable(rho), step, momentum), adam_step, mu_hat
        )
        return updates, _moments(count, mu, nu, state, mu_dtype, nu_dtype)

    return optax.GradientTransformation(init_fn, update_fn)


@checked
def scale_by_adamax(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    convention: str = "optax",
    fused: bool = False,
) -> optax.GradientTransformation:
    r"""Rescales gradients by Adamax: Adam with the L2 norm of past gradients replaced by L-inf.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
        u_t = \max(\beta_2 u_{t-1}, |g_t| + \epsilon), \quad
        \text{update} = \hat m_t / u_t.

    The infinity norm needs no bias correction (it is not an average that starts at zero).
    "pytorch" is this rule with a float64-accurate :math:`1-\beta_1^t`; "paper" (Kingma & Ba,
    Algorithm 2) has no eps: :math:`u_t = \max(\beta_2 u_{t-1}, |g_t|)`, and we divide by
    :math:`u_t + \epsilon` (`numerics.infinity_step`). ``mu_dtype`` and ``nu_dtype`` store
    m_t and u_t (as in :func:`scale_by_adam`; optax's Adamax has neither).

    References:
      Kingma & Ba, Adam: A Method for Stochastic Optimization, ICLR 2015, Section 7.1,
      Algorithm 2.
    """
    first_moment, _ = numerics.moments_for(convention)
    mu_dtype, nu_dtype = _storage_dtype(mu_dtype), _storage_dtype(nu_dtype)
    init_fn = _init_moments(mu_dtype, nu_dtype)

    def update_fn(updates, state, params=None):
        del params
        count = numerics.safe_increment(state.count)
        mu = first_moment(updates, state.mu, b1)
        if convention == "paper":
            nu = numerics.infinity_moment_paper(updates, state.nu, b2)
        else:
            nu = numerics.infinity_moment(updates, state.nu, b2, eps)
        mu_hat = numerics.bias_correction(mu, b1, count, convention, fused)
        updates = numerics.infinity_step(mu_hat, nu, eps, eps_outside=convention == "paper")
        return updates, _moments(count, mu, nu, state, mu_dtype, nu_dtype)

    return optax.GradientTransformation(init_fn, update_fn)


def _checked_without_pytorch(optimizer: str) -> Any:
    """`checked`, refusing convention="pytorch" too: torch.optim has no `optimizer` (the
    constructors refuse it by their `alias.TABLE` entry, and call the transform unchecked)."""

    def check(owner, arguments):
        validation.check(owner, arguments)
        if arguments["convention"] == "pytorch":
            raise ValueError(
                f"{owner}: convention='pytorch' does not exist: torch.optim has no {optimizer}; "
                "use 'optax' or 'paper'"
            )

    return lambda function: checked(function, functools.partial(check, function.__name__))


@_checked_without_pytorch("AdaBelief")
def scale_by_belief(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-16,
    eps_root: float = 1e-16,
    *,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    nesterov: bool = False,
    convention: str = "optax",
    fused: bool = False,
) -> optax.GradientTransformation:
    r"""Rescales gradients by AdaBelief: Adam with the variance of the gradient around its
    prediction m_t in place of its raw second moment.

    .. math::
        s_t = \beta_2 s_{t-1} + (1-\beta_2)(g_t - m_t)^2 + \epsilon_{root}, \quad
        u_t = \hat m_t / (\sqrt{\hat s_t} + \epsilon)

    "paper" (Zhuang et al., Algorithm 2) adds the epsilon to s_t a second time before the
    bias correction, :math:`\hat s_t = (s_t + \epsilon)/(1-\beta_2^t)` (optax #440).

    Args:
      b1, b2, mu_dtype, nu_dtype, nesterov, fused: as in :func:`scale_by_adam` (nesterov:
        optax only; nu_dtype stores s_t).
      eps: added outside the square root (paper: 1e-16).
      eps_root: added to s_t at every step (the paper's epsilon inside Algorithm 2).
      convention: "optax" or "paper".

    References:
      Zhuang et al., AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed
      Gradients, NeurIPS 2020.
    """
    validation.check_optax_only("scale_by_belief", nesterov, convention, "Zhuang et al.")
    correct = functools.partial(numerics.bias_correction, convention=convention, fused=fused)
    mu_dtype, nu_dtype = _storage_dtype(mu_dtype), _storage_dtype(nu_dtype)
    init_fn = _init_moments(mu_dtype, nu_dtype)

    def update_fn(updates, state, params=None):
        del params
        mu = numerics.first_moment(updates, state.mu, b1)
        surprise = jax.tree.map(lambda g, m: g - m, updates, mu)
        nu = numerics.second_moment(surprise, state.nu, b2)
        nu = jax.tree.map(lambda s: s + eps_root, nu)
        count = numerics.safe_increment(state.count)
        if nesterov:
            mu_hat = numerics.nesterov_first_moment(mu, updates, b1, count, fused)
        else:
            mu_hat = correct(mu, b1, count)
        if convention == "paper":
            nu_hat = correct(numerics.belief_paper_correction(nu, eps_root), b2, count)
        else:
            nu_hat = correct(nu, b2, count)
        updates = numerics.adaptive_step(mu_hat, nu_hat, eps, 0.0)
        return updates, _moments(count, mu, nu, state, mu_dtype, nu_dtype)

    return optax.GradientTransformation(init_fn, update_fn)


@checked
def scale_by_lion(
    b1: float = 0.9, b2: float = 0.99, mu_dtype: Any = None
) -> optax.GradientTransformation:
    r"""Rescales gradients to Lion's direction: the sign of an interpolated momentum.

    .. math::
        c_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
        u_t = \operatorname{sign}(c_t), \quad
        m_t = \beta_2 m_{t-1} + (1-\beta_2) g_t

    Every coordinate moves by exactly the learning rate (or 0). The same rule in the optax and
    paper conventions (Chen et al., Algorithm 2).

    Args:
      b1: weight of the momentum in the interpolation that is signed, in [0, 1).
      b2: decay of the momentum m_t, in [0, 1).
      mu_dtype: dtype in which to *store* m_t (as in :func:`scale_by_adam`).

    Example:
      >>> import jax.numpy as jnp
      >>> tx = scale_by_lion()
      >>> tx.update(jnp.array([0.5, -2.0, 0.0]), tx.init(jnp.zeros(3)))[0]
      Array([ 1., -1.,  0.], dtype=float32)

    References:
      Chen et al., Symbolic Discovery of Optimization Algorithms, NeurIPS 2023, Algorithm 2.
    """
    mu_dtype = _storage_dtype(mu_dtype)

    def init_fn(params):
        return ScaleByLionState(count=_zero_count(), mu=numerics.zeros_like(params, mu_dtype))

    def update_fn(updates, state, params=None):
        del params
        direction = jax.tree.map(lambda g, m: jnp.sign((1 - b1) * g + b1 * m), updates, state.mu)
        mu = _store(numerics.first_moment(updates, state.mu, b2), state.mu, mu_dtype)
        return direction, ScaleByLionState(count=numerics.safe_increment(state.count), mu=mu)

    return optax.GradientTransformation(init_fn, update_fn)


def _trust_ratio_leaf(u: jax.Array, p: jax.Array) -> jax.Array:
    """u * ||p|| / ||u|| for one layer (leaf); ratio 1 where either norm is 0 (optax's rule)."""
    # Whole-tensor norms with a finite derivative at 0 (optax's, min_norm 0).
    param_norm, update_norm = optax.safe_norm(p, 0.0), optax.safe_norm(u, 0.0)
    ratio = 1.0 * param_norm / (update_norm + 0.0)  # optax's trust_coefficient 1, eps 0
    zero_norm = jnp.logical_or(param_norm == 0.0, update_norm == 0.0)
    return u * jnp.where(zero_norm, jnp.array(1.0, dtype=p.dtype), ratio)


@checked
def scale_by_trust_ratio() -> optax.GradientTransformation:
    r"""Rescales each layer's update to the norm of its weights: LAMB's trust ratio.

    .. math::
        u^{(i)} \leftarrow \frac{\phi(\|x^{(i)}\|)}{\|u^{(i)}\|}\, u^{(i)}, \quad \phi(z) = z

    per leaf :math:`i` (a layer), with whole-tensor Euclidean norms; 1 where either norm is 0,
    as in optax (the paper leaves it undefined). ``update`` needs the params.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = scale_by_trust_ratio()
      >>> tx.update(jnp.array([3.0, 4.0]), tx.init(None), jnp.array([0.0, 2.0]))[0]
      Array([1.2, 1.6], dtype=float32)

    References:
      You et al., Large Batch Optimization for Deep Learning: Training BERT in 76 minutes,
      ICLR 2020, Algorithm 2.
    """

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("scale_by_trust_ratio needs the params: call update(g, state, params)")
        return jax.tree.map(_trust_ratio_leaf, updates, params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


MUON_NS_COEFFS = (3.4445, -4.7750, 2.0315)  # Jordan et al. 2024's quintic


def _is_dims(x: Any) -> bool:
    return isinstance(x, MuonDimensionNumbers)


def muon_dimension_numbers(spec: Any, params: Tree) -> Tree:
    """Per leaf of `params`: its `MuonDimensionNumbers` if Muon orthogonalises it, else None.

    `spec` None: every 2-D leaf is a (fan_in, fan_out) matrix, everything else is not (optax's
    default; a conv kernel then goes to AdamW). Otherwise a prefix tree of dimension numbers
    (None: not Muon's) or a callable returning one from the params, as optax takes it.
    """
    if spec is None:
        return jax.tree.map(lambda p: MuonDimensionNumbers() if p.ndim == 2 else None, params)
    dims = spec(params) if callable(spec) else spec
    return jax.tree.map(
        lambda d, subtree: jax.tree.map(lambda _: d, subtree),
        dims,
        params,
        is_leaf=lambda x: x is None or _is_dims(x),
    )


def conv_dimension_numbers(params: Tree) -> Tree:
    """Muon's matrices for a CNN: 2-D leaves as (fan_in, fan_out), HWIO conv kernels as the
    (H*W*I) x O matrix (reduction axes 0, 1, 2; output axis 3), the rest AdamW's.

    Pass it as ``muon_weight_dimension_numbers``. It is Jordan's ``g.view(len(g), -1)`` of a
    PyTorch OIHW kernel, transposed: the same singular values, the same orthogonal factor.
    """
    conv = MuonDimensionNumbers(reduction_axis=(0, 1, 2), output_axis=3)
    by_rank = {2: MuonDimensionNumbers(), 4: conv}
    return jax.tree.map(lambda p: by_rank.get(p.ndim), params)


def _axes(x: jax.Array, dims: MuonDimensionNumbers) -> tuple[tuple[int, ...], ...]:
    """(batch, reduction, output) axes of `x`: reduction and output as non-negative tuples."""
    reduction, output = (
        tuple(a % x.ndim for a in ((axes,) if isinstance(axes, int) else axes))
        for axes in (dims.reduction_axis, dims.output_axis)
    )
    batch = tuple(sorted(set(range(x.ndim)) - set(reduction) - set(output)))
    return batch, reduction, output


def _orthogonalise_matrix(x: jax.Array, coeffs: jax.Array, ns_steps: int, eps: Any) -> jax.Array:
    """`ns_steps` quintic Newton-Schulz steps on X / (||X||_F + eps), wide side last."""
    transposed = x.shape[0] > x.shape[1]  # f(X^T) = f(X)^T: iterate on the smaller X X^T
    if transposed:
        x = x.T
    x /= jnp.linalg.norm(x, ord="fro") + eps
    coeffs = coeffs.astype(x.dtype)

    def newton_schulz_step(i, x):
        del i
        a = x @ x.T.conj()
        b = coeffs[1] * a + coeffs[2] * a @ a
        return coeffs[0] * x + b @ x

    x = jax.lax.fori_loop(0, ns_steps, newton_schulz_step, x, unroll=True)
    return x.T if transposed else x


def _orthogonalise(x: jax.Array, coeffs: jax.Array, ns_steps: int, eps: Any, dims: Any):
    """Newton-Schulz on each (reduction, output) matrix of `x`, vmapped over its batch axes."""
    batch, reduction, output = _axes(x, dims)
    order = batch + reduction + output
    shapes = [tuple(x.shape[a] for a in axes) for axes in (batch, reduction, output)]
    matrices = x.transpose(order).reshape([math.prod(s) for s in shapes])
    orthogonal = jax.vmap(lambda m: _orthogonalise_matrix(m, coeffs, ns_steps, eps))(matrices)
    inverse = tuple(sorted(range(x.ndim), key=lambda i: order[i]))
    return orthogonal.reshape(shapes[0] + shapes[1] + shapes[2]).transpose(inverse)


def _width_scale(u: jax.Array, dims: MuonDimensionNumbers, consistent_rms: Any) -> jax.Array:
    """sqrt(max(1, fan_out / fan_in)) (Jordan), or sqrt(max(fan_in, fan_out)) * consistent_rms
    (Liu et al. 2025: an update RMS like AdamW's)."""
    _, reduction, output = _axes(u, dims)
    fan_in, fan_out = (math.prod(u.shape[a] for a in axes) for axes in (reduction, output))
    if consistent_rms is not None:
        return jnp.sqrt(jnp.maximum(fan_in, fan_out)) * consistent_rms * u
    return jnp.sqrt(jnp.maximum(1, fan_out / fan_in)) * u


@checked
def scale_by_muon(
    ns_coeffs: tuple[float, float, float] = MUON_NS_COEFFS,
    ns_steps: int = 5,
    beta: float = 0.95,
    eps: float = 1e-8,
    mu_dtype: Any = None,
    *,
    nesterov: bool = True,
    weight_dimension_numbers: Any = None,
    consistent_rms: float | None = None,
    convention: str = "optax",
) -> optax.GradientTransformation:
    r"""Rescales each matrix's gradient to its orthogonalised momentum: Muon's direction.

    .. math::
        m_t = \beta m_{t-1} + (1-\beta) G_t, \quad
        \hat M_t = \tfrac{\beta m_t}{1-\beta^{t+1}} + \tfrac{(1-\beta) G_t}{1-\beta^t}
        \ \text{(Nesterov; else } m_t/(1-\beta^t)) \\
        X_0 = \hat M_t / (\|\hat M_t\|_F + \epsilon), \quad
        X_{k+1} = a X_k + b (X_k X_k^\top) X_k + c (X_k X_k^\top)^2 X_k, \\
        u_t = \sqrt{\max(1, \text{fan\_out}/\text{fan\_in})}\; X_{N}

    with :math:`(a, b, c) = (3.4445, -4.7750, 2.0315)` and :math:`N = 5`: the quintic maps
    every singular value of :math:`X_0` into a band around 1, :math:`X_N \approx U S' V^\top`
    for :math:`\hat M_t = U S V^\top`. "optax" bias-corrects the momentum as above
    (``optax.contrib.muon``); "paper" is Jordan's reference, which does not:
    :math:`\hat M_t = \beta m_t + (1-\beta) G_t` (Nesterov) or :math:`m_t`.

    Args:
      ns_coeffs: (a, b, c) of the quintic Newton-Schulz step.
      ns_steps: number of Newton-Schulz steps, a positive int (the paper's 5).
      beta: decay of the momentum, in [0, 1).
      eps: added to the Frobenius norm before the division, >= 0.
      mu_dtype: dtype in which to *store* the momentum (as in :func:`scale_by_adam`).
      nesterov: orthogonalise the look-ahead momentum (Jordan's default).
      weight_dimension_numbers: a tree of optax's ``MuonDimensionNumbers`` (reduction axes
        become the rows, output axes the columns, the others a batch), or a callable of the
        updates returning one; None: all leaves are 2-D (:func:`conv_dimension_numbers` for
        HWIO kernels).
      consistent_rms: None for Jordan's width scale; a float r for
        :math:`\sqrt{\max(\text{fan\_in}, \text{fan\_out})}\, r` (Liu et al. 2025).
      convention: "optax" or "paper" (Jordan's reference: no bias correction).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> tx = scale_by_muon()
      >>> g = jax.random.normal(jax.random.key(0), (8, 4))
      >>> u, _ = tx.update(g, tx.init(g))
      >>> bool(jnp.all(jnp.abs(jnp.linalg.svd(u, compute_uv=False) - 1) < 0.35))
      True

    References:
      Jordan et al., Muon: An optimizer for hidden layers in neural networks, 2024,
      https://kellerjordan.github.io/posts/muon/.
    """
    mu_dtype = _storage_dtype(mu_dtype)

    def init_fn(params):
        mu = numerics.zeros_like(params, mu_dtype)
        return ScaleByMuonState(count=_zero_count(), mu=mu, ns_coeffs=jnp.asarray(ns_coeffs))

    def update_fn(updates, state, params=None):
        del params
        spec = weight_dimension_numbers
        dims = spec(updates) if callable(spec) else muon_dimension_numbers(spec, updates)
        mu = numerics.first_moment(updates, state.mu, beta)
        count = numerics.safe_increment(state.count)
        if convention == "paper":  # Jordan: no bias correction; look-ahead g.lerp_(m, beta)
            mu_hat = numerics.first_moment(updates, mu, beta) if nesterov else mu
        elif nesterov:
            mu_hat = numerics.nesterov_first_moment(mu, updates, beta, count)
        else:
            mu_hat = numerics.bias_correction(mu, beta, count)
        orthogonal = jax.tree.map(
            lambda m, d: _orthogonalise(m, state.ns_coeffs, ns_steps, eps, d),
            mu_hat, dims, is_leaf=_is_dims,
        )  # fmt: skip
        scale = functools.partial(_width_scale, consistent_rms=consistent_rms)
        updates = jax.tree.map(scale, orthogonal, dims, is_leaf=_is_dims)
        mu = _store(mu, state.mu, mu_dtype)
        return updates, ScaleByMuonState(count=count, mu=mu, ns_coeffs=state.ns_coeffs)

    return optax.GradientTransformation(init_fn, update_fn)


@_checked_without_pytorch("ADOPT")
def scale_by_adopt(
    b1: float = 0.9,
    b2: float = 0.9999,
    eps: float = 1e-6,
    mu_dtype: Any = None,
    *,
    nu_dtype: Any = None,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Any = None,
    convention: str = "optax",
) -> optax.GradientTransformation:
    r"""Rescales gradients by ADOPT: the momentum of gradients normalised by the *previous*
    second moment, clipped.

    .. math::
        v_0 = g_0^2, \quad m_0 = 0 \\
        m_t = \beta_1 m_{t-1} + (1-\beta_1)\,\mathrm{clip}\!\left(
            \frac{g_t}{\max(\sqrt{v_{t-1}}, \epsilon)}, c_t\right), \quad
        u_t = m_t, \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2

    with :math:`c_t = t^{1/4}` (``clip_value_fn``) and ``clip(x, c)`` the clamp to [-c, c]:
    the optimal rate for any :math:`\beta_2` (Taniguchi et al., Theorem 4.1). The first call
    (count 0) only initialises :math:`v_0 = g_0^2` and returns a zero update, as optax does.
    ``nesterov=True`` (optax only) returns :math:`\beta_1 m_t + (1-\beta_1)\,\mathrm{clip}
    (\cdot)`. "optax" selects the first step by setting the decays to 0 and 1 as float32
    arrays, "paper" selects the moments (`numerics.adopt_second_moment`).

    Args:
      b1: decay of the momentum, in [0, 1).
      b2: decay of the second moment, in [0, 1).
      eps: floor of :math:`\sqrt{v_{t-1}}` in the normalisation, >= 0.
      mu_dtype, nu_dtype: as in :func:`scale_by_adam`.
      nesterov: Nesterov momentum (optax's; the paper has none).
      use_clipping: clip the normalised gradient to :math:`[-c_t, c_t]` (the paper's
        Section 5 and optax's default); False is the paper's unclipped Algorithm 1.
      clip_value_fn: :math:`c_t` as a function of the count t; None is optax's default,
        :math:`t^{1/4}` (a None default keeps `optax.inject_hyperparams` from taking the
        function for a schedule: pass one in its ``static_args``).
      convention: "optax" or "paper".

    Example:
      >>> import jax.numpy as jnp
      >>> tx = scale_by_adopt(b1=0.5)
      >>> g = jnp.array([0.5, -2.0])
      >>> u, state = tx.update(g, tx.init(g))  # count 0: v_0 = g_0^2, no step
      >>> u
      Array([0., 0.], dtype=float32)
      >>> tx.update(g, state)[0]  # (1 - b1) clip(g / |g|, 1)
      Array([ 0.5, -0.5], dtype=float32)

    References:
      Taniguchi et al., ADOPT: Modified Adam Can Converge with Any beta2 with the Optimal
      Rate, NeurIPS 2024, Algorithm 1 (and Section 5 for the clipping).
    """
    validation.check_optax_only("scale_by_adopt", nesterov, convention, "Taniguchi et al.")
    mu_dtype, nu_dtype = _storage_dtype(mu_dtype), _storage_dtype(nu_dtype)
    clip_value = clip_value_fn or (lambda count: count**0.25)  # optax's default
    init_fn = _init_moments(mu_dtype, nu_dtype)

    def update_fn(updates, state, params=None):
        del params
        if convention == "optax":
            # count 0 only initialises v_0 = g_0^2 (b2 -> 0) and keeps m_0 = 0 (b1 -> 1).
            b2_ = jnp.where(state.count > 0, b2, 0)
            b1_ = jnp.where(state.count > 0, b1, 1)  # compared again: optax's program
            nu = numerics.second_moment(updates, state.nu, b2_)
        else:
            nu = numerics.adopt_second_moment(updates, state.nu, b2, state.count)
        clip = clip_value(state.count) if use_clipping else None
        normalised = numerics.adopt_normalised(updates, state.nu, eps, clip)
        if convention == "optax":
            mu = numerics.first_moment(normalised, state.mu, b1_)
        else:
            mu = numerics.adopt_first_moment(normalised, state.mu, b1, state.count)
        count = numerics.safe_increment(state.count)
        step = numerics.first_moment(normalised, mu, b1_) if nesterov else mu
        return step, _moments(count, mu, nu, state, mu_dtype, nu_dtype)

    return optax.GradientTransformation(init_fn, update_fn)


@checked
def scale_by_cautious(
    inner: optax.GradientTransformation, caution_eps: float = 1e-8
) -> optax.GradientTransformation:
    r"""Masks `inner`'s direction where it disagrees in sign with the gradient (Cautious).

    .. math::
        u_t = \text{inner}(g_t), \quad \phi_t = \mathbb{1}[u_t \odot g_t > 0], \quad
        \tilde u_t = u_t \odot \phi_t / (\operatorname{mean}(\phi_t) + \epsilon_c)

    with the mean over each tensor (`numerics.caution`): a coordinate moves only where the
    step descends for the current gradient, the survivors scaled up to keep the average
    step. The mask acts before the learning rate and outside the decoupled weight decay, as
    in the authors' C-AdamW and C-Lion; the state is `inner`'s.

    Args:
      inner: the transform whose direction is masked (e.g. :func:`scale_by_adam`,
        :func:`scale_by_lion`); it is given the gradients and params as they come.
      caution_eps: :math:`\epsilon_c` > 0, keeps the rescaling finite when no sign agrees.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = scale_by_cautious(scale_by_lion())
      >>> state = tx.init(jnp.zeros(4))
      >>> tx.update(jnp.array([0.5, -2.0, 1.0, -1.0]), state)[0]  # signs agree: 1/(1+eps)
      Array([ 1., -1.,  1., -1.], dtype=float32)

    References:
      Liang, Chen, Liu & Liu, Cautious Optimizers: Improving Training with One Line of Code,
      arXiv:2411.16085, 2024, Algorithm 1.
    """

    def update_fn(updates, state, params=None):
        directions, state = inner.update(updates, state, params)
        return numerics.caution(directions, updates, caution_eps), state

    return optax.GradientTransformation(inner.init, update_fn)


class ScaleBySoapState(NamedTuple):
    """SOAP's state: Adam's moments (m_t in the params' basis, v_t in the eigenbasis) and, per
    leaf, one Shampoo statistic and its eigenbasis per axis (L, R and Q_L, Q_R of a matrix),
    each a tuple over the leaf's axes with None for an axis left in its own basis."""

    count: jax.Array  # calls so far: the first only initialises the preconditioner
    mu: Tree
    nu: Tree
    preconditioners: Tree  # tuple per leaf: (d, d) float32 statistic per rotated axis
    bases: Tree  # tuple per leaf: (d, d) float32 orthogonal Q per rotated axis


def _zero_statistics(x: jax.Array, max_precond_dim: int) -> tuple:
    """A zero (n, n) float32 statistic per axis SOAP rotates, None per other axis: it rotates
    every axis of a tensor of two or more of size at most `max_precond_dim` (the authors'
    default; no `merge_dims`, no `precondition_1d`); a 1-D or 0-D leaf, and a longer axis,
    keep their basis and take Adam."""
    rotated = x.ndim >= 2
    return tuple(
        jnp.zeros((n, n), jnp.float32) if rotated and n <= max_precond_dim else None
        for n in x.shape
    )


def _leafwise(fn: Any, treedef: Any, *trees: Tree) -> list:
    """fn of each leaf of trees of structure `treedef` (a state's tuple per leaf passed
    whole), in leaf order."""
    return [fn(*args) for args in zip(*map(treedef.flatten_up_to, trees), strict=True)]


_HIGHEST = jax.lax.Precision.HIGHEST  # float32 products (not TF32/bf16 passes on GPUs)


def _rotate(x: jax.Array, bases: tuple, back: bool = False) -> jax.Array:
    """x with each rotated axis i contracted with Q_i: into the eigenbasis (Q_L^T X Q_R for a
    matrix) or, with `back`, out of it (Q_L X Q_R^T)."""
    for axis, q in enumerate(bases):
        if q is not None:
            turned = jnp.tensordot(x, q, axes=([axis], [1 if back else 0]), precision=_HIGHEST)
            x = jnp.moveaxis(turned, -1, axis)
    return x


def _axis_covariance(g: jax.Array, axis: int) -> jax.Array:
    """G_(i) G_(i)^T, the gradient contracted with itself over every axis but `axis`: G G^T
    (L's term) for axis 0 of a matrix, G^T G (R's) for axis 1."""
    others = [a for a in range(g.ndim) if a != axis]
    g = g.astype(jnp.float32)
    return jnp.tensordot(g, g, axes=(others, others), precision=_HIGHEST)


def _covariances(g: jax.Array, statistics: tuple) -> tuple:
    """`_axis_covariance` of each axis that has a statistic (None for the others)."""
    return tuple(None if s is None else _axis_covariance(g, i) for i, s in enumerate(statistics))


def _power_iteration(statistic: jax.Array, q: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(QR(P Q) with Q's columns ordered by decreasing estimated eigenvalue, that order):
    Vyas et al.'s Algorithm 4 (one power-iteration step and a QR decomposition, S = PQ,
    Q = QR(S)), the estimates diag(Q^T P Q) sorted as in the authors' code."""
    product = jnp.matmul(statistic, q, precision=_HIGHEST)
    order = jnp.argsort(-jnp.sum(q * product, axis=0))
    return jnp.linalg.qr(product[:, order])[0], order


@jax.custom_batching.sequential_vmap
def _new_basis(branch: jax.Array, statistic: jax.Array, q: jax.Array) -> tuple:
    """(basis, column order) of one axis: at branch 0 (the first call) the eigenvectors of the
    statistic by decreasing eigenvalue, the authors' ``torch.flip(torch.linalg.eigh(m)[1],
    [1])``; at 1 (every f-th step) `_power_iteration`; at 2 q, kept.

    Under vmap (a sweep's members) this loops over the members (`sequential_vmap`), so that
    each takes its own branch: a batched switch would compute every branch at every step. And
    each eigh and QR then gets one matrix: jaxlib splits a batched LAPACK call over the CPU
    thread pool and blocks a pool thread until the parts are done, so two such calls at once on
    a 2-thread pool waited for each other forever (a 16-member digits sweep hung so)."""
    kept = jnp.arange(q.shape[1])
    eigenbasis = lambda: (jnp.flip(jnp.linalg.eigh(statistic)[1], axis=1), kept)
    refreshed = lambda: _power_iteration(statistic, q)
    return jax.lax.switch(branch, [eigenbasis, refreshed, lambda: (q, kept)])


def _refresh_leaf(
    branch: jax.Array, statistics: tuple, bases: tuple, nu: jax.Array
) -> tuple[tuple, jax.Array]:
    """Every rotated axis's basis by `_new_basis`, and v_t's coordinates along that axis
    permuted to follow its columns (the authors' ``exp_avg_sq.index_select``)."""
    refreshed = []
    for axis, (statistic, q) in enumerate(zip(statistics, bases, strict=True)):
        if statistic is not None:
            q, order = _new_basis(branch, statistic, q)
            nu = jnp.take(nu, order, axis=axis)
        refreshed.append(q)
    return tuple(refreshed), nu


@_checked_without_pytorch("SOAP")
def scale_by_soap(
    b1: float = 0.95,
    b2: float = 0.95,
    eps: float = 1e-8,
    shampoo_beta: float | None = None,
    precondition_frequency: int = 10,
    max_precond_dim: int = 10000,
    mu_dtype: Any = None,
    *,
    nu_dtype: Any = None,
    convention: str = "optax",
) -> optax.GradientTransformation:
    r"""Rescales gradients by SOAP: Adam in the eigenbasis of Shampoo's preconditioner.

    For a matrix leaf (Vyas et al., Algorithm 3; :math:`f` = ``precondition_frequency``):

    .. math::
        G'_t = Q_L^\top G_t Q_R, \quad
        M_t = \beta_1 M_{t-1} + (1-\beta_1) G_t, \quad M'_t = Q_L^\top M_t Q_R \\
        V_t = \beta_2 V_{t-1} + (1-\beta_2)\, G'_t \odot G'_t, \quad
        N'_t = \hat M'_t / (\sqrt{\hat V_t} + \epsilon), \quad
        u_t = Q_L N'_t Q_R^\top \\
        L_t = \beta_s L_{t-1} + (1-\beta_s) G_t G_t^\top, \quad
        R_t = \beta_s R_{t-1} + (1-\beta_s) G_t^\top G_t \\
        \text{if } t \bmod f = 0: \quad Q_L \leftarrow \mathrm{QR}(L_t Q_L), \quad
        Q_R \leftarrow \mathrm{QR}(R_t Q_R)

    (Algorithm 4: one power-iteration step, the columns first ordered by decreasing
    :math:`\operatorname{diag}(Q^\top L Q)` and :math:`V`'s coordinates permuted with them,
    as in the authors' code). A tensor of more axes has one statistic and one basis per axis
    (:math:`G_{(i)} G_{(i)}^\top`, all other axes contracted: ``merge_dims=False``). 1-D and
    0-D leaves, and axes longer than ``max_precond_dim``, keep their basis: there SOAP is Adam.

    The first call reads :math:`G_0` only: :math:`L_0 = (1-\beta_s) G_0 G_0^\top` (R alike),
    :math:`Q` its eigenvectors by ``eigh`` (by decreasing eigenvalue), a zero update and
    :math:`M, V` untouched, as the authors' soap.py; Adam's step :math:`t` is the call with
    ``count`` t. The basis is refreshed after the step, with :math:`L_t` holding :math:`G_t`.

    Conventions: "optax" bias-corrects as optax's Adam, :math:`\hat M'_t / (\sqrt{\hat V_t} +
    \epsilon)`; "paper" as the authors' code: the step :math:`\sqrt{1-\beta_2^t}/(1-\beta_1^t)
    \, M'_t / (\sqrt{V_t}+\epsilon)` (`numerics.pytorch_radam_step`).

    Args:
      b1: decay of Adam's first moment, in [0, 1) (the authors' 0.95).
      b2: decay of Adam's second moment, in [0, 1) (the authors' 0.95).
      eps: added to the denominator outside the square root, >= 0.
      shampoo_beta: :math:`\beta_s`, the decay of L and R, in [0, 1); None: ``b2``.
      precondition_frequency: f, the steps between two refreshes of the bases, an int >= 1
        (the paper's 10).
      max_precond_dim: the longest axis rotated, an int >= 1 (the paper's 10000).
      mu_dtype, nu_dtype: dtypes in which to *store* m_t and v_t (as in
        :func:`scale_by_adam`); L, R and the bases are float32 (``eigh`` and ``qr`` need it).
      convention: "optax" or "paper".

    Example:
      >>> import jax.numpy as jnp
      >>> tx = scale_by_soap()
      >>> g = jnp.array([[1.0, 0.0], [0.0, 2.0]])
      >>> u, state = tx.update(g, tx.init(g))  # count 0: L, R and their bases, no step
      >>> u
      Array([[0., 0.],
             [0., 0.]], dtype=float32)
      >>> jnp.round(tx.update(g, state)[0], 4)  # diagonal L, R: Adam's first step, sign(g)
      Array([[1., 0.],
             [0., 1.]], dtype=float32)

    References:
      Vyas, Morwani, Zhao, Shapira, Brandfonbrener, Janson & Kakade, SOAP: Improving and
      Stabilizing Shampoo using Adam, ICLR 2025 (arXiv:2409.11321), Algorithms 3 and 4;
      the authors' code, github.com/nikhilvyas/SOAP (soap.py).
    """
    mu_dtype, nu_dtype = _storage_dtype(mu_dtype), _storage_dtype(nu_dtype)
    shampoo_beta = b2 if shampoo_beta is None else shampoo_beta

    def init_fn(params):
        treedef = jax.tree.structure(params)
        stats = [_zero_statistics(x, max_precond_dim) for x in jax.tree.leaves(params)]
        bases = [tuple(s if s is None else jnp.eye(len(s)) for s in ss) for ss in stats]
        moments = _init_moments(mu_dtype, nu_dtype)(params)
        stats, bases = treedef.unflatten(stats), treedef.unflatten(bases)
        return ScaleBySoapState(moments.count, moments.mu, moments.nu, stats, bases)

    def adam_in_eigenbasis(updates, state, t, treedef):
        """Adam's moments (m unrotated, v rotated) and its direction, rotated back."""
        rotated = treedef.unflatten(_leafwise(_rotate, treedef, updates, state.bases))
        mu = numerics.first_moment(updates, state.mu, b1)
        nu = numerics.second_moment(rotated, state.nu, b2)
        mu_rotated = treedef.unflatten(_leafwise(_rotate, treedef, mu, state.bases))
        if convention == "optax":
            nu_hat = numerics.bias_correction(nu, b2, t)
            steps = numerics.adaptive_step(
                numerics.bias_correction(mu_rotated, b1, t), nu_hat, eps, 0.0
            )
        else:
            mu_hat = numerics.bias_correction(mu_rotated, b1, t, convention)
            steps = numerics.pytorch_radam_step(mu_hat, nu, b2, t, eps, 0.0)
        back = functools.partial(_rotate, back=True)
        directions = treedef.unflatten(_leafwise(back, treedef, steps, state.bases))
        directions = numerics.cast_like(directions, updates)  # the bases are float32
        return directions, _store(mu, state.mu, mu_dtype), _store(nu, state.nu, nu_dtype)

    def preconditioner(updates, state, nu, first, t, treedef):
        """L, R with G_t; their bases by eigh at the first call, refreshed every f-th step
        (v permuted with them), else kept: (statistics, bases, nu)."""
        covariances = treedef.unflatten(
            _leafwise(_covariances, treedef, updates, state.preconditioners)
        )
        stats = numerics.first_moment(covariances, state.preconditioners, shampoo_beta)
        branch = jnp.where(first, 0, jnp.where(t % precondition_frequency == 0, 1, 2))
        refresh = functools.partial(_refresh_leaf, branch)
        pairs = _leafwise(refresh, treedef, stats, state.bases, nu)
        bases, nu_leaves = [q for q, _ in pairs], [v for _, v in pairs]
        return stats, treedef.unflatten(bases), treedef.unflatten(nu_leaves)

    def update_fn(updates, state, params=None):
        del params
        treedef = jax.tree.structure(updates)
        first = state.count == 0  # only initialises the bases: no step, m and v untouched
        t = jnp.maximum(state.count, 1)  # Adam's step: the call's count
        directions, mu, nu = adam_in_eigenbasis(updates, state, t, treedef)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(first, o, n), new, old)
        directions = keep(directions, numerics.zeros_like(updates))
        mu, nu = keep(mu, state.mu), keep(nu, state.nu)
        stats, bases, nu = preconditioner(updates, state, nu, first, t, treedef)
        count = numerics.safe_increment(state.count)
        return directions, ScaleBySoapState(count, mu, nu, stats, bases)

    return optax.GradientTransformation(init_fn, update_fn)


class ScaleByAdemamixState(NamedTuple):
    """AdEMAMix's state, laid out as optax's: the counts of the moments and of the slow EMA's
    schedules (equal; optax keeps both), the fast EMA m1, the slow EMA m2, the second moment."""

    count: jax.Array
    count_m2: jax.Array
    m1: Tree
    m2: Tree
    nu: Tree


@_checked_without_pytorch("AdEMAMix")
def scale_by_ademamix(
    b1: float = 0.9,
    b2: float = 0.999,
    b3: Any = 0.9999,
    alpha: Any = 5.0,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    nu_dtype: Any = None,
    alpha_warmup: int | None = None,
    b3_warmup: int | None = None,
    convention: str = "optax",
) -> optax.GradientTransformation:
    r"""Rescales gradients by AdEMAMix: Adam's step plus a slow EMA of the gradients.

    .. math::
        m^{(1)}_t = \beta_1 m^{(1)}_{t-1} + (1-\beta_1) g_t, \quad
        m^{(2)}_t = \beta_3(t) m^{(2)}_{t-1} + (1-\beta_3(t)) g_t, \quad
        \nu_t = \beta_2 \nu_{t-1} + (1-\beta_2) g_t^2 \\
        \hat m^{(1)}_t = m^{(1)}_t / (1-\beta_1^t), \quad
        \hat\nu_t = \nu_t / (1-\beta_2^t), \quad
        u_t = (\hat m^{(1)}_t + \alpha(t) m^{(2)}_t) / (\sqrt{\hat\nu_t + \epsilon_{root}}
        + \epsilon)

    The slow EMA is not bias-corrected: it fills over :math:`1/(1-\beta_3)` steps. With
    ``alpha_warmup`` and ``b3_warmup`` (the paper's :math:`T_\alpha, T_{\beta_3}`, typically
    the run's length) both are warmed up by the paper's schedulers (Section 3):

    .. math::
        \alpha(t) = \min(t\alpha/T_\alpha, \alpha), \quad
        \beta_3(t) = \min\left(\exp\left(\frac{\ln\beta_1 \ln\beta_3}{(1-t/T_{\beta_3})
        \ln\beta_3 + (t/T_{\beta_3})\ln\beta_1}\right), \beta_3\right)

    ``b3`` and ``alpha`` may also be optax schedules of the count. "optax" evaluates the
    schedules at t - 1 (as optax evaluates every schedule), "paper" at t, with
    :math:`1-\beta^t` and :math:`1-\beta_3(t)` to float32's relative precision.

    Args:
      b1: decay of the fast EMA, in [0, 1).
      b2: decay of the second moment, in [0, 1).
      b3: decay of the slow EMA, in [b1, 1), or a schedule.
      alpha: weight of the slow EMA, >= 0, or a schedule.
      eps, eps_root: as in :func:`scale_by_adam`.
      mu_dtype: dtype in which to *store* m1 and m2 (optax's); None keeps the params'.
      nu_dtype: dtype in which to *store* nu; None: ``mu_dtype``, where optax's init puts it.
      alpha_warmup: :math:`T_\alpha`, steps of alpha's linear warmup from 0; None: none.
      b3_warmup: :math:`T_{\beta_3}`, steps of b3's half-life warmup from b1; None: none.
      convention: "optax" or "paper".

    Example:
      >>> import jax.numpy as jnp
      >>> tx = scale_by_ademamix(b1=0.5, b2=0.5, b3=0.75, alpha=2.0, eps=0.0)
      >>> g = jnp.array([0.5, -2.0])
      >>> tx.update(g, tx.init(g))[0]  # sign(g) (1 + alpha (1 - b3))
      Array([ 1.5, -1.5], dtype=float32)

    References:
      Pagliardini, Ablin & Grangier, The AdEMAMix Optimizer: Better, Faster, Older, ICLR
      2025, Algorithm 1.
    """
    mu_dtype = _storage_dtype(mu_dtype)
    nu_dtype = mu_dtype if nu_dtype is None else _storage_dtype(nu_dtype)
    b3_t = numerics.ademamix_b3(b3, b1, b3_warmup)
    one_minus_b3_t = numerics.ademamix_b3(b3, b1, b3_warmup, complement=True)
    alpha_t = numerics.ademamix_alpha(alpha, alpha_warmup)
    first_moment, second_moment = numerics.moments_for(convention)

    def init_fn(params):
        return ScaleByAdemamixState(
            count=_zero_count(),
            count_m2=_zero_count(),
            m1=numerics.zeros_like(params, dtype=mu_dtype),
            m2=numerics.zeros_like(params, dtype=mu_dtype),
            nu=numerics.zeros_like(params, dtype=nu_dtype),
        )

    def update_fn(updates, state, params=None):
        del params
        # optax evaluates a schedule at the count before the step, the paper at t.
        at = state.count_m2 if convention == "optax" else numerics.safe_increment(state.count_m2)
        c_b3, c_alpha = numerics.value_at(b3_t, at), numerics.value_at(alpha_t, at)
        m1 = first_moment(updates, state.m1, b1)
        if convention == "optax":
            m2 = first_moment(updates, state.m2, c_b3)
        else:  # 1 - b3(t) to float32 precision, not 1 - fl32(b3(t))
            one_minus_b3 = numerics.value_at(one_minus_b3_t, at)
            m2 = numerics.slow_moment(updates, state.m2, c_b3, one_minus_b3)
        nu = second_moment(updates, state.nu, b2)
        count = numerics.safe_increment(state.count)
        count_m2 = numerics.safe_increment(state.count_m2)
        m1_hat = numerics.bias_correction(m1, b1, count, convention)
        nu_hat = numerics.bias_correction(nu, b2, count, convention)
        updates = jax.tree.map(  # a float16 denominator in float32 (`numerics.widen`)
            lambda m1_, m2_, v_: numerics.safe_divide(
                m1_ + c_alpha * m2_, jnp.sqrt(numerics.widen(v_) + eps_root) + eps
            ),
            m1_hat,
            m2,
            nu_hat,
        )
        m1, m2 = _store(m1, state.m1, mu_dtype), _store(m2, state.m2, mu_dtype)
        nu = _store(nu, state.nu, nu_dtype)
        return updates, ScaleByAdemamixState(count, count_m2, m1, m2, nu)

    return optax.GradientTransformation(init_fn, update_fn)


class ScaleByRmsState(NamedTuple):
    """Adam without momentum keeps the count and the second moment (optax's
    `ScaleByRmsWithCountState`)."""

    count: jax.Array
    nu: Tree


@checked
def scale_by_second_moment(
    b2: float = 0.999, eps: float = 1e-8, nu_dtype: Any = None, *, convention: str = "optax"
) -> optax.GradientTransformation:
    r"""Adam with :math:`\beta_1 = 0` without its zero first moment: the base step of
    Schedule-Free AdamW (whose momentum is the interpolation, :func:`schedule_free`).

    .. math::
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \quad
        u_t = g_t / (\sqrt{v_t / (1-\beta_2^t)} + \epsilon)

    optax multiplies g by the reciprocal of the denominator, PyTorch divides; the paper's
    Algorithm 1 moves the bias correction into :math:`\gamma_t`
    (`numerics.schedule_free_denominator`).

    Args:
      b2: decay of the second moment, in [0, 1).
      eps: added to the denominator outside the square root, >= 0.
      nu_dtype: dtype in which to *store* v_t (None: the params').
      convention: "optax", "pytorch" or "paper".

    Example:
      >>> import jax.numpy as jnp
      >>> tx = scale_by_second_moment(b2=0.5, eps=0.0)
      >>> g = jnp.array([0.5, -2.0])
      >>> tx.update(g, tx.init(g))[0]  # v_hat = g^2 at t = 1: sign(g)
      Array([ 1., -1.], dtype=float32)

    References:
      Defazio et al., The Road Less Scheduled, NeurIPS 2024, Algorithm 1 (its v_t, without
      momentum); Kingma & Ba, Adam, ICLR 2015, Algorithm 1 with beta_1 = 0.
    """
    nu_dtype = _storage_dtype(nu_dtype)
    _, second_moment = numerics.moments_for(convention)

    def init_fn(params):
        return ScaleByRmsState(_zero_count(), numerics.zeros_like(params, dtype=nu_dtype))

    def update_fn(updates, state, params=None):
        del params
        nu = second_moment(updates, state.nu, b2)
        count = numerics.safe_increment(state.count)
        nu_hat = numerics.schedule_free_denominator(nu, b2, count, convention)
        if convention == "optax":
            updates = numerics.reciprocal_step(updates, nu_hat, eps)
        else:
            updates = numerics.adaptive_step(updates, nu_hat, eps, 0.0)
        return updates, ScaleByRmsState(count, _store(nu, state.nu, nu_dtype))

    return optax.GradientTransformation(init_fn, update_fn)


class ScheduleFreeState(NamedTuple):
    """Schedule-Free's state, field for field optax's `ScheduleFreeState`: the interpolation
    b1 (kept so that the evaluation point x can be formed from the state alone), the sum of the
    averaging weights, the step t of the next update (from 1), the largest learning rate so
    far, the base optimizer's state and the base sequence z. The params are y."""

    b1: jax.Array
    weight_sum: jax.Array
    step_count: jax.Array
    max_lr: jax.Array
    base_optimizer_state: Any
    z: Tree


@checked
def schedule_free(
    base: optax.GradientTransformation,
    learning_rate: Any,
    b1: float = 0.9,
    weight_lr_power: float = 2.0,
    state_dtype: Any = None,
    *,
    convention: str = "optax",
) -> optax.GradientTransformation:
    r"""Schedule-Free (Defazio et al. 2024): `base`'s steps move z; the params are the
    gradient point y, an interpolation of z and their weighted average x.

    .. math::
        y_t = (1-\beta_1) z_t + \beta_1 x_t, \quad
        z_{t+1} = z_t + s_t, \quad
        c_{t+1} = \frac{\gamma_{\max,t}^p}{\sum_{i \le t} \gamma_{\max,i}^p}, \quad
        x_{t+1} = (1-c_{t+1}) x_t + c_{t+1} z_{t+1}

    with :math:`s_t` the base's update at :math:`y_t` (for AdamW, :math:`-\gamma_t (u_t +
    \lambda y_t)`), :math:`\gamma_{\max,t}` the largest learning rate up to t and p
    ``weight_lr_power``. The update returned is :math:`y_{t+1} - y_t`
    (`numerics.schedule_free_y`); evaluate x (:func:`schedule_free_eval_params`), which is
    recovered from y and z. "pytorch" moves y as `AdamWScheduleFree` does and keeps the
    scalars in float32 (optax in the params' dtype).

    Args:
      base: the transform whose updates :math:`s_t` step z (with its learning rate), without
        momentum.
      learning_rate: :math:`\gamma_t`, a float or a schedule of t, for the averaging weights.
      b1: the interpolation :math:`\beta_1` in (0, 1).
      weight_lr_power: p >= 0, the power of the learning rate in the averaging weights.
      state_dtype: dtype in which to store z (None: the params').
      convention: "optax", "pytorch" or "paper".

    References:
      Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, The Road Less Scheduled, NeurIPS
      2024, Algorithm 1 (arXiv:2405.15682).
    """

    def init_fn(params):
        dtype = optax.tree.dtype(params, "lowest") if convention == "optax" else jnp.float32
        z = jax.tree.map(lambda t: t.copy(), numerics.cast(params, state_dtype))
        return ScheduleFreeState(
            b1=jnp.asarray(b1, dtype=dtype),
            weight_sum=jnp.zeros([], dtype),
            step_count=jnp.ones([], jnp.int32),
            max_lr=jnp.zeros([], dtype),
            base_optimizer_state=base.init(params),
            z=z,
        )

    def update_fn(updates, state, params=None):
        lr = learning_rate
        if callable(learning_rate):
            lr = jnp.asarray(learning_rate(state.step_count), dtype=state.max_lr.dtype)
        max_lr = jnp.maximum(state.max_lr, lr)
        count = numerics.safe_increment(state.step_count)
        weight = max_lr**weight_lr_power
        weight_sum = state.weight_sum + weight
        c = numerics.schedule_free_average_weight(weight, weight_sum)
        steps, base_state = base.update(updates, state.base_optimizer_state, params)
        z = jax.tree.map(
            lambda zi, si: jnp.asarray(zi + si).astype(jnp.asarray(zi).dtype), state.z, steps
        )
        y = numerics.schedule_free_y(params, state.z, z, steps, c, b1, convention)
        updates = jax.tree.map(lambda new, old: new - old, y, params)
        return updates, ScheduleFreeState(state.b1, weight_sum, count, max_lr, base_state, z)

    return optax.GradientTransformation(init_fn, update_fn)


def schedule_free_eval_params(opt_state: Any, params: Tree) -> Tree:
    """The point to evaluate a Schedule-Free run at: its average x = (y - (1 - b1) z) / b1
    (`numerics.schedule_free_x`), from the params y and the state (ours or optax's, anywhere
    inside `opt_state`). optax's `schedule_free_eval_params` for a state that may be wrapped.

    Inside `optax.partition` (parameter groups, frozen leaves) each Schedule-Free state holds z
    for its own leaves only (optax's `MaskedNode` elsewhere): each gives x on its leaves, with
    its own b1; every other leaf is evaluated at its params.
    """
    kinds = (ScheduleFreeState, optax.contrib.ScheduleFreeState)  # in a chain, a sweep, ...
    found = jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, kinds))
    found = [s for s in found if isinstance(s, kinds)]
    if not found:
        raise ValueError(
            "schedule_free_eval_params: the optimizer state holds no Schedule-Free state; it "
            "needs the state of a schedule_free optimizer"
        )
    for state in found:  # Their z's cover disjoint leaves (one per partition's group).
        params = jax.tree.map(
            lambda y, z, b1=state.b1: (
                y if isinstance(z, optax.MaskedNode) else numerics.schedule_free_x(y, z, b1)
            ),
            params,
            state.z,
        )
    return params


class ScaleByMarsState(NamedTuple):
    """MARS-AdamW's state: Adam's, and the previous gradient g_{t-1} of the correction."""

    count: jax.Array
    mu: Tree
    nu: Tree
    last_grad: Tree


@checked
def scale_by_mars(
    b1: float = 0.95,
    b2: float = 0.99,
    gamma: float = 0.025,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    nu_dtype: Any = None,
    use_clipping: bool = True,
    convention: str = "optax",
) -> optax.GradientTransformation:
    r"""Rescales gradients by MARS-AdamW: Adam on a variance-reduced, clipped gradient.

    .. math::
        c_t = g_t + \gamma \frac{\beta_1}{1-\beta_1} (g_t - g_{t-1}), \quad
        \tilde c_t = \mathrm{Clip}(c_t, 1) = \begin{cases} c_t / \|c_t\|_2 & \|c_t\|_2 > 1 \\
        c_t & \text{otherwise} \end{cases} \\
        m_t = \beta_1 m_{t-1} + (1-\beta_1) \tilde c_t, \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) \tilde c_t^2 \\
        u_t = \hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon), \quad
        \hat m_t = m_t / (1-\beta_1^t), \; \hat v_t = v_t / (1-\beta_2^t)

    (Yuan et al., Algorithm 2 with the approximate correction of Section 3: :math:`g_{t-1}`
    is the previous step's gradient, one gradient per step; the norm clipped per tensor.)
    With ``gamma=0`` and ``use_clipping=False`` it is Adam's rule exactly.

    Conventions: "optax" is the authors' code in optax's arithmetic: :math:`g_0 = 0`. "paper"
    follows Algorithm 1's :math:`x_1 = x_0`: no correction at t = 1
    (`numerics.mars_previous_gradient`). "pytorch" is pytorch_optimizer's ``MARS``: PyTorch's
    rounding of the moments and its denominator :math:`(\sqrt{v_t + \epsilon_{root}} +
    \epsilon)/\sqrt{1-\beta_2^t}` (`numerics.pytorch_radam_step`).

    Args:
      b1: decay of the first moment and weight of the correction, in [0, 1).
      b2: decay of the second moment, in [0, 1).
      gamma: :math:`\gamma` >= 0, the strength of the correction (the paper's 0.025).
      eps, eps_root, mu_dtype, nu_dtype: as in :func:`scale_by_adam`.
      use_clipping: clip :math:`c_t` to norm 1 per tensor (the paper's); False leaves it.
      convention: "optax", "pytorch" or "paper".

    Example:
      >>> import jax.numpy as jnp
      >>> tx = scale_by_mars(b1=0.5, b2=0.5, gamma=0.0, eps=0.0)
      >>> tx.update(jnp.array([0.25, -0.5]), tx.init(jnp.zeros(2)))[0]  # ||g|| < 1: sign(g)
      Array([ 1., -1.], dtype=float32)

    References:
      Yuan, Liu, Wu, Zhou, Gu, MARS: Unleashing the Power of Variance Reduction for Training
      Large Models, arXiv:2411.10438, 2024, Algorithms 1 and 2.
    """
    mu_dtype, nu_dtype = _storage_dtype(mu_dtype), _storage_dtype(nu_dtype)
    first_moment, second_moment = numerics.moments_for(convention)

    def init_fn(params):
        moments = _init_moments(mu_dtype, nu_dtype)(params)
        return ScaleByMarsState(*moments, last_grad=numerics.zeros_like(params))

    def update_fn(updates, state, params=None):
        del params
        previous = state.last_grad
        if convention == "paper":
            previous = numerics.mars_previous_gradient(updates, previous, state.count)
        corrected = numerics.mars_correction(updates, previous, b1, gamma)
        if use_clipping:
            corrected = numerics.clip_to_unit_norm(corrected)
        mu = first_moment(corrected, state.mu, b1)
        nu = second_moment(corrected, state.nu, b2)
        count = numerics.safe_increment(state.count)
        mu_hat = numerics.bias_correction(mu, b1, count, convention)
        if convention == "pytorch":
            step = numerics.pytorch_radam_step(mu_hat, nu, b2, count, eps, eps_root)
        else:
            step = numerics.adaptive_step(
                mu_hat, numerics.bias_correction(nu, b2, count, convention), eps, eps_root
            )
        moments = _moments(count, mu, nu, state, mu_dtype, nu_dtype)
        last_grad = numerics.cast_like(updates, state.last_grad)
        return step, ScaleByMarsState(*moments, last_grad=last_grad)

    return optax.GradientTransformation(init_fn, update_fn)


@checked
def scale_by_adam_mini(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    nu_dtype: Any = None,
    convention: str = "optax",
) -> optax.GradientTransformation:
    r"""Rescales gradients by Adam-mini: Adam with one second moment per block of parameters.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
        v_{t,b} = \beta_2 v_{t-1,b} + (1-\beta_2)\,\operatorname{mean}_{i \in b}(g_{t,i}^2) \\
        u_{t,i} = \hat m_{t,i} / (\sqrt{\hat v_{t,b(i)} + \epsilon_{root}} + \epsilon), \quad
        \hat m_t = m_t / (1-\beta_1^t), \; \hat v_t = v_t / (1-\beta_2^t)

    (Zhang et al., Algorithm 1.) The blocks (`numerics.block_shape`): one per output unit of a
    leaf with ndim >= 2 (the paper's "one learning rate per output neuron", Algorithm 2), one
    per coordinate for biases, scales and scalars, where it is :func:`scale_by_adam`.
    "pytorch" is the authors' ``adam_mini`` package (PyTorch's rounding of the moments).

    Args:
      b1, b2, eps, eps_root, mu_dtype: as in :func:`scale_by_adam`.
      nu_dtype: dtype in which to *store* the per-block v_t.
      convention: "optax", "pytorch" or "paper".

    Example:
      >>> import jax.numpy as jnp
      >>> tx = scale_by_adam_mini(b1=0.5, b2=0.5, eps=0.0)
      >>> g = jnp.array([[3.0], [-4.0]])  # one output unit: one v = mean(g^2) = 12.5
      >>> tx.update(g, tx.init(g))[0]  # g / sqrt(12.5)
      Array([[ 0.84852815],
             [-1.1313709 ]], dtype=float32)

    References:
      Zhang, Chen, Li, Ye, Ding, Shi, Li, Sun & Luo, Adam-mini: Use Fewer Learning Rates To
      Gain More, arXiv:2406.16793, 2024, Algorithms 1 and 2.
    """
    mu_dtype, nu_dtype = _storage_dtype(mu_dtype), _storage_dtype(nu_dtype)
    first_moment, _ = numerics.moments_for(convention)

    def init_fn(params):
        mu = numerics.zeros_like(params, dtype=mu_dtype)
        nu = jax.tree.map(
            lambda p: jnp.zeros(
                numerics.block_shape(p.shape), p.dtype if nu_dtype is None else nu_dtype
            ),
            params,
        )
        return ScaleByAdamState(count=_zero_count(), mu=mu, nu=nu)

    def update_fn(updates, state, params=None):
        del params
        mu = first_moment(updates, state.mu, b1)
        nu = numerics.block_second_moment(updates, state.nu, b2, convention)
        count = numerics.safe_increment(state.count)
        mu_hat = numerics.bias_correction(mu, b1, count, convention)
        nu_hat = numerics.bias_correction(nu, b2, count, convention)
        step = numerics.adaptive_step(mu_hat, nu_hat, eps, eps_root)
        return numerics.cast_like(step, updates), _moments(count, mu, nu, state, mu_dtype, nu_dtype)

    return optax.GradientTransformation(init_fn, update_fn)


def _decay_leaf(g: jax.Array, p: jax.Array, decayed: Any, rate: Any) -> jax.Array:
    """g + rate * p where the mask says so (Python bools decide at trace time)."""
    if decayed is False:
        return g
    if decayed is True:
        return g + rate * p
    return jnp.where(decayed, g + rate * p, g)


def _broadcast_mask(mask: Any, params: Tree) -> Tree:
    """Expands a mask that is a prefix of `params` (or a callable; None: all) to a bool per leaf."""
    if mask is None:
        return jax.tree.map(lambda _: True, params)
    mask_tree = mask(params) if callable(mask) else mask
    return jax.tree.map(lambda m, subtree: jax.tree.map(lambda _: m, subtree), mask_tree, params)


@checked
def add_decayed_weights(weight_decay: Any = 0.0, mask: Any = None) -> optax.GradientTransformation:
    r"""Adds ``weight_decay * params`` to the updates: decoupled weight decay.

    Placed after the adaptive rescaling (AdamW), the decay is not divided by
    :math:`\sqrt{\hat v_t}`. As in optax and PyTorch it is later multiplied by the learning
    rate (the paper's rule: :func:`subtract_decayed_weights`).

    Args:
      weight_decay: a non-negative float, or a schedule of the step.
      mask: None (decay everything), a pytree of bools that is a prefix of the params, or a
        callable returning one from the params. ``False`` leaves are not decayed (biases,
        normalisation scales).

    References:
      Loshchilov & Hutter, Decoupled Weight Decay Regularization, ICLR 2019.
    """

    def rate(count):  # a constant 0 adds nothing: no tree traversal (None)
        constant_zero = isinstance(weight_decay, int | float) and weight_decay == 0.0
        return None if constant_zero else numerics.value_at(weight_decay, count)

    name, scheduled = "add_decayed_weights", callable(weight_decay)
    return _decayed_weights(name, scheduled, mask, rate, _decay_leaf)


@checked
def subtract_decayed_weights(
    weight_decay: Any = 0.0, mask: Any = None
) -> optax.GradientTransformation:
    r"""Subtracts ``weight_decay * params`` from updates that already hold the learning rate.

    Loshchilov & Hutter's Algorithm 2 (AdamW) steps
    :math:`\theta_t = \theta_{t-1} - \eta_t(\alpha \hat m_t/(\sqrt{\hat v_t}+\epsilon) +
    \lambda\theta_{t-1})`: the decay :math:`\lambda` is multiplied by the schedule multiplier
    :math:`\eta_t` but not by the learning rate :math:`\alpha`. Chained after
    :func:`scale_by_learning_rate` this is that rule, with ``weight_decay`` the product
    :math:`\eta_t\lambda` (a schedule, or a constant for :math:`\eta_t = 1`).

    Args:
      weight_decay, mask: as in :func:`add_decayed_weights`.
    """

    def rate(count):
        return -numerics.value_at(weight_decay, count)

    name, scheduled = "subtract_decayed_weights", callable(weight_decay)
    return _decayed_weights(name, scheduled, mask, rate, _decay_leaf)


def pytorch_decoupled_weight_decay(
    learning_rate: Any, weight_decay: Any = 0.0, mask: Any = None
) -> optax.GradientTransformation:
    r"""Shrinks the params by torch.optim's factor, for updates that hold the learning rate.

    PyTorch's AdamW (and NAdam, RAdam with ``decoupled_weight_decay=True``) first multiply the
    params by :math:`c_t = 1 - \alpha_t \lambda`, then take the step: the rule of
    :func:`add_decayed_weights`, except that :math:`c_t` is rounded to float32. Chained after
    :func:`scale_by_learning_rate`, this adds :math:`-(1 - c_t)\theta`.

    Args:
      learning_rate: the learning rate (float or schedule) of the chain.
      weight_decay, mask: as in :func:`add_decayed_weights`.
    """

    def shrink(count):  # 1 - fl32(c_t), exact in float32 (Sterbenz)
        lr, wd = (numerics.value_at(x, count) for x in (learning_rate, weight_decay))
        return 1 - jnp.asarray(1 - lr * wd).astype(jnp.float32)

    scheduled = callable(learning_rate) or callable(weight_decay)
    name = "pytorch_decoupled_weight_decay"
    return _decayed_weights(name, scheduled, mask, shrink, _shrink_leaf)


def _shrink_leaf(g: jax.Array, p: jax.Array, decayed: Any, shrink: jax.Array) -> jax.Array:
    """g + (fl(p c) - p), c = 1 - shrink: torch rounds p * c to the param's dtype before the
    step (`param.mul_(c)`), and this rounding, not just its size, is what it does (adding
    -shrink * p to the step instead rounds once, and drifts from torch). p - p * shrink is
    fl(p c) (as one fused multiply-add exactly); minus p it is exact (Sterbenz), so that
    apply_updates lands on fl(fl(p c) + step).
    """
    if decayed is False:
        return g
    shrink = shrink.astype(p.dtype)
    shrunk = g + ((p - p * shrink) - p)
    return shrunk if decayed is True else jnp.where(decayed, shrunk, g)


def _decayed_weights(name: str, scheduled: bool, mask: Any, rate: Any, leaf: Any):
    """The weight decays' one body: leaf(g, p, decayed, rate(count)) where `mask` decays.

    `rate` is evaluated at the chain's count (state `ScaleByScheduleState`) where a
    hyperparameter is `scheduled`; a rate of None leaves the updates as they are.
    """

    def init_fn(params):
        del params
        return ScaleByScheduleState(count=_zero_count()) if scheduled else optax.EmptyState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(f"{name} needs the params: call update(g, state, params)")
        value = rate(state.count if scheduled else None)
        if value is None:
            return updates, state
        if scheduled:
            state = ScaleByScheduleState(count=numerics.safe_increment(state.count))
        decayed = _broadcast_mask(mask, params)
        updates = jax.tree.map(lambda g, p, d: leaf(g, p, d, value), updates, params, decayed)
        return updates, state

    return optax.GradientTransformation(init_fn, update_fn)


@checked
def scale_by_learning_rate(learning_rate: Any) -> optax.GradientTransformation:
    """Multiplies updates by ``-learning_rate`` (a float, or a schedule of the step count).

    The sign flip turns the ascent direction computed by the transforms into a descent step,
    so that ``optax.apply_updates(params, updates)`` minimises the loss.
    """

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
