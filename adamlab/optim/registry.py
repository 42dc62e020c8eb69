"""Optimizers by name: ours (`create`) and their optax twins (`reference`).

Experiments, configs and the CLI name optimizers as strings; this is the one place where a
name becomes a `GradientTransformation`. `reference` exists so that every comparison of ours
against optax is a one-word switch with identical hyperparameters.

`create(name, convention=..., **hparams)` picks whose numerics to follow ("optax", the
default, "pytorch" or "paper"; docs/conventions.md); the config field `optimizer.convention`
reaches it. The optax twins exist for the optax convention only.
"""

import functools
import inspect
from collections.abc import Callable
from typing import Any

import optax

from adamlab.optim import alias

_OURS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adam": alias.adam,
    "adamw": alias.adamw,
    "amsgrad": alias.amsgrad,
    "nadam": alias.nadam,
    "nadamw": alias.nadamw,
    "radam": alias.radam,
    "radamw": alias.radamw,
    "adamax": alias.adamax,
    "adabelief": alias.adabelief,
}


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


_REFERENCE: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adam": optax.adam,
    "adamw": optax.adamw,
    "amsgrad": optax.amsgrad,
    "nadam": functools.partial(optax.adam, nesterov=True),
    "nadamw": functools.partial(optax.adamw, nesterov=True),
    "radam": optax.radam,
    "radamw": _optax_radamw,
    "adamax": optax.adamax,
    "adabelief": optax.adabelief,
}


def names() -> tuple[str, ...]:
    """The optimizer names that `create` and `reference` accept."""
    return tuple(_OURS)


def hyperparameters(name: str) -> tuple[str, ...]:
    """The keyword arguments that optimizer `name` accepts (the same for ours and optax's)."""
    return tuple(inspect.signature(_lookup(_OURS, name)).parameters)


def _lookup(table: dict[str, Callable], name: str) -> Callable:
    if name not in table:
        raise ValueError(f"unknown optimizer {name!r}; valid names are: {', '.join(table)}")
    return table[name]


def _build(table: dict[str, Callable], name: str, hparams: dict[str, Any]):
    factory = _lookup(table, name)
    # Ours' signature is the contract for both tables: optax's nadam is adam with a default
    # nesterov=True that would otherwise accept nesterov=False and quietly become Adam.
    parameters = inspect.signature(_OURS[name]).parameters
    unknown = sorted(set(hparams) - set(parameters))
    if unknown:
        raise ValueError(
            f"{name} got unknown hyperparameter(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(parameters)}"
        )
    if "learning_rate" not in hparams:
        raise ValueError(f"{name} needs a learning_rate (a positive float or an optax schedule)")
    if table is _REFERENCE:
        # Ours take None for "the convention's default" (radam's threshold, amsgrad's bias
        # corrections); optax's own defaults are the optax convention's.
        hparams = {k: v for k, v in hparams.items() if v is not None or k == "learning_rate"}
    return factory(**hparams)


def create(name: str, **hparams: Any) -> optax.GradientTransformation:
    """Builds adamlab's own optimizer `name` (one of `names()`) with optax-style hparams.

    ``fused=True`` builds its fused variant (`adamlab.optim.fused`; same state and numbers
    within float32 rounding, fewer divisions per element).

    >>> tx = create("adamw", learning_rate=3e-3, weight_decay=1e-2)
    >>> fast = create("adamw", learning_rate=3e-3, weight_decay=1e-2, fused=True)
    """
    return _build(_OURS, name, hparams)


def reference(name: str, **hparams: Any) -> optax.GradientTransformation:
    """Builds optax's implementation of `name`: the twin that `create(name, ...)` must match.

    Nadam and NadamW are optax's Adam/AdamW with ``nesterov=True`` (optax.nadam is the same
    partial); RAdamW is optax's RAdam rescaling chained like `optax.adamw`. Only the optax
    convention has a twin; a hyperparameter given as None means the default, as in `create`.
    """
    if hparams.pop("fused", False):
        raise ValueError(f"reference({name!r}) is optax's implementation: it has no fused variant")
    convention = hparams.pop("convention", "optax")
    if convention != "optax":
        raise ValueError(
            f"reference({name!r}) is optax's implementation: it has convention='optax' only, "
            f"got {convention!r}"
        )
    return _build(_REFERENCE, name, hparams)
