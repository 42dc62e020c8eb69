"""The Adam family as ready-to-use optimizers, with optax-compatible signatures.

Each alias is a composition (as in optax): a rescaling transform from `transform.py`, for the
decoupled variants a weight decay, then `scale_by_learning_rate`. Hyperparameters are checked
here first so that an error names the optimizer the user asked for.

Every alias takes ``fused=True`` for its fused variant where one exists (`fused.FUSED`: the
same rule and state with the bias corrections as scalar multiplications), and
``convention="optax" | "pytorch" | "paper"``: whose update rule to follow
where optax, `torch.optim` and the papers disagree (docs/conventions.md). "optax", the
default, is optax's rule operation for operation. Where a convention does not exist for a
variant (PyTorch has no AdaBelief) the alias refuses it with a ValueError that says so.
"""

from typing import Any

import jax.numpy as jnp
import optax

from adamlab.optim import fused as fused_transform
from adamlab.optim import one_pass, transform, validation


def _check_common(name: str, learning_rate: Any, b1: Any, b2: Any, eps: Any, eps_root: Any):
    validation.check_learning_rate(name, learning_rate)
    validation.check_decay(name, "b1", b1)
    validation.check_decay(name, "b2", b2)
    validation.check_non_negative(name, "eps", eps)
    validation.check_non_negative(name, "eps_root", eps_root)


def _rescaling(name: str, fused: Any, convention: str):
    """The module whose `scale_by_*` to chain: `fused` (one division per element) or
    `transform`, after checking that the fused variant exists."""
    fused_transform.check_fused(name, fused, convention)
    return fused_transform if fused else transform


def _nadam_options(name: str, fused: bool, convention: str, momentum_decay: Any) -> dict:
    """Keywords of `scale_by_adam` for Nadam: the fused one has no momentum schedule."""
    if not fused:
        return {"convention": convention, "momentum_decay": momentum_decay}
    why = "optax's Nadam has no momentum schedule"
    validation.check_unset(name, "momentum_decay", momentum_decay, convention, why)
    return {"convention": convention}


def _with_one_pass(
    tx: optax.GradientTransformation,
    fused: bool,
    convention: str,
    mu_dtype: Any,
    mask: Any,
    hyperparameters: one_pass.AdamHyperparameters,
) -> optax.GradientTransformation:
    """`tx` with the one-pass CPU step (`one_pass.update_and_apply`) where the kernel computes
    exactly its rule: fused, optax convention, moments in the params' dtype, no mask; else
    `tx` unchanged."""
    if fused and convention == "optax" and mu_dtype is None and mask is None:
        return one_pass.attach(tx, hyperparameters)
    return tx


def _check_decoupled(name: str, weight_decay: Any, mask: Any) -> None:
    validation.check_non_negative(name, "weight_decay", weight_decay)
    validation.check_mask(name, mask)


def _decoupled(
    rescale: optax.GradientTransformation,
    learning_rate: Any,
    weight_decay: Any,
    mask: Any,
    convention: str,
) -> optax.GradientTransformation:
    """rescale, decoupled weight decay, learning rate: in the order of the convention.

    optax and PyTorch multiply the decay by the learning rate (PyTorch as
    ``param.mul_(1 - lr * weight_decay)`` before the step, the same rule with the factor
    rounded to float32: `transform.pytorch_decoupled_weight_decay`). Loshchilov & Hutter's
    Algorithm 2 multiplies it by the schedule multiplier only: ``weight_decay`` is then the
    per-step decay, not scaled by ``learning_rate`` (`transform.subtract_decayed_weights`).
    """
    if convention == "paper":
        return optax.chain(
            rescale,
            transform.scale_by_learning_rate(learning_rate),
            transform.subtract_decayed_weights(weight_decay, mask),
        )
    if convention == "pytorch":
        return optax.chain(
            rescale,
            transform.scale_by_learning_rate(learning_rate),
            transform.pytorch_decoupled_weight_decay(learning_rate, weight_decay, mask),
        )
    return optax.chain(
        rescale,
        transform.add_decayed_weights(weight_decay, mask),
        transform.scale_by_learning_rate(learning_rate),
    )


