"""Hyperparameter rules, checked once, where a user hands the values in.

A bad value (b1 = 1, a negative learning rate) does not fail loudly: it trains silently to NaN
or to nothing. Every hyperparameter name has one rule (`RULES`); the public constructors and
transforms check their arguments by it (`checked`), the config factory checks a config's fields
by it (`violations`), and the layers beneath trust what they are given, as optax's do. A few
hold between two names (`RELATIONS`: AdEMAMix's b3 >= b1).

Values that are not concrete numbers are left alone: schedules (callables) and traced arrays
(what `optax.inject_hyperparams` passes in under `jit`/`vmap`) cannot be inspected here.
"""

import functools
import inspect
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adamlab.optim.numerics import CONVENTIONS

Rule = Callable[[Any], str | None]  # a value -> None if allowed, else what is allowed


def _concrete(value: Any) -> np.ndarray | None:
    """`value` as a float64 array (NaN if it is no number), or None for a schedule or a tracer."""
    if callable(value) or isinstance(value, jax.core.Tracer):
        return None
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return np.asarray(np.nan)


def interval(low: float, high: float = math.inf, *, open_low: bool = False) -> Rule:
    """Every element finite and in [low, high) ((low, high) with `open_low`)."""
    upper = "inf" if math.isinf(high) else f"{high:g}"
    allowed = f"in {'(' if open_low else '['}{low:g}, {upper})"

    def rule(value):
        array = _concrete(value)
        if array is None:
            return None
        above = array > low if open_low else array >= low
        return None if np.all(np.isfinite(array) & above & (array < high)) else allowed

    return rule


def _optional(rule: Rule) -> Rule:
    return lambda value: None if value is None else rule(value)


def _learning_rate(value: Any) -> str | None:
    if value is None:
        return "a positive float or an optax schedule"
    return interval(0.0, open_low=True)(value)


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool | np.bool_) else "True or False"


def _dtype(value: Any) -> str | None:
    """A moment may be stored in any floating dtype (e.g. bfloat16 to save memory)."""
    try:
        floating = value is None or jnp.issubdtype(jnp.dtype(value), jnp.floating)
    except TypeError:
        floating = False
    return None if floating else "None or a floating dtype such as jnp.bfloat16"


def _mask(value: Any) -> str | None:
    """None, a callable, or a pytree of booleans (a prefix of the params)."""
    if value is None or callable(value):
        return None
    if all(np.asarray(leaf).dtype == np.bool_ for leaf in jax.tree.leaves(value)):
        return None
    return "None, a callable, or a pytree of booleans"


def _steps(value: Any) -> str | None:
    return None if is_int(value, 1) else "an int >= 1 (a number of steps)"


def _count(what: str) -> Rule:
    """A positive int, or, as `inject_hyperparams` holds it, a positive int array (a tracer
    under jit): Muon's Newton-Schulz steps (0 steps would not orthogonalise), SOAP's
    refresh period and largest rotated axis."""

    def rule(value):
        array = _concrete(value)
        integral = is_int(value, 1) or (
            isinstance(value, np.ndarray | jax.Array)
            and jnp.issubdtype(value.dtype, jnp.integer)
            and array is not None
            and np.all(array >= 1)
        )
        if integral or isinstance(value, jax.core.Tracer):
            return None
        return f"a positive int ({what})"

    return rule


def _callable(value: Any) -> str | None:
    return None if callable(value) else "a callable of the step count"


def _convention(value: Any) -> str | None:
    return None if value in CONVENTIONS else f"one of {', '.join(map(repr, CONVENTIONS))}"


def _newton_schulz_coefficients(value: Any) -> str | None:
    """Muon's quintic (a, b, c): three finite numbers."""
    array = _concrete(value)
    if array is None or (array.shape == (3,) and np.all(np.isfinite(array))):
        return None
    return "three finite numbers (a, b, c), such as (3.4445, -4.7750, 2.0315)"


