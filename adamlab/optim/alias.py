"""The Adam family as ready-to-use optimizers, with optax-compatible signatures.

Each alias is a composition (as in optax): a rescaling transform from `transform.py`, for the
decoupled variants `add_decayed_weights`, then `scale_by_learning_rate`. Hyperparameters are
checked here first so that an error names the optimizer the user asked for.
"""

from typing import Any

import optax

from adamlab.optim import transform, validation


def _check_common(name: str, learning_rate: Any, b1: Any, b2: Any, eps: Any, eps_root: Any):
    validation.check_learning_rate(name, learning_rate)
    validation.check_decay(name, "b1", b1)
    validation.check_decay(name, "b2", b2)
    validation.check_non_negative(name, "eps", eps)
    validation.check_non_negative(name, "eps_root", eps_root)


def _check_decoupled(name: str, weight_decay: Any, mask: Any) -> None:
    validation.check_non_negative(name, "weight_decay", weight_decay)
    validation.check_mask(name, mask)


def adam(
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    r"""Adam (Kingma & Ba 2015): :math:`\theta_t = \theta_{t-1} - \alpha_t \hat m_t /
    (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)`; see :func:`transform.scale_by_adam`.

    Args:
      learning_rate: a positive float or an optax schedule of the step.
      b1, b2, eps, eps_root, mu_dtype, nesterov: see :func:`transform.scale_by_adam`.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> tx = adam(1e-3)
      >>> params = jnp.array([1.0, -2.0])
      >>> updates, state = tx.update(jnp.array([0.5, -0.5]), tx.init(params), params)
      >>> optax.apply_updates(params, updates)  # eps -> 0: each weight moves by -lr * sign(g)
      Array([ 0.999, -1.999], dtype=float32)
    """
    _check_common("adam", learning_rate, b1, b2, eps, eps_root)
    validation.check_mu_dtype("adam", mu_dtype)
    validation.check_bool("adam", "nesterov", nesterov)
    return optax.chain(
        transform.scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
        transform.scale_by_learning_rate(learning_rate),
    )


def adamw(
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    weight_decay: Any = 1e-4,
    mask: Any = None,
    *,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    r"""AdamW (Loshchilov & Hutter 2019): Adam plus decoupled weight decay,
    :math:`\theta_t = \theta_{t-1} - \alpha_t (\text{adam step} + \lambda \theta_{t-1})`.

    Args:
      weight_decay: :math:`\lambda`, a non-negative float or a schedule; it is multiplied by
        the learning rate, as in optax and PyTorch.
      mask: which params decay (see :func:`transform.add_decayed_weights`).
      Others: as in :func:`adam`.
    """
    _check_common("adamw", learning_rate, b1, b2, eps, eps_root)
    validation.check_mu_dtype("adamw", mu_dtype)
    validation.check_bool("adamw", "nesterov", nesterov)
    _check_decoupled("adamw", weight_decay, mask)
    return optax.chain(
        transform.scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
        transform.add_decayed_weights(weight_decay, mask),
        transform.scale_by_learning_rate(learning_rate),
    )


def nadam(
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
) -> optax.GradientTransformation:
    """Nadam (Dozat 2016): Adam with Nesterov momentum; ``adam(..., nesterov=True)``."""
    return adam(learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov=True)


def nadamw(
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    weight_decay: Any = 1e-4,
    mask: Any = None,
) -> optax.GradientTransformation:
    """NadamW: Nadam's look-ahead momentum with AdamW's decoupled weight decay."""
    return adamw(learning_rate, b1, b2, eps, eps_root, mu_dtype, weight_decay, mask, nesterov=True)


def amsgrad(
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
) -> optax.GradientTransformation:
    """AMSGrad (Reddi et al. 2018): Adam with a non-increasing per-coordinate step size;
    see :func:`transform.scale_by_amsgrad`."""
    _check_common("amsgrad", learning_rate, b1, b2, eps, eps_root)
    validation.check_mu_dtype("amsgrad", mu_dtype)
    return optax.chain(
        transform.scale_by_amsgrad(
            b1, b2, eps, eps_root, mu_dtype, bias_correction_mu, bias_correction_nu
        ),
        transform.scale_by_learning_rate(learning_rate),
    )


def radam(
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    threshold: float = 5.0,
    *,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    """RAdam (Liu et al. 2020): momentum SGD until the variance of the adaptive step is
    tractable, then rectified Adam; see :func:`transform.scale_by_radam`."""
    _check_common("radam", learning_rate, b1, b2, eps, eps_root)
    validation.check_range("radam", "threshold", threshold, low=4.0)
    validation.check_bool("radam", "nesterov", nesterov)
    return optax.chain(
        transform.scale_by_radam(b1, b2, eps, eps_root, threshold, nesterov=nesterov),
        transform.scale_by_learning_rate(learning_rate),
    )


def adamax(
    learning_rate: Any, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformation:
    """Adamax (Kingma & Ba 2015, Section 7.1): Adam with the infinity norm;
    see :func:`transform.scale_by_adamax`."""
    _check_common("adamax", learning_rate, b1, b2, eps, 0.0)
    return optax.chain(
        transform.scale_by_adamax(b1, b2, eps),
        transform.scale_by_learning_rate(learning_rate),
    )


def adabelief(
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-16,
    eps_root: float = 1e-16,
    *,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    """AdaBelief (Zhuang et al. 2020): Adam with the gradient's variance around its running
    mean in the denominator; see :func:`transform.scale_by_belief`."""
    _check_common("adabelief", learning_rate, b1, b2, eps, eps_root)
    validation.check_bool("adabelief", "nesterov", nesterov)
    return optax.chain(
        transform.scale_by_belief(b1, b2, eps, eps_root, nesterov=nesterov),
        transform.scale_by_learning_rate(learning_rate),
    )