def adam(
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
    convention: str = "optax",
    fused: bool = False,
) -> optax.GradientTransformation:
    r"""Adam (Kingma & Ba 2015): :math:`\theta_t = \theta_{t-1} - \alpha_t \hat m_t /
    (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)`; see :func:`transform.scale_by_adam`.

    Args:
      learning_rate: a positive float or an optax schedule of the step.
      b1, b2, eps, eps_root, mu_dtype, nesterov: see :func:`transform.scale_by_adam`.
      convention: "optax" (default), "pytorch" (``torch.optim.Adam``; with nesterov,
        ``torch.optim.NAdam``) or "paper" (Kingma & Ba, Algorithm 1).
      fused: bias-correct by scalar multiplications, one division per element instead of
        three (`adamlab.optim.fused`): the same state, within a few float32 ulps per step.

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
    validation.check_convention("adam", convention)
    rescaling = _rescaling("adam", fused, convention)
    tx = optax.chain(
        rescaling.scale_by_adam(
            b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov, convention=convention
        ),
        transform.scale_by_learning_rate(learning_rate),
    )
    hyperparameters = one_pass.AdamHyperparameters(
        learning_rate, b1, b2, eps, eps_root, None, nesterov
    )
    return _with_one_pass(tx, fused, convention, mu_dtype, None, hyperparameters)


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
    convention: str = "optax",
    fused: bool = False,
) -> optax.GradientTransformation:
    r"""AdamW (Loshchilov & Hutter 2019): Adam plus decoupled weight decay,
    :math:`\theta_t = \theta_{t-1} - \alpha_t (\text{adam step} + \lambda \theta_{t-1})`.

    Args:
      weight_decay: :math:`\lambda`, a non-negative float or a schedule; it is multiplied by
        the learning rate, as in optax and PyTorch; with ``convention="paper"`` it is not
        (Loshchilov & Hutter, Algorithm 2; see :func:`transform.subtract_decayed_weights`).
      mask: which params decay (see :func:`transform.add_decayed_weights`).
      convention: "optax", "pytorch" (``torch.optim.AdamW``) or "paper".
      Others: as in :func:`adam`.
    """
    _check_common("adamw", learning_rate, b1, b2, eps, eps_root)
    validation.check_mu_dtype("adamw", mu_dtype)
    validation.check_bool("adamw", "nesterov", nesterov)
    validation.check_convention("adamw", convention)
    _check_decoupled("adamw", weight_decay, mask)
    rescale = _rescaling("adamw", fused, convention).scale_by_adam(
        b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov, convention=convention
    )
    tx = _decoupled(rescale, learning_rate, weight_decay, mask, convention)
    hyperparameters = one_pass.AdamHyperparameters(
        learning_rate, b1, b2, eps, eps_root, weight_decay, nesterov
    )
    return _with_one_pass(tx, fused, convention, mu_dtype, mask, hyperparameters)


def nadam(
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    convention: str = "optax",
    fused: bool = False,
    momentum_decay: float | None = None,
) -> optax.GradientTransformation:
    """Nadam (Dozat 2016): Adam with Nesterov momentum; ``adam(..., nesterov=True)``.

    Args:
      convention: "optax" (constant momentum b1), "pytorch" (``torch.optim.NAdam``: the
        momentum schedule mu_t with ``momentum_decay``) or "paper" (Dozat, Algorithm 2).
      momentum_decay: the schedule's psi (None: 0.004); "pytorch" and "paper" only.
      Others: as in :func:`adam`.
    """
    _check_common("nadam", learning_rate, b1, b2, eps, eps_root)
    validation.check_mu_dtype("nadam", mu_dtype)
    validation.check_convention("nadam", convention)
    rescaling = _rescaling("nadam", fused, convention)
    nadam_options = _nadam_options("nadam", fused, convention, momentum_decay)
    tx = optax.chain(
        rescaling.scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=True, **nadam_options),
        transform.scale_by_learning_rate(learning_rate),
    )
    hyperparameters = one_pass.AdamHyperparameters(
        learning_rate, b1, b2, eps, eps_root, None, nesterov=True
    )
    return _with_one_pass(tx, fused, convention, mu_dtype, None, hyperparameters)


def nadamw(
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    weight_decay: Any = 1e-4,
    mask: Any = None,
    *,
    convention: str = "optax",
    fused: bool = False,
    momentum_decay: float | None = None,
) -> optax.GradientTransformation:
    """NadamW: Nadam's look-ahead momentum with AdamW's decoupled weight decay.

    "pytorch" is ``torch.optim.NAdam(decoupled_weight_decay=True)``; "paper" is Dozat's
    Algorithm 2 with Loshchilov & Hutter's decay. Arguments as in :func:`nadam` and
    :func:`adamw`.
    """
    _check_common("nadamw", learning_rate, b1, b2, eps, eps_root)
    validation.check_mu_dtype("nadamw", mu_dtype)
    validation.check_convention("nadamw", convention)
    rescaling = _rescaling("nadamw", fused, convention)
    nadam_options = _nadam_options("nadamw", fused, convention, momentum_decay)
    _check_decoupled("nadamw", weight_decay, mask)
    rescale = rescaling.scale_by_adam(
        b1, b2, eps, eps_root, mu_dtype, nesterov=True, **nadam_options
    )
    tx = _decoupled(rescale, learning_rate, weight_decay, mask, convention)
    hyperparameters = one_pass.AdamHyperparameters(
        learning_rate, b1, b2, eps, eps_root, weight_decay, nesterov=True
    )
    return _with_one_pass(tx, fused, convention, mu_dtype, mask, hyperparameters)


def amsgrad(
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    bias_correction_mu: bool | None = None,
    bias_correction_nu: bool | None = None,
    *,
    convention: str = "optax",
    fused: bool = False,
) -> optax.GradientTransformation:
    """AMSGrad (Reddi et al. 2018): Adam with a non-increasing per-coordinate step size;
    see :func:`transform.scale_by_amsgrad` (where the conventions differ most: optax
    bias-corrects before the running maximum, PyTorch after it, the paper not at all)."""
    _check_common("amsgrad", learning_rate, b1, b2, eps, eps_root)
    validation.check_mu_dtype("amsgrad", mu_dtype)
    validation.check_convention("amsgrad", convention)
    return optax.chain(
        _rescaling("amsgrad", fused, convention).scale_by_amsgrad(
            b1,
            b2,
            eps,
            eps_root,
            mu_dtype,
            bias_correction_mu,
            bias_correction_nu,
            convention=convention,
        ),
        transform.scale_by_learning_rate(learning_rate),
    )


def radam(
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    threshold: float | None = None,
    *,
    nesterov: bool = False,
    convention: str = "optax",
    fused: bool = False,
) -> optax.GradientTransformation:
    """RAdam (Liu et al. 2020): momentum SGD until the variance of the adaptive step is
    tractable, then rectified Adam; see :func:`transform.scale_by_radam` (threshold None:
    the convention's, 5 for optax and PyTorch, 4 for the paper)."""
    _check_common("radam", learning_rate, b1, b2, eps, eps_root)
    if threshold is not None:
        validation.check_range("radam", "threshold", threshold, low=4.0)
    validation.check_bool("radam", "nesterov", nesterov)
    validation.check_convention("radam", convention)
    _rescaling("radam", fused, convention)
    return optax.chain(
        transform.scale_by_radam(
            b1, b2, eps, eps_root, threshold, nesterov=nesterov, convention=convention
        ),
        transform.scale_by_learning_rate(learning_rate),
    )


def radamw(
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    threshold: float | None = None,
    weight_decay: Any = 1e-4,
    mask: Any = None,
    *,
    nesterov: bool = False,
    convention: str = "optax",
    fused: bool = False,
) -> optax.GradientTransformation:
    """RAdamW: RAdam with AdamW's decoupled weight decay.

    "pytorch" is ``torch.optim.RAdam(decoupled_weight_decay=True)``; "optax" is optax's
    ``scale_by_radam`` chained like ``optax.adamw``; "paper" is Liu et al.'s Algorithm 2 with
    Loshchilov & Hutter's decay. Arguments as in :func:`radam` and :func:`adamw`.
    """
    _check_common("radamw", learning_rate, b1, b2, eps, eps_root)
    if threshold is not None:
        validation.check_range("radamw", "threshold", threshold, low=4.0)
    validation.check_bool("radamw", "nesterov", nesterov)
    validation.check_convention("radamw", convention)
    _rescaling("radamw", fused, convention)
    _check_decoupled("radamw", weight_decay, mask)
    rescale = transform.scale_by_radam(
        b1, b2, eps, eps_root, threshold, nesterov=nesterov, convention=convention
    )
    return _decoupled(rescale, learning_rate, weight_decay, mask, convention)


def adamax(
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    convention: str = "optax",
    fused: bool = False,
) -> optax.GradientTransformation:
    """Adamax (Kingma & Ba 2015, Section 7.1): Adam with the infinity norm;
    see :func:`transform.scale_by_adamax`."""
    _check_common("adamax", learning_rate, b1, b2, eps, 0.0)
    validation.check_convention("adamax", convention)
    return optax.chain(
        _rescaling("adamax", fused, convention).scale_by_adamax(b1, b2, eps, convention=convention),
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
    convention: str = "optax",
    fused: bool = False,
) -> optax.GradientTransformation:
    """AdaBelief (Zhuang et al. 2020): Adam with the gradient's variance around its running
    mean in the denominator; see :func:`transform.scale_by_belief`. PyTorch has no
    AdaBelief: ``convention="pytorch"`` raises a ValueError."""
    _check_common("adabelief", learning_rate, b1, b2, eps, eps_root)
    validation.check_bool("adabelief", "nesterov", nesterov)
    validation.check_convention(
        "adabelief", convention, {"pytorch": "torch.optim has no AdaBelief"}
    )
    rescaling = _rescaling("adabelief", fused, convention)
    return optax.chain(
        rescaling.scale_by_belief(b1, b2, eps, eps_root, nesterov=nesterov, convention=convention),
        transform.scale_by_learning_rate(learning_rate),
    )


def inject_hyperparams(
    inner_factory: Any, static_args: Any = (), hyperparam_dtype: Any = jnp.float32
) -> Any:
    """`optax.inject_hyperparams` whose injected hyperparameters are float32 by default.

    optax gives them the dtype of the params (optax #1414): with bfloat16 params b2 = 0.999
    becomes 1.0 in bfloat16, 1 - b2^t is 0 and the first step divides by zero. Here they stay
    float32 (or ``hyperparam_dtype``); the transforms compute in the promoted dtype and store
    the moments in their own, so the state keeps its dtypes from step to step.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = inject_hyperparams(adam)(learning_rate=1e-3)
      >>> tx.init(jnp.ones(2, jnp.bfloat16)).hyperparams["b2"].dtype
      dtype('float32')
    """
    return optax.inject_hyperparams(inner_factory, static_args, hyperparam_dtype)
