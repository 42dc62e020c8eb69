"""The optimizers, with optax-compatible signatures, and the one table that names them.

Each constructor chains a rescaling transform of `transform.py`, for the decoupled variants a
weight decay, and ``-learning_rate`` (`_chain`). Variants that share their math share one
body: Adam, AdamW, Nadam, NadamW and C-AdamW are `_adam` (`_variant` fixes its arguments),
RAdam and RAdamW `_radam`, Lion and C-Lion `_lion`. ``convention="optax" | "pytorch" |
"paper"`` picks whose update rule to follow where they disagree (docs/conventions.md);
``fused`` bias-corrects by scalar multiplications (`numerics.bias_correction`).

Hyperparameters are checked once, here (`_public`): each by its rule (`validation.RULES`),
the convention and `fused` by the optimizer's `TABLE` entry; the transforms beneath are called
unchecked. `TABLE` is where a name becomes an optimizer: ours, its optax twin, what a sweep
may vary, its search space and conventions (the optax baselines have a twin only).
"""

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
import optax.contrib

from adamlab.optim import numerics, one_pass, transform, validation
from adamlab.optim.numerics import CONVENTIONS

__all__: list[str] = ["inject_hyperparams"]  # and every `_public` constructor


def _public(constructor: Callable) -> Callable:
    """Exports `constructor` and checks its arguments when it is called (module docstring)."""
    name = constructor.__name__
    __all__.append(name)

    def check(arguments):
        validation.check(name, arguments)
        _check_offered(name, arguments.get("convention", "optax"), arguments.get("fused", False))

    return validation.checked(constructor, check)


def _check_offered(name: str, convention: str, fused: bool) -> None:
    """Raises ValueError unless optimizer `name` exists in `convention` (and fused, if asked)."""
    entry = TABLE[name]
    if convention in entry.missing:
        available = " or ".join(repr(c) for c in CONVENTIONS if c not in entry.missing)
        raise ValueError(
            f"{name}: convention={convention!r} does not exist: {entry.missing[convention]}; "
            f"use {available}"
        )
    if fused and not entry.fused:
        offered = ", ".join(n for n, e in TABLE.items() if e.fused)
        raise ValueError(
            f"{name}: fused=True does not exist for {name}; fused variants exist for {offered}"
        )
    if fused and convention not in entry.fused:
        raise ValueError(
            f"{name}: fused=True exists for convention {' or '.join(map(repr, entry.fused))}, "
            f"got {convention!r}; use fused=False"
        )


def _chain(
    rescale: optax.GradientTransformation,
    learning_rate: Any,
    weight_decay: Any = None,
    mask: Any = None,
    convention: str = "optax",
) -> optax.GradientTransformation:
    """rescale, the decoupled weight decay (none for None) where `convention` puts it, -lr.

    optax and PyTorch multiply the decay by the learning rate (PyTorch as
    ``param.mul_(1 - lr * weight_decay)`` before the step, the same rule with the factor
    rounded to float32: `transform.pytorch_decoupled_weight_decay`). Loshchilov & Hutter's
    Algorithm 2 multiplies it by the schedule multiplier only: ``weight_decay`` is then the
    per-step decay, not scaled by ``learning_rate`` (`transform.subtract_decayed_weights`).
    """
    step = transform.scale_by_learning_rate.unchecked(learning_rate)
    if weight_decay is None:
        return optax.chain(rescale, step)
    if convention == "paper":
        decay = transform.subtract_decayed_weights.unchecked(weight_decay, mask)
        return optax.chain(rescale, step, decay)
    if convention == "pytorch":
        decay = transform.pytorch_decoupled_weight_decay(learning_rate, weight_decay, mask)
        return optax.chain(rescale, step, decay)
    decay = transform.add_decayed_weights.unchecked(weight_decay, mask)
    return optax.chain(rescale, decay, step)


def _adam(
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    weight_decay: Any = 1e-4,
    mask: Any = None,
    *,
    caution_eps: Any = None,
    nu_dtype: Any = None,
    nesterov: bool = False,
    convention: str = "optax",
    fused: bool = False,
    momentum_decay: float | None = None,
) -> optax.GradientTransformation:
    """Adam, AdamW, Nadam, NadamW and C-AdamW: `transform.scale_by_adam`, chained (masked by
    `transform.scale_by_cautious` when `caution_eps` is given; no decay for `weight_decay`
    None).

    The chain carries the one-pass CPU step (`one_pass.update_and_apply`) where the kernel
    computes exactly its rule: fused, optax convention, moments in the params' dtype, no mask,
    no caution.
    """
    rescale = transform.scale_by_adam.unchecked(
        b1, b2, eps, eps_root, mu_dtype, nu_dtype=nu_dtype, nesterov=nesterov,
        convention=convention, momentum_decay=momentum_decay, fused=fused,
    )  # fmt: skip
    if caution_eps is not None:
        rescale = transform.scale_by_cautious.unchecked(rescale, caution_eps)
    tx = _chain(rescale, learning_rate, weight_decay, mask, convention)
    plain = mu_dtype is None and nu_dtype is None and mask is None and caution_eps is None
    if fused and convention == "optax" and plain:
        return one_pass.attach(
            tx,
            one_pass.AdamHyperparameters(
                learning_rate, b1, b2, eps, eps_root, weight_decay, nesterov
            ),
        )
    return tx