_DECAY = interval(0.0, 1.0)  # at 1 an average never moves and 1 - b^t divides by zero
_NON_NEGATIVE = interval(0.0)
RULES: dict[str, Rule] = {
    "learning_rate": _learning_rate,
    "b1": _DECAY,
    "b2": _DECAY,
    "beta": _DECAY,  # Muon's momentum
    "adam_b1": _DECAY,  # Muon's AdamW, for the non-matrix leaves
    "adam_b2": _DECAY,
    "adam_eps_root": _NON_NEGATIVE,
    "adam_weight_decay": _NON_NEGATIVE,
    "adam_learning_rate": _optional(_learning_rate),
    "ns_steps": _count("Newton-Schulz steps; the paper's 5"),
    "ns_coeffs": _newton_schulz_coefficients,
    "consistent_rms": _optional(interval(0.0, open_low=True)),
    "eps": _NON_NEGATIVE,
    "eps_root": _NON_NEGATIVE,
    "weight_decay": _NON_NEGATIVE,
    "l2": _NON_NEGATIVE,
    "momentum_decay": _optional(_NON_NEGATIVE),
    "threshold": _optional(interval(4.0)),  # RAdam's rho_t; below 4 r_t is not real
    "caution_eps": interval(0.0, open_low=True),
    "warmup_fraction": _optional(interval(0.0, 1.0)),
    "mu_dtype": _dtype,
    "nu_dtype": _dtype,
    "mask": _mask,
    "weight_decay_mask": _mask,  # Muon's name for it (optax's)
    "convention": _convention,
    "nesterov": _boolean,
    "fused": _boolean,
    "bias_correction_mu": _optional(_boolean),
    "bias_correction_nu": _optional(_boolean),
    "b3": _DECAY,  # AdEMAMix's slow EMA (or a schedule); at least b1 (RELATIONS)
    "alpha": _NON_NEGATIVE,  # AdEMAMix's weight of the slow EMA (or a schedule)
    "alpha_warmup": _optional(_steps),
    "b3_warmup": _optional(_steps),
    "use_clipping": _boolean,  # ADOPT's and MARS's own clipping step, on or off
    "gamma": _NON_NEGATIVE,  # MARS's weight of the gradient correction
    "clip_value_fn": _optional(_callable),
    "warmup_steps": _optional(_steps),  # Schedule-Free's linear warmup
    "weight_lr_power": _NON_NEGATIVE,  # Schedule-Free's averaging weights gamma^p
    "state_dtype": _dtype,  # Schedule-Free's z
    "shampoo_beta": _optional(_DECAY),  # SOAP's decay of L and R; None: b2
    "precondition_frequency": _count(
        "steps between two refreshes of the eigenbases; the paper's 10"
    ),
    "max_precond_dim": _count("the longest axis rotated; the paper's 10000"),
}


def _at_least_b1(b3: Any, b1: Any) -> str | None:
    """AdEMAMix's slow EMA decays no faster than its fast one: b3 >= b1."""
    b3_array, b1_array = _concrete(b3), _concrete(b1)
    if b3_array is None or b1_array is None or np.all(b3_array >= b1_array):
        return None
    return f"in [b1, 1) = [{float(np.max(b1_array)):g}, 1) (the slow EMA's decay)"


def _constant(warmup: Any, value: Any) -> str | None:
    """A warmup schedules a constant: it cannot be combined with a schedule."""
    if warmup is None or not callable(value):
        return None
    return "None when the value it warms up is a schedule (give one or the other)"


# Rules between two hyperparameters: (name, other) -> rule(value, other's value), checked
# when both are given; a refusal names `name`.
RELATIONS: dict[tuple[str, str], Callable[[Any, Any], str | None]] = {
    ("b3", "b1"): _at_least_b1,
    ("alpha_warmup", "alpha"): _constant,
    ("b3_warmup", "b3"): _constant,
}


def violations(arguments: Mapping[str, Any]) -> Iterator[tuple[str, Any, str]]:
    """(name, value, what is allowed) for every argument its rule refuses."""
    for name, value in arguments.items():
        allowed = RULES[name](value) if name in RULES else None
        if allowed is not None:
            yield name, value, allowed
    for (name, other), relation in RELATIONS.items():
        if name in arguments and other in arguments:
            allowed = relation(arguments[name], arguments[other])
            if allowed is not None:
                yield name, arguments[name], allowed


def check(owner: str, arguments: Mapping[str, Any]) -> None:
    """Raises ValueError "owner: name must be allowed, got value" for the first refused one."""
    for name, value, allowed in violations(arguments):
        raise ValueError(f"{owner}: {name} must be {allowed}, got {value!r}")


def checked(function: Callable, check_arguments: Callable | None = None) -> Callable:
    """`function` that checks its bound arguments first (default: `check` by its name).

    ``.unchecked`` is `function` itself, for the callers beneath a boundary that checked.
    """
    signature = inspect.signature(function)
    check_arguments = check_arguments or functools.partial(check, function.__name__)

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        check_arguments(bound.arguments)
        return function(*args, **kwargs)

    wrapper.unchecked = function
    return wrapper


def is_int(value: Any, low: int) -> bool:
    """An int (not a bool) >= `low`."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def check_optax_only(owner: str, nesterov: bool, convention: str, authors: str) -> None:
    """Nesterov momentum, where only optax has it: `authors` have no such variant."""
    if nesterov and convention != "optax":
        raise ValueError(
            f"{owner}: nesterov=True exists only for convention='optax' ({authors} have no "
            f"Nesterov variant), got {convention!r}"
        )


def check_unset(owner: str, name: str, value: Any, convention: str, why: str) -> None:
    """An option of the optax convention must stay None (= the convention's own) otherwise."""
    if value is not None:
        raise ValueError(
            f"{owner}: {name}={value!r} cannot be combined with convention={convention!r} "
            f"({why}); leave it unset"
        )
