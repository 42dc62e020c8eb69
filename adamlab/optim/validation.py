"""Hyperparameter checks run when an optimizer is constructed.

A bad value (b1 = 1, a negative learning rate) would not fail loudly: it trains silently to
NaN or to nothing. So every alias checks its arguments up front and raises a `ValueError` that
names the optimizer, the parameter, the value and the allowed range.

Values that are not concrete numbers are left alone: schedules (callables) and traced arrays
(what `optax.inject_hyperparams` passes in under `jit`/`vmap`) cannot be inspected here.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _concrete(value: Any) -> np.ndarray | None:
    """`value` as a numpy array if it is a concrete number, else None (tracer, callable...)."""
    if callable(value) or isinstance(value, jax.core.Tracer):
        return None
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None


def _fail(optimizer: str, name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{optimizer}: {name} must be {allowed}, got {value!r}")


def check_range(
    optimizer: str,
    name: str,
    value: Any,
    *,
    low: float,
    high: float = float("inf"),
    low_inclusive: bool = True,
    high_inclusive: bool = False,
) -> None:
    """Raises ValueError unless every element of a concrete `value` lies in the interval."""
    array = _concrete(value)
    if array is None:
        return
    above_low = array >= low if low_inclusive else array > low
    below_high = array <= high if high_inclusive else array < high
    if not (np.all(np.isfinite(array)) and np.all(above_low & below_high)):
        left = "[" if low_inclusive else "("
        right = "]" if high_inclusive else ")"
        upper = "inf" if np.isinf(high) else f"{high:g}"
        _fail(optimizer, name, value, f"in {left}{low:g}, {upper}{right}")


def check_learning_rate(optimizer: str, learning_rate: Any) -> None:
    """A learning rate is a positive number or a schedule (a callable of the step)."""
    if learning_rate is None:
        _fail(optimizer, "learning_rate", learning_rate, "a positive float or an optax schedule")
    check_range(optimizer, "learning_rate", learning_rate, low=0.0, low_inclusive=False)


def check_decay(optimizer: str, name: str, value: Any) -> None:
    """Moment decay rates live in [0, 1): at 1 the average never moves and bias correction
    divides by zero."""
    check_range(optimizer, name, value, low=0.0, high=1.0)


def check_non_negative(optimizer: str, name: str, value: Any) -> None:
    check_range(optimizer, name, value, low=0.0)


def check_mu_dtype(optimizer: str, mu_dtype: Any) -> None:
    """The first moment may be stored in any floating dtype (e.g. bfloat16 to save memory)."""
    if mu_dtype is None:
        return
    try:
        dtype = jnp.dtype(mu_dtype)
    except TypeError:
        dtype = None
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        _fail(optimizer, "mu_dtype", mu_dtype, "None or a floating dtype such as jnp.bfloat16")


def check_bool(optimizer: str, name: str, value: Any) -> None:
    if not isinstance(value, bool | np.bool_):
        _fail(optimizer, name, value, "True or False")


def check_mask(optimizer: str, mask: Any) -> None:
    """A mask is None, a pytree of booleans (a prefix of the params) or a callable."""
    if mask is None or isinstance(mask, Callable):
        return
    leaves = jax.tree.leaves(mask)
    if not all(np.asarray(leaf).dtype == np.bool_ for leaf in leaves):
        _fail(optimizer, "mask", mask, "None, a callable, or a pytree of booleans")


def check_convention(
    optimizer: str, convention: Any, missing: dict[str, str] | None = None
) -> None:
    """`convention` is one of "optax", "pytorch", "paper" and exists for this optimizer.

    Args:
      missing: conventions that do not exist for `optimizer`, each with the reason (e.g.
        {"pytorch": "torch.optim has no AdaBelief"}).
    """
    from adamlab.optim.numerics import CONVENTIONS

    if convention not in CONVENTIONS:
        _fail(optimizer, "convention", convention, f"one of {', '.join(map(repr, CONVENTIONS))}")
    if missing and convention in missing:
        available = [c for c in CONVENTIONS if c not in missing]
        raise ValueError(
            f"{optimizer}: convention={convention!r} does not exist: {missing[convention]}; "
            f"use {' or '.join(map(repr, available))}"
        )


def check_unset(optimizer: str, name: str, value: Any, convention: str, why: str) -> None:
    """An option of the optax convention must stay None (= the convention's own) otherwise."""
    if value is not None:
        raise ValueError(
            f"{optimizer}: {name}={value!r} cannot be combined with convention={convention!r} "
            f"({why}); leave it unset"
        )