def _variant(
    name: str,
    body: Callable,
    doc: str,
    *,
    defaults: dict[str, tuple[Any, Any]] | None = None,
    **fixed: Any,
) -> Callable:
    """The public constructor `name`: `body` with the arguments `fixed`, which its signature
    drops (so that `create` refuses them: nadam takes no nesterov, adam no weight_decay), and
    `defaults` (name -> (default, annotation)) in place of body's (C-AdamW's caution_eps)."""
    defaults = defaults or {}
    signature = inspect.signature(body)
    kept = [
        p.replace(default=defaults[n][0], annotation=defaults[n][1]) if n in defaults else p
        for n, p in signature.parameters.items()
        if n not in fixed
    ]
    signature = signature.replace(parameters=kept)

    def constructor(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()  # Ours where they differ from body's.
        return body(*bound.args, **bound.kwargs, **fixed)

    constructor.__name__ = constructor.__qualname__ = name
    constructor.__doc__ = doc
    constructor.__signature__ = signature
    return _public(constructor)


_NO_DECAY = {"weight_decay": None, "mask": None}

adam = _variant(
    "adam",
    _adam,
    r"""Adam (Kingma & Ba 2015): :math:`\theta_t = \theta_{t-1} - \alpha_t \hat m_t /
    (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)`; see :func:`transform.scale_by_adam`.

    Args:
      learning_rate: a positive float or an optax schedule of the step.
      b1, b2, eps, eps_root, mu_dtype, nu_dtype, nesterov: see
        :func:`transform.scale_by_adam` (``nu_dtype``: the second moment's storage dtype,
        which optax's ``mu_dtype`` leaves in the params' dtype).
      convention: "optax" (default), "pytorch" (``torch.optim.Adam``; with nesterov,
        ``torch.optim.NAdam``) or "paper" (Kingma & Ba, Algorithm 1).
      fused: bias-correct by scalar multiplications, one division per element instead of
        three: the same state, within a few float32 ulps per step.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> tx = adam(1e-3)
      >>> params = jnp.array([1.0, -2.0])
      >>> updates, state = tx.update(jnp.array([0.5, -0.5]), tx.init(params), params)
      >>> optax.apply_updates(params, updates)  # eps -> 0: each weight moves by -lr * sign(g)
      Array([ 0.999, -1.999], dtype=float32)
    """,
    **_NO_DECAY,
    momentum_decay=None,
    caution_eps=None,
)

adamw = _variant(
    "adamw",
    _adam,
    r"""AdamW (Loshchilov & Hutter 2019): Adam plus decoupled weight decay,
    :math:`\theta_t = \theta_{t-1} - \alpha_t (\text{adam step} + \lambda \theta_{t-1})`.

    Args:
      weight_decay: :math:`\lambda`, a non-negative float or a schedule; it is multiplied by
        the learning rate, as in optax and PyTorch; with ``convention="paper"`` it is not
        (Loshchilov & Hutter, Algorithm 2; see :func:`transform.subtract_decayed_weights`).
      mask: which params decay (see :func:`transform.add_decayed_weights`).
      convention: "optax", "pytorch" (``torch.optim.AdamW``) or "paper".
      Others: as in :func:`adam`.
    """,
    momentum_decay=None,
    caution_eps=None,
)

nadam = _variant(
    "nadam",
    _adam,
    """Nadam (Dozat 2016): Adam with Nesterov momentum; ``adam(..., nesterov=True)``.

    Args:
      convention: "optax" (constant momentum b1), "pytorch" (``torch.optim.NAdam``: the
        momentum schedule mu_t with ``momentum_decay``) or "paper" (Dozat, Algorithm 2).
      momentum_decay: the schedule's psi (None: 0.004); "pytorch" and "paper" only.
      Others: as in :func:`adam`.
    """,
    **_NO_DECAY,
    nesterov=True,
    caution_eps=None,
)

nadamw = _variant(
    "nadamw",
    _adam,
    """NadamW: Nadam's look-ahead momentum with AdamW's decoupled weight decay.

    "pytorch" is ``torch.optim.NAdam(decoupled_weight_decay=True)``; "paper" is Dozat's
    Algorithm 2 with Loshchilov & Hutter's decay. Arguments as in :func:`nadam` and
    :func:`adamw`.
    """,
    nesterov=True,
    caution_eps=None,
)


cautious_adamw = _variant(
    "cautious_adamw",
    _adam,
    r"""C-AdamW (Liang et al. 2024): AdamW that steps only where Adam's direction agrees in
    sign with the gradient (:func:`transform.scale_by_cautious` of Adam's direction; the
    decoupled decay outside the mask, where each convention puts AdamW's).

    Args:
      caution_eps: :math:`\epsilon_c` > 0 of the rescaling.
      Others: as in :func:`adamw` (the conventions are AdamW's; the mask is the same in all).

    References:
      Liang, Chen, Liu & Liu, Cautious Optimizers: Improving Training with One Line of Code,
      arXiv:2411.16085, 2024, Algorithm 1.
    """,
    defaults={"caution_eps": (1e-8, float)},
    momentum_decay=None,
)


@_public
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
    nu_dtype: Any = None,
    convention: str = "optax",
    fused: bool = False,
) -> optax.GradientTransformation:
    """AMSGrad (Reddi et al. 2018): Adam with a non-increasing per-coordinate step size;
    see :func:`transform.scale_by_amsgrad` (where the conventions differ most: optax
    bias-corrects before the running maximum, PyTorch after it, the paper not at all)."""
    rescale = transform.scale_by_amsgrad.unchecked(
        b1, b2, eps, eps_root, mu_dtype, bias_correction_mu, bias_correction_nu,
        nu_dtype=nu_dtype, convention=convention, fused=fused,
    )  # fmt: skip
    return _chain(rescale, learning_rate)


def _radam(
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    threshold: float | None = None,
    weight_decay: Any = 1e-4,
    mask: Any = None,
    *,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    nesterov: bool = False,
    convention: str = "optax",
    fused: bool = False,
) -> optax.GradientTransformation:
    """RAdam and RAdamW: `transform.scale_by_radam`, chained (no decay for `weight_decay`
    None). `fused` exists for the common signature only: `_check_offered` refuses True."""
    del fused
    rescale = transform.scale_by_radam.unchecked(
        b1, b2, eps, eps_root, threshold, mu_dtype=mu_dtype, nu_dtype=nu_dtype,
        nesterov=nesterov, convention=convention,
    )  # fmt: skip
    return _chain(rescale, learning_rate, weight_decay, mask, convention)


radam = _variant(
    "radam",
    _radam,
    """RAdam (Liu et al. 2020): momentum SGD until the variance of the adaptive step is
    tractable, then rectified Adam; see :func:`transform.scale_by_radam` (threshold None:
    the convention's, 5 for optax and PyTorch, 4 for the paper). No fused variant: `fused`
    must be False.""",
    **_NO_DECAY,
)

radamw = _variant(
    "radamw",
    _radam,
    """RAdamW: RAdam with AdamW's decoupled weight decay.

    "pytorch" is ``torch.optim.RAdam(decoupled_weight_decay=True)``; "optax" is optax's
    ``scale_by_radam`` chained like ``optax.adamw``; "paper" is Liu et al.'s Algorithm 2 with
    Loshchilov & Hutter's decay. Arguments as in :func:`radam` and :func:`adamw`.
    """,
)


@_public
def adamax(
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    convention: str = "optax",
    fused: bool = False,
) -> optax.GradientTransformation:
    """Adamax (Kingma & Ba 2015, Section 7.1): Adam with the infinity norm;
    see :func:`transform.scale_by_adamax`."""
    rescale = transform.scale_by_adamax.unchecked(
        b1, b2, eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype, convention=convention, fused=fused
    )
    return _chain(rescale, learning_rate)


@_public
def adabelief(
    learning_rate: Any,
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
    """AdaBelief (Zhuang et al. 2020): Adam with the gradient's variance around its running
    mean in the denominator; see :func:`transform.scale_by_belief`. PyTorch has no
    AdaBelief: ``convention="pytorch"`` raises a ValueError."""
    rescale = transform.scale_by_belief.unchecked(
        b1, b2, eps, eps_root, mu_dtype=mu_dtype, nu_dtype=nu_dtype, nesterov=nesterov,
        convention=convention, fused=fused,
    )  # fmt: skip
    return _chain(rescale, learning_rate)


@_public
def lion(
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.99,
    mu_dtype: Any = None,
    weight_decay: Any = 1e-3,
    mask: Any = None,
    *,
    convention: str = "optax",
) -> optax.GradientTransformation:
    r"""Lion (Chen et al. 2023): the sign of an interpolated momentum
    (:func:`transform.scale_by_lion`), with decoupled decay,
    :math:`\theta_t = \theta_{t-1} - \alpha_t (u_t + \lambda\theta_{t-1})`.

    Args:
      learning_rate: a positive float or an optax schedule of the step.
      b1, b2, mu_dtype: see :func:`transform.scale_by_lion`.
      weight_decay: :math:`\lambda`, multiplied by the learning rate in both conventions
        (Algorithm 2 multiplies it by :math:`\eta_t`, as optax does).
      mask: which params decay (see :func:`transform.add_decayed_weights`).
      convention: "optax" (``optax.lion``) or "paper" (Chen et al., Algorithm 2): the same
        rule; torch.optim has no Lion.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = lion(1e-3, weight_decay=0.0)
      >>> params = jnp.array([1.0, -2.0])
      >>> updates, _ = tx.update(jnp.array([0.5, -0.5]), tx.init(params), params)
      >>> optax.apply_updates(params, updates)  # the first step is -lr * sign(g)
      Array([ 0.999, -1.999], dtype=float32)

    References:
      Chen et al., Symbolic Discovery of Optimization Algorithms, NeurIPS 2023, Algorithm 2.
    """
    return _lion(learning_rate, b1, b2, mu_dtype, weight_decay, mask)


def _lion(learning_rate, b1, b2, mu_dtype, weight_decay, mask, caution_eps=None):
    """Lion and C-Lion: `transform.scale_by_lion` (masked by `transform.scale_by_cautious`
    when `caution_eps` is given), chained in optax's order in both conventions."""
    rescale = transform.scale_by_lion.unchecked(b1, b2, mu_dtype)
    if caution_eps is not None:
        rescale = transform.scale_by_cautious.unchecked(rescale, caution_eps)
    return _chain(rescale, learning_rate, weight_decay, mask)


@_public
def cautious_lion(
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.99,
    mu_dtype: Any = None,
    weight_decay: Any = 1e-3,
    mask: Any = None,
    *,
    caution_eps: float = 1e-8,
    convention: str = "optax",
) -> optax.GradientTransformation:
    """C-Lion (Liang et al. 2024): Lion that steps only where its sign direction agrees with
    the gradient's sign (:func:`transform.scale_by_cautious`, outside the decoupled decay).
    Arguments as in :func:`lion`; ``caution_eps`` as in :func:`cautious_adamw`.

    References:
      Liang, Chen, Liu & Liu, Cautious Optimizers: Improving Training with One Line of Code,
      arXiv:2411.16085, 2024, Algorithm 1.
    """
    return _lion(learning_rate, b1, b2, mu_dtype, weight_decay, mask, caution_eps)


@_public
def lamb(
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    eps_root: float = 0.0,
    weight_decay: Any = 0.0,
    mask: Any = None,
    mu_dtype: Any = None,
    *,
    nu_dtype: Any = None,
    convention: str = "optax",
) -> optax.GradientTransformation:
    r"""LAMB (You et al. 2020): AdamW's direction, rescaled per layer to its weights' norm.

    .. math::
        r_t = \hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon), \quad
        x^{(i)}_{t+1} = x^{(i)}_t - \eta_t \frac{\|x^{(i)}_t\|}{\|r^{(i)}_t + \lambda
        x^{(i)}_t\|} (r^{(i)}_t + \lambda x^{(i)}_t)

    per layer (leaf) :math:`i` (:func:`transform.scale_by_trust_ratio`), composed as
    optax's ``lamb``.

    Args:
      learning_rate: a positive float or an optax schedule of the step.
      b1, b2, eps, eps_root, mu_dtype, nu_dtype: see :func:`transform.scale_by_adam` (eps
        1e-6, the paper's and optax's).
      weight_decay: :math:`\lambda`, added to the Adam direction inside the trust ratio.
      mask: which params decay (see :func:`transform.add_decayed_weights`).
      convention: "optax" (``optax.lamb``) or "paper" (You et al., Algorithm 2 with
        :math:`\phi(z) = z`: the same rule, :math:`1-\beta^t` to float64 accuracy); torch.optim
        has no LAMB.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = lamb(1e-2)
      >>> params = jnp.array([3.0, -4.0])
      >>> updates, _ = tx.update(jnp.array([1.0, 1.0]), tx.init(params), params)
      >>> float(jnp.linalg.norm(updates))  # lr * ||params||
      0.05...

    References:
      You et al., Large Batch Optimization for Deep Learning: Training BERT in 76 minutes,
      ICLR 2020, Algorithm 2.
    """
    return optax.chain(
        transform.scale_by_adam.unchecked(
            b1, b2, eps, eps_root, mu_dtype, nu_dtype=nu_dtype, convention=convention
        ),
        transform.add_decayed_weights.unchecked(weight_decay, mask),
        transform.scale_by_trust_ratio.unchecked(),
        transform.scale_by_learning_rate.unchecked(learning_rate),
    )


@_public
def muon(
    learning_rate: Any,
    ns_coeffs: tuple[float, float, float] = transform.MUON_NS_COEFFS,
    ns_steps: int = 5,
    beta: float = 0.95,
    eps: float = 1e-8,
    weight_decay: Any = 0.0,
    weight_decay_mask: Any = None,
    mu_dtype: Any = None,
    *,
    nu_dtype: Any = None,
    nesterov: bool = True,
    adam_b1: float = 0.9,
    adam_b2: float = 0.999,
    adam_eps_root: float = 0.0,
    adam_weight_decay: Any = 0.0,
    adam_learning_rate: Any = None,
    muon_weight_dimension_numbers: Any = None,
    consistent_rms: float | None = None,
    convention: str = "optax",
) -> optax.GradientTransformation:
    r"""Muon (Jordan et al. 2024): orthogonalised momentum for the matrices, AdamW elsewhere.

    For each matrix :math:`W`, :math:`W_t = W_{t-1} - \eta_t (u_t + \lambda W_{t-1})` with
    :func:`transform.scale_by_muon`'s :math:`u_t`. Every other leaf (biases, scales; by
    default conv kernels) takes AdamW with ``adam_b1``, ``adam_b2``, ``eps``,
    ``adam_weight_decay`` and, like optax's, Nesterov momentum when ``nesterov`` (NAdamW).

    Args:
      learning_rate: a positive float or an optax schedule of the step.
      ns_coeffs, ns_steps, beta, eps, mu_dtype, nesterov, consistent_rms: see
        :func:`transform.scale_by_muon`; ``ns_steps`` is fixed at the paper's 5 in searches.
      weight_decay: decoupled decay of the matrices, multiplied by the learning rate.
      weight_decay_mask: which matrices decay (as ``mask`` of :func:`adamw`).
      adam_b1, adam_b2, adam_eps_root, adam_weight_decay: the AdamW of the other leaves.
      nu_dtype: the storage dtype of that AdamW's second moment (the matrices have none), as
        in :func:`transform.scale_by_adam`; ``mu_dtype`` stores both parts' momenta.
      adam_learning_rate: its learning rate; None: ``learning_rate``.
      muon_weight_dimension_numbers: optax's: a tree (or a callable of the params returning
        one) of ``MuonDimensionNumbers``, None for a leaf that takes AdamW; None: the 2-D
        leaves, as (fan_in, fan_out). :func:`transform.conv_dimension_numbers` makes an HWIO
        conv kernel the (H*W*I) x O matrix.
      convention: "optax" (``optax.contrib.muon``: bias-corrected momentum, NAdamW for the
        other leaves when ``nesterov``) or "paper" (Jordan's reference ``MuonWithAuxAdam``:
        momentum not bias-corrected, plain AdamW for the other leaves); docs/conventions.md.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = muon(2e-2)
      >>> params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
      >>> updates, _ = tx.update(params, tx.init(params), params)
      >>> # g = ones((4, 3)) has one singular value; Newton-Schulz takes it to 0.696 (the band)
      >>> float(jnp.linalg.norm(updates["w"], ord=2))  # lr * 0.696
      0.0139...

    References:
      Jordan et al., Muon: An optimizer for hidden layers in neural networks, 2024,
      https://kellerjordan.github.io/posts/muon/.
    """
    spec = muon_weight_dimension_numbers
    labels = lambda params: jax.tree.map(
        lambda d, p: jax.tree.map(lambda _: "adam" if d is None else "muon", p),
        transform.muon_dimension_numbers(spec, params),
        params,
        is_leaf=lambda x: x is None or isinstance(x, transform.MuonDimensionNumbers),
    )
    matrices = transform.scale_by_muon.unchecked(
        ns_coeffs, ns_steps, beta, eps, mu_dtype, nesterov=nesterov,
        weight_dimension_numbers=functools.partial(transform.muon_dimension_numbers, spec),
        consistent_rms=consistent_rms, convention=convention,
    )  # fmt: skip
    adam_lr = learning_rate if adam_learning_rate is None else adam_learning_rate
    others = _adam(  # optax's AdamW is Nesterov's with Muon's; Jordan's is plain Adam
        adam_lr, adam_b1, adam_b2, eps, adam_eps_root, mu_dtype,
        nesterov=nesterov and convention == "optax", convention="optax", fused=False,
        nu_dtype=nu_dtype, weight_decay=adam_weight_decay,
    )  # fmt: skip
    return optax.partition(
        {
            "muon": _chain(matrices, learning_rate, weight_decay, weight_decay_mask),
            "adam": others,
        },
        labels,
    )


@_public
def adopt(
    learning_rate: Any,
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
    r"""ADOPT (Taniguchi et al. 2024): Adam that normalises by the previous second moment
    before the momentum, and converges for any :math:`\beta_2`:
    :math:`\theta_t = \theta_{t-1} - \alpha_t m_t` with :func:`transform.scale_by_adopt`'s
    :math:`m_t`; the first update is zero (it only reads :math:`g_0`).

    Args:
      learning_rate: a positive float or an optax schedule of the step.
      b1, b2, eps, mu_dtype, nu_dtype, nesterov, use_clipping, clip_value_fn: see
        :func:`transform.scale_by_adopt` (optax's names and defaults).
      convention: "optax" (``optax.contrib.adopt``) or "paper" (Algorithm 1 with the clipping
        of Section 5): the same rule; torch.optim has no ADOPT.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = adopt(1e-3)
      >>> params, g = jnp.array([1.0, -2.0]), jnp.array([0.5, -0.5])
      >>> updates, state = tx.update(g, tx.init(params), params)  # reads g_0: no step
      >>> updates, state = tx.update(g, state, params)
      >>> optax.apply_updates(params, updates)  # -lr (1 - b1) sign(g)
      Array([ 0.9999, -1.9999], dtype=float32)

    References:
      Taniguchi et al., ADOPT: Modified Adam Can Converge with Any beta2 with the Optimal
      Rate, NeurIPS 2024, Algorithm 1.
    """
    rescale = transform.scale_by_adopt.unchecked(
        b1, b2, eps, mu_dtype, nu_dtype=nu_dtype, nesterov=nesterov,
        use_clipping=use_clipping, clip_value_fn=clip_value_fn, convention=convention,
    )  # fmt: skip
    return _chain(rescale, learning_rate)


@_public
def ademamix(
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    b3: Any = 0.9999,
    alpha: Any = 5.0,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    weight_decay: Any = 0.0,
    mask: Any = None,
    *,
    nu_dtype: Any = None,
    alpha_warmup: int | None = None,
    b3_warmup: int | None = None,
    convention: str = "optax",
) -> optax.GradientTransformation:
    r"""AdEMAMix (Pagliardini et al. 2024): AdamW with a second, slow EMA of the gradients
    added to the fast one: :math:`\theta_t = \theta_{t-1} - \eta_t (u_t + \lambda
    \theta_{t-1})` with :func:`transform.scale_by_ademamix`'s :math:`u_t` (and there the
    warmups, which the paper sets to the run's length).

    Args:
      learning_rate: a positive float or an optax schedule of the step.
      b1, b2, b3, alpha, eps, eps_root, mu_dtype, nu_dtype, alpha_warmup, b3_warmup: see
        :func:`transform.scale_by_ademamix` (b3 >= b1).
      weight_decay: :math:`\lambda`, multiplied by the learning rate in both conventions
        (Algorithm 1 multiplies it by :math:`\eta_t`, as optax does).
      mask: which params decay (see :func:`transform.add_decayed_weights`).
      convention: "optax" (``optax.contrib.ademamix``) or "paper" (Algorithm 1: the
        schedules at t, not t - 1); torch.optim has no AdEMAMix.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = ademamix(1e-3, b3=0.99, eps=0.0)
      >>> params = jnp.array([1.0, -2.0])
      >>> updates, _ = tx.update(jnp.array([0.5, -0.5]), tx.init(params), params)
      >>> optax.apply_updates(params, updates)  # -lr sign(g) (1 + alpha (1 - b3))
      Array([ 0.99895, -1.99895], dtype=float32)

    References:
      Pagliardini, Ablin & Grangier, The AdEMAMix Optimizer: Better, Faster, Older, ICLR
      2025, Algorithm 1.
    """
    rescale = transform.scale_by_ademamix.unchecked(
        b1, b2, b3, alpha, eps, eps_root, mu_dtype, nu_dtype=nu_dtype,
        alpha_warmup=alpha_warmup, b3_warmup=b3_warmup, convention=convention,
    )  # fmt: skip
    return _chain(rescale, learning_rate, weight_decay, mask)  # optax's order in both


@_public
def schedule_free_adamw(
    learning_rate: Any = 0.0025,
    warmup_steps: int | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    weight_lr_power: float = 2.0,
    state_dtype: Any = None,
    *,
    nu_dtype: Any = None,
    convention: str = "optax",
) -> optax.GradientTransformation:
    r"""Schedule-Free AdamW (Defazio et al. 2024): AdamW without momentum and without a
    schedule; the momentum is an interpolation, the decay an average of the iterates.

    Algorithm 1 of the paper, for t = 1, ..., T (z_1 = x_1, v_0 = 0):

    .. math::
        y_t = (1-\beta_1) z_t + \beta_1 x_t \\
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \quad g_t = \nabla f(y_t) \\
        \gamma_t = \gamma \sqrt{1-\beta_2^t} \min(1, t/T_{warmup}) \\
        z_{t+1} = z_t - \gamma_t g_t / (\sqrt{v_t} + \epsilon) - \gamma_t \lambda y_t \\
        c_{t+1} = \gamma_t^2 / \textstyle\sum_{i=1}^t \gamma_i^2 \\
        x_{t+1} = (1-c_{t+1}) x_t + c_{t+1} z_{t+1}

    The params are y (where gradients are taken); evaluate x:
    :func:`transform.schedule_free_eval_params` (the loop does, `Entry.eval_params`). optax
    and PyTorch keep the bias correction in the denominator, :math:`\sqrt{v_t/(1-\beta_2^t)}`,
    and weigh the average by the largest :math:`\gamma` so far (equal to the paper's for a
    non-decreasing :math:`\gamma_t`); docs/conventions.md lists where they differ.

    Args:
      learning_rate: :math:`\gamma`, a positive float or a schedule of the step (the paper's
        is constant after the warmup); optax's default 0.0025.
      warmup_steps: :math:`T_{warmup}`, steps of the linear warmup; None: none.
      b1: the interpolation :math:`\beta_1` in (0, 1) (momentum's place; optax's and the
        paper's 0.9).
      b2, eps: Adam's second-moment decay and denominator's epsilon.
      weight_decay: :math:`\lambda`, decoupled, at y, multiplied by :math:`\gamma_t` (all three
        agree).
      weight_lr_power: the power of the learning rate in the averaging weights (2: the
        paper's :math:`\gamma_t^2`).
      state_dtype: dtype in which to store z (None: the params').
      nu_dtype: dtype in which to store v (None: the params'; optax's has no such option).
      convention: "optax" (``optax.contrib.schedule_free_adamw``), "pytorch"
        (``schedulefree.AdamWScheduleFree``, the authors' code) or "paper" (Algorithm 1).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from adamlab.optim import transform
      >>> tx = schedule_free_adamw(0.5, b1=0.5, b2=0.5, eps=0.0)
      >>> params = jnp.array([1.0, -2.0])
      >>> state = tx.init(params)
      >>> updates, state = tx.update(jnp.array([0.5, -0.5]), state, params)
      >>> params = optax.apply_updates(params, updates)  # c_2 = 1: x_2 = z_2 = y_2
      >>> transform.schedule_free_eval_params(state, params)  # -lr sign(g)
      Array([ 0.5, -1.5], dtype=float32)

    References:
      Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, The Road Less Scheduled, NeurIPS
      2024, Algorithm 1 (arXiv:2405.15682); facebookresearch/schedule_free.
    """
    interpolation = validation.interval(0.0, 1.0, open_low=True)(b1)
    if interpolation is not None:  # x = (y - (1 - b1) z) / b1
        raise ValueError(f"schedule_free_adamw: b1 must be {interpolation}, got {b1!r}")
    gamma = numerics.schedule_free_learning_rate(learning_rate, warmup_steps, b2, convention)
    # The base's count is t - 1: optax evaluates the step's schedule there, the others at t.
    step_lr = gamma
    if callable(gamma) and convention != "optax":
        step_lr = lambda count: gamma(numerics.safe_increment(count))
    rescale = transform.scale_by_second_moment.unchecked(b2, eps, nu_dtype, convention=convention)
    base = _chain(rescale, step_lr, weight_decay)  # the decay at y, x gamma_t, in all three
    return transform.schedule_free.unchecked(
        base, gamma, b1, weight_lr_power, state_dtype, convention=convention
    )


def _chain_lr_scaled_decay(rescale, learning_rate, weight_decay, mask, convention):
    """`_chain` for the papers that multiply the decay by the learning rate (MARS, Adam-mini:
    optax's place of it in "optax" and "paper"), and PyTorch's ``p.mul_(1 - lr wd)``."""
    decay_convention = "pytorch" if convention == "pytorch" else "optax"
    return _chain(rescale, learning_rate, weight_decay, mask, decay_convention)


@_public
def mars_adamw(
    learning_rate: Any,
    b1: float = 0.95,
    b2: float = 0.99,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    weight_decay: Any = 0.0,
    mask: Any = None,
    *,
    gamma: float = 0.025,
    use_clipping: bool = True,
    nu_dtype: Any = None,
    convention: str = "optax",
) -> optax.GradientTransformation:
    r"""MARS-AdamW (Yuan et al. 2024): AdamW on the variance-reduced gradient
    :math:`c_t = g_t + \gamma \beta_1/(1-\beta_1)(g_t - g_{t-1})`, clipped to norm 1 per
    tensor: :math:`\theta_t = \theta_{t-1} - \eta_t (\hat m_t / (\sqrt{\hat v_t} + \epsilon)
    + \lambda \theta_{t-1})`; see :func:`transform.scale_by_mars`. Every leaf gets MARS (the
    authors' ``optimize_1d``).

    Args:
      learning_rate: a positive float or an optax schedule of the step.
      b1, b2, gamma, eps, eps_root, mu_dtype, nu_dtype, use_clipping: see
        :func:`transform.scale_by_mars` (the paper's b1 = 0.95, b2 = 0.99, gamma = 0.025).
      weight_decay: :math:`\lambda` >= 0, multiplied by the learning rate (the authors' code
        and pytorch_optimizer's; their default 0).
      mask: which params decay (see :func:`transform.add_decayed_weights`).
      convention: "optax" (the authors' code in optax's arithmetic; optax has no MARS),
        "pytorch" (pytorch_optimizer's ``MARS(mars_type="adamw", optimize_1d=True)``) or
        "paper" (Algorithms 1 and 2).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = mars_adamw(1e-3, gamma=0.0, eps=0.0)
      >>> params = jnp.array([1.0, -2.0])
      >>> updates, _ = tx.update(jnp.array([0.5, -0.5]), tx.init(params), params)
      >>> optax.apply_updates(params, updates)  # as Adam's: -lr sign(g)
      Array([ 0.999, -1.999], dtype=float32)

    References:
      Yuan, Liu, Wu, Zhou, Gu, MARS: Unleashing the Power of Variance Reduction for Training
      Large Models, arXiv:2411.10438, 2024, Algorithm 2.
    """
    rescale = transform.scale_by_mars.unchecked(
        b1, b2, gamma, eps, eps_root, mu_dtype,
        nu_dtype=nu_dtype, use_clipping=use_clipping, convention=convention,
    )  # fmt: skip
    return _chain_lr_scaled_decay(rescale, learning_rate, weight_decay, mask, convention)


@_public
def adam_mini(
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    weight_decay: Any = 0.0,
    mask: Any = None,
    *,
    nu_dtype: Any = None,
    convention: str = "optax",
) -> optax.GradientTransformation:
    r"""Adam-mini (Zhang et al. 2024): AdamW with one second moment per block (a kernel's
    output unit), :math:`\theta_t = \theta_{t-1} - \eta_t (\hat m_t / (\sqrt{\hat v_{t,b}}
    + \epsilon) + \lambda \theta_{t-1})`; see :func:`transform.scale_by_adam_mini`.

    Args:
      learning_rate: a positive float or an optax schedule of the step.
      b1, b2, eps, eps_root, mu_dtype, nu_dtype: see :func:`transform.scale_by_adam_mini`.
      weight_decay: :math:`\lambda` >= 0, multiplied by the learning rate (Algorithm 1, line
        5: ``param - eta_t lambda param``); the authors' code exempts params named norm, ln
        or bias: pass ``mask`` for that.
      mask: which params decay (see :func:`transform.add_decayed_weights`).
      convention: "optax" (optax has no Adam-mini), "pytorch" (the authors' ``adam_mini``
        package) or "paper" (Algorithm 1).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = adam_mini(1e-3, eps=0.0)
      >>> params = jnp.array([1.0, -2.0])  # 1-D: one block per coordinate, Adam's first step
      >>> updates, _ = tx.update(jnp.array([0.5, -0.5]), tx.init(params), params)
      >>> optax.apply_updates(params, updates)
      Array([ 0.999, -1.999], dtype=float32)

    References:
      Zhang, Chen, Li, Ye, Ding, Shi, Li, Sun & Luo, Adam-mini: Use Fewer Learning Rates To
      Gain More, arXiv:2406.16793, 2024, Algorithm 1.
    """
    rescale = transform.scale_by_adam_mini.unchecked(
        b1, b2, eps, eps_root, mu_dtype, nu_dtype=nu_dtype, convention=convention
    )
    return _chain_lr_scaled_decay(rescale, learning_rate, weight_decay, mask, convention)


@_public
def soap(
    learning_rate: Any,
    b1: float = 0.95,
    b2: float = 0.95,
    eps: float = 1e-8,
    weight_decay: Any = 0.01,
    mask: Any = None,
    shampoo_beta: float | None = None,
    precondition_frequency: int = 10,
    max_precond_dim: int = 10000,
    mu_dtype: Any = None,
    *,
    nu_dtype: Any = None,
    convention: str = "optax",
) -> optax.GradientTransformation:
    r"""SOAP (Vyas et al. 2024): Adam in the eigenbasis of Shampoo's preconditioner, with
    decoupled weight decay: :math:`W_t = W_{t-1} - \eta_t (u_t + \lambda W_{t-1})` with
    :func:`transform.scale_by_soap`'s :math:`u_t`. The defaults are the authors'.

    Args:
      learning_rate: a positive float or an optax schedule of the step.
      b1, b2, eps, shampoo_beta, precondition_frequency, max_precond_dim, mu_dtype, nu_dtype:
        see :func:`transform.scale_by_soap`; the two integers are fixed at the paper's 10 and
        10000 in searches.
      weight_decay: :math:`\lambda`, multiplied by the learning rate in both conventions, in
        optax's order (the authors decay the stepped weights, a difference of
        :math:`\eta^2\lambda u_t`, and not at the first call; docs/conventions.md).
      mask: which params decay (see :func:`transform.add_decayed_weights`).
      convention: "optax" (optax's Adam bias correction; optax has SOAP only as an open pull
        request) or "paper" (the authors' soap.py); torch.optim has no SOAP.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = soap(3e-3, weight_decay=0.0)
      >>> params = jnp.ones((2, 3))
      >>> updates, state = tx.update(params, tx.init(params), params)  # initialises: no step
      >>> float(jnp.abs(updates).max())
      0.0

    References:
      Vyas et al., SOAP: Improving and Stabilizing Shampoo using Adam, ICLR 2025,
      Algorithm 3; github.com/nikhilvyas/SOAP.
    """
    rescale = transform.scale_by_soap.unchecked(
        b1, b2, eps, shampoo_beta, precondition_frequency, max_precond_dim, mu_dtype,
        nu_dtype=nu_dtype, convention=convention,
    )  # fmt: skip
    return _chain(rescale, learning_rate, weight_decay, mask)  # optax's order in both


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


def _optax_radamw(
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    threshold: float = 5.0,
    weight_decay: Any = 1e-4,
    mask: Any = None,
    *,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    """optax has no radamw: its RAdam rescaling chained as `optax.adamw` chains Adam's."""
    return optax.chain(
        optax.scale_by_radam(b1, b2, eps, eps_root, threshold, nesterov=nesterov),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )


def _optax_lamb(
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    eps_root: float = 0.0,
    weight_decay: Any = 0.0,
    mask: Any = None,
    mu_dtype: Any = None,
) -> optax.GradientTransformation:
    """`optax.lamb`'s composition, with the `mu_dtype` its scale_by_adam takes and it does not."""
    return optax.chain(
        optax.scale_by_adam(b1, b2, eps, eps_root, mu_dtype),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_trust_ratio(),
        optax.scale_by_learning_rate(learning_rate),
    )


def _optax_caution(inner: optax.GradientTransformation, caution_eps: float):
    """Liang et al.'s Algorithm 1 over an optax direction, in its own words
    (``m = (u * g > 0); u * m / (m.mean() + eps)``): optax has Cautious only as an open PR."""

    def update_fn(updates, state, params=None):
        directions, state = inner.update(updates, state, params)

        def masked(u, g):
            m = (u * g > 0).astype(jnp.float32)
            return u * (m / (m.mean() + caution_eps)).astype(u.dtype)

        return jax.tree.map(masked, directions, updates), state

    return optax.GradientTransformation(inner.init, update_fn)


def _optax_cautious_adamw(
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    weight_decay: Any = 1e-4,
    mask: Any = None,
    *,
    caution_eps: float = 1e-8,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    """optax.adamw's pieces with the caution on Adam's direction, before the decay."""
    direction = optax.scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov)
    return optax.chain(
        _optax_caution(direction, caution_eps),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )


def _optax_cautious_lion(
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.99,
    mu_dtype: Any = None,
    weight_decay: Any = 1e-3,
    mask: Any = None,
    *,
    caution_eps: float = 1e-8,
) -> optax.GradientTransformation:
    """optax.lion's pieces with the caution on Lion's sign direction, before the decay."""
    return optax.chain(
        _optax_caution(optax.scale_by_lion(b1, b2, mu_dtype), caution_eps),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )


def _optax_ademamix(
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    b3: Any = 0.9999,
    alpha: Any = 5.0,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    weight_decay: Any = 0.0,
    mask: Any = None,
    *,
    alpha_warmup: int | None = None,
    b3_warmup: int | None = None,
) -> optax.GradientTransformation:
    """optax.contrib.ademamix takes the warmups as schedules of b3 and alpha: the paper's."""
    return optax.contrib.ademamix(
        learning_rate, b1, b2, numerics.ademamix_b3(b3, b1, b3_warmup),
        numerics.ademamix_alpha(alpha, alpha_warmup), eps, eps_root, mu_dtype, weight_decay,
        mask,
    )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Entry:
    """One optimizer of `TABLE`.

    Attributes:
      twin: optax's implementation, with our signature's hyperparameters (a baseline's only);
        None where optax has none (MARS, Adam-mini; SOAP is an open pull request):
        `registry.reference` refuses it.
      ours: our public constructor; None for the optax baselines.
      sweepable: the hyperparameters one compiled program may vary between runs (they become
        `inject_hyperparams` state); the config factory adds `l2` and `warmup_fraction`.
      search_spaces: benchmark label -> {"fixed": fields, "ranges": field -> (low, high,
        scale)}, the scales of `adamlab.experiments.tuning`; the optimizer's name and
        implementation join the fixed fields there.
      missing: conventions that do not exist for it, each with the reason.
      fused: the conventions in which it has a fused variant.
      defaults: what its paper (or library) recommends where the constructor declares no
        default: the learning rate always, any other hyperparameter whose default is None
        (SGD's momentum). A run without search (AlgoPerf's self-tuning) uses these and the
        constructor's defaults.
      eval_params: ``(opt_state, params) -> params``, the point to evaluate and checkpoint
        for inference where it is not the params (Schedule-Free's average x); None: the
        params. The loop, `adamlab evaluate` and the exports call it (for ours and the twin).
    """

    twin: Callable[..., optax.GradientTransformation] | None
    ours: Callable[..., optax.GradientTransformation] | None = None
    sweepable: tuple[str, ...] = ()
    search_spaces: Mapping[str, Mapping[str, Mapping]] = dataclasses.field(default_factory=dict)
    missing: Mapping[str, str] = dataclasses.field(default_factory=dict)
    fused: tuple[str, ...] = ()
    defaults: Mapping[str, float] = dataclasses.field(default_factory=dict)
    eval_params: Callable[[Any, Any], Any] | None = None


def _space(ranges: Mapping[str, tuple], **fixed: Any) -> dict:
    return {"fixed": fixed, "ranges": dict(ranges)}


_WARMUP = {"warmup_fraction": (0.0, 0.2, "linear")}
# Adam-type optimizers share one space; weight decay only where it is decoupled.
_ADAM_RANGES = {
    "learning_rate": (1e-4, 1e-1, "log"),
    "b1": (0.8, 0.98, "log1m"),  # 1 - b1 log-uniform in [0.02, 0.2].
    "b2": (0.9, 0.999, "log1m"),  # 1 - b2 log-uniform in [1e-3, 0.1].
    "eps": (1e-10, 1e-5, "log"),
} | _WARMUP
_ADAMW_RANGES = _ADAM_RANGES | {"weight_decay": (1e-5, 1e-1, "log")}
_SGD_RANGES = {"learning_rate": (1e-3, 1.0, "log"), "momentum": (0.5, 0.99, "log1m")} | _WARMUP
_ADAM = ("learning_rate", "b1", "b2", "eps", "eps_root")
_ADAMW = (*_ADAM, "weight_decay")

_LION_RANGES = {  # Chen et al.: a learning rate 3-10x smaller than AdamW's, a decay larger.
    "learning_rate": (1e-5, 1e-2, "log"),
    "b1": (0.8, 0.98, "log1m"),
    "b2": (0.9, 0.999, "log1m"),
    "weight_decay": (1e-4, 1.0, "log"),
} | _WARMUP

_LAMB_RANGES = _ADAMW_RANGES | {  # a step of lr * ||w|| per layer: lr is a relative step
    "learning_rate": (1e-4, 1e-1, "log"),
    "eps": (1e-8, 1e-4, "log"),
}
# Muon's matrices: Jordan's lr 0.02 (a step of spectral norm ~lr); the AdamW part shares it.
_MUON_RANGES = {
    "learning_rate": (1e-3, 1e-1, "log"),
    "beta": (0.8, 0.99, "log1m"),
    "weight_decay": (1e-5, 1e-1, "log"),
} | _WARMUP
_MUON_FIXED = {"ns_steps": 5}  # the paper's; an integer, not searched
_ADOPT_RANGES = _ADAM_RANGES | {  # Taniguchi et al.: any b2 works, the default is 0.9999.
    "b2": (0.99, 0.9999, "log1m"),
    "eps": (1e-8, 1e-4, "log"),  # a floor of sqrt(v), not an addend: larger than Adam's
}
# SOAP: the authors' lr 3e-3 and b1 = b2 = 0.95 lie inside AdamW's space; the integers are
# fixed at the paper's (f = 10, max_precond_dim = 10000), not searched.
_SOAP_FIXED = {"precondition_frequency": 10, "max_precond_dim": 10000}
# Pagliardini et al.'s ranges (Section 4, App. C): b3 in [0.999, 0.9999], alpha in [2, 10].
# The warmups' lengths (integers) are not searched: the paper sets T_alpha = T_beta3 = T,
# the run's length, which the table does not know; left unset, there is no warmup.
_ADEMAMIX_RANGES = _ADAMW_RANGES | {
    "b3": (0.999, 0.9999, "log1m"),
    "alpha": (2.0, 10.0, "log"),
}
# Defazio et al. (Section 5, App.): b1 0.9 (0.95, 0.98 on long runs), a learning rate 1-10x
# AdamW's, a warmup and then no schedule (warmup_constant, whatever the workload's schedule;
# the warmup is warmup_fraction). weight_lr_power is fixed at their 2.
_SCHEDULE_FREE_FIXED = {"weight_lr_power": 2.0, "schedule": "warmup_constant"}
_SCHEDULE_FREE_RANGES = _ADAMW_RANGES | {
    "learning_rate": (3e-4, 3e-1, "log"),
    "b1": (0.8, 0.99, "log1m"),
}
# MARS: Yuan et al.'s GPT-2 runs use b1 = 0.95, b2 = 0.99, gamma = 0.025 and lr 3e-3 to 6e-3;
# gamma is searched around theirs (0 is AdamW). Adam-mini takes AdamW's hyperparameters
# (Zhang et al. tune only AdamW's); its partition is fixed (the output units, no integer).
_MARS_RANGES = _ADAMW_RANGES | {
    "b1": (0.9, 0.99, "log1m"),
    "b2": (0.95, 0.999, "log1m"),
    "gamma": (1e-3, 0.1, "log"),
}

TABLE: dict[str, Entry] = {
    "adam": Entry(
        optax.adam,
        adam,
        _ADAM,
        {"adam": _space(_ADAM_RANGES)},
        fused=CONVENTIONS,
        defaults={"learning_rate": 1e-3},
    ),
    "adamw": Entry(
        optax.adamw,
        adamw,
        _ADAMW,
        {"adamw": _space(_ADAMW_RANGES)},
        fused=CONVENTIONS,
        defaults={"learning_rate": 1e-3},
    ),
    "amsgrad": Entry(
        optax.amsgrad,
        amsgrad,
        _ADAM,
        {"amsgrad": _space(_ADAM_RANGES)},
        fused=CONVENTIONS,
        defaults={"learning_rate": 1e-3},
    ),
    "nadam": Entry(  # optax.nadam is this partial
        functools.partial(optax.adam, nesterov=True),
        nadam,
        _ADAM,
        {"nadam": _space(_ADAM_RANGES)},
        fused=("optax",),
        defaults={"learning_rate": 2e-3},
    ),
    "nadamw": Entry(
        functools.partial(optax.adamw, nesterov=True),
        nadamw,
        _ADAMW,
        {"nadamw": _space(_ADAMW_RANGES)},
        fused=("optax",),
        defaults={"learning_rate": 2e-3},
    ),
    "radam": Entry(
        optax.radam,
        radam,
        _ADAM,
        {"radam": _space(_ADAM_RANGES)},
        defaults={"learning_rate": 1e-3},
    ),
    "radamw": Entry(
        _optax_radamw,
        radamw,
        _ADAMW,
        {"radamw": _space(_ADAMW_RANGES)},
        defaults={"learning_rate": 1e-3},
    ),
    "adamax": Entry(
        optax.adamax,
        adamax,
        _ADAM[:-1],
        {"adamax": _space(_ADAM_RANGES)},
        fused=CONVENTIONS,
        defaults={"learning_rate": 2e-3},
    ),
    "adabelief": Entry(
        optax.adabelief,
        adabelief,
        _ADAM,
        # AdaBelief's eps sits inside the square root of the belief: smaller values.
        {"adabelief": _space(_ADAM_RANGES | {"eps": (1e-16, 1e-8, "log")})},
        missing={"pytorch": "torch.optim has no AdaBelief"},
        fused=("optax", "paper"),
        defaults={"learning_rate": 1e-3},
    ),
    "lion": Entry(
        optax.lion,
        lion,
        ("learning_rate", "b1", "b2", "weight_decay"),
        {"lion": _space(_LION_RANGES)},
        missing={"pytorch": "torch.optim has no Lion"},
        defaults={"learning_rate": 1e-4},
    ),
    "lamb": Entry(
        _optax_lamb,
        lamb,
        _ADAMW,
        {"lamb": _space(_LAMB_RANGES)},
        missing={"pytorch": "torch.optim has no LAMB"},
        defaults={"learning_rate": 1e-3},  # You et al.'s BERT: 1e-3 at batch 64k/32k
    ),
    "muon": Entry(
        optax.contrib.muon,
        muon,
        ("learning_rate", "beta", "eps", "weight_decay", "adam_b1", "adam_b2"),
        {"muon": _space(_MUON_RANGES, **_MUON_FIXED)},
        missing={"pytorch": "torch.optim.Muon refuses non-2-D params (no AdamW part)"},
        defaults={"learning_rate": 2e-2},  # Jordan et al.'s
    ),
    # Cautious (Liang et al. 2024) over AdamW and Lion: the base's spaces and defaults. optax
    # has no Cautious (an open PR): the twin is optax's base with the paper's one line.
    "cautious_adamw": Entry(
        _optax_cautious_adamw,
        cautious_adamw,
        _ADAMW,
        {"cautious_adamw": _space(_ADAMW_RANGES)},
        fused=CONVENTIONS,
        defaults={"learning_rate": 1e-3},
    ),
    "cautious_lion": Entry(
        _optax_cautious_lion,
        cautious_lion,
        ("learning_rate", "b1", "b2", "weight_decay"),
        {"cautious_lion": _space(_LION_RANGES)},
        missing={"pytorch": "torch.optim has no Lion"},
        defaults={"learning_rate": 1e-4},
    ),
    "adopt": Entry(
        optax.contrib.adopt,
        adopt,
        ("learning_rate", "b1", "b2", "eps"),
        {"adopt": _space(_ADOPT_RANGES)},
        missing={"pytorch": "torch.optim has no ADOPT"},
        defaults={"learning_rate": 1e-3},
    ),
    "ademamix": Entry(
        _optax_ademamix,
        ademamix,
        ("learning_rate", "b1", "b2", "b3", "alpha", "eps", "eps_root", "weight_decay"),
        {"ademamix": _space(_ADEMAMIX_RANGES)},
        missing={"pytorch": "torch.optim has no AdEMAMix"},
        defaults={"learning_rate": 1e-3},
    ),
    "schedule_free_adamw": Entry(
        optax.contrib.schedule_free_adamw,
        schedule_free_adamw,
        ("learning_rate", "b1", "b2", "eps", "weight_decay", "weight_lr_power"),
        {"schedule_free_adamw": _space(_SCHEDULE_FREE_RANGES, **_SCHEDULE_FREE_FIXED)},
        defaults={"learning_rate": 2.5e-3},  # Defazio et al.'s code (and optax's) default
        eval_params=transform.schedule_free_eval_params,
    ),
    # optax has neither (MARS is an open PR): no twin; proven against PyTorch and the papers.
    "mars_adamw": Entry(
        None,
        mars_adamw,
        (*_ADAMW, "gamma"),
        {"mars_adamw": _space(_MARS_RANGES)},
        defaults={"learning_rate": 3e-3},  # Yuan et al.'s GPT-2 small
    ),
    "adam_mini": Entry(
        None,
        adam_mini,
        _ADAMW,
        {"adam_mini": _space(_ADAMW_RANGES)},
        defaults={"learning_rate": 1e-3},
    ),
    "soap": Entry(  # optax has SOAP only as an open pull request: no twin
        None,
        soap,
        ("learning_rate", "b1", "b2", "eps", "weight_decay"),
        {"soap": _space(_ADAMW_RANGES, **_SOAP_FIXED)},
        missing={"pytorch": "torch.optim has no SOAP"},
        defaults={"learning_rate": 3e-3},  # Vyas et al.'s
    ),
    # The comparison baselines: optax's (implementation "optax"), not ours.
    "sgd": Entry(
        optax.sgd,
        sweepable=("learning_rate", "momentum"),
        search_spaces={  # Nesterov (Kingma & Ba's SGDNesterov) and heavy-ball momentum.
            "sgd": _space(_SGD_RANGES, nesterov=True),
            "momentum": _space(_SGD_RANGES, nesterov=False),
        },
        defaults={"learning_rate": 1e-2, "momentum": 0.9},
    ),
    "adagrad": Entry(
        optax.adagrad,
        sweepable=("learning_rate", "eps"),
        search_spaces={"adagrad": _space({"learning_rate": (1e-3, 1.0, "log")} | _WARMUP)},
        defaults={"learning_rate": 1e-2},
    ),
    "rmsprop": Entry(
        optax.rmsprop,
        sweepable=("learning_rate", "eps", "momentum"),
        search_spaces={
            "rmsprop": _space(
                {"learning_rate": (1e-5, 1e-2, "log"), "eps": (1e-10, 1e-5, "log")} | _WARMUP
            )
        },
        defaults={"learning_rate": 1e-3},
    ),
}
