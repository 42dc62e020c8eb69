"""Optimizers by name, from the one table (`alias.TABLE`): ours (`create`), optax's (`reference`).

Experiments, configs and the CLI name optimizers as strings; `create` builds ours and
`reference` its optax twin with the same hyperparameters, so that every comparison of ours
against optax is a one-word switch. The twins exist for the optax convention only; the optax
baselines (SGD, AdaGrad, RMSProp) have a twin and nothing of ours; MARS and Adam-mini, which
optax lacks, have ours and no twin.
"""

import inspect
from typing import Any

import optax

from adamlab.optim import alias
from adamlab.optim.alias import Entry

__all__ = ["Entry", "config_fields", "create", "entry", "hyperparameters", "names", "reference"]


def names(implementation: str = "ours") -> tuple[str, ...]:
    """The names with an implementation: "ours" (`create`) or "optax" (`reference`: every
    name, the baselines last)."""
    return tuple(n for n, e in alias.TABLE.items() if implementation == "optax" or e.ours)


def entry(name: str, implementation: str = "optax") -> Entry:
    """The table entry of `name`; ValueError listing the valid names if it has no
    `implementation`."""
    valid = names(implementation)
    if name not in valid:
        raise ValueError(f"unknown optimizer {name!r}; valid names are: {', '.join(valid)}")
    return alias.TABLE[name]


def hyperparameters(name: str) -> tuple[str, ...]:
    """The keyword arguments optimizer `name` takes: ours' (the contract for its twin too: optax's
    nadam would take nesterov=False and quietly become Adam), or the baseline's."""
    found = entry(name)
    return tuple(inspect.signature(found.ours or found.twin).parameters)


def config_fields() -> dict[str, type]:
    """Every hyperparameter a config may set, over the whole table, with its type: those
    whose default is a number or a bool, or None where the annotation says a number (a
    schedule, a mask or a dtype is set in code). A
    config declares them all (as None: the optimizer's default), so that a new optimizer's
    hyperparameters are settable from the command line with no config edited."""
    kinds = {kind.__name__: kind for kind in (bool, int, float)}
    fields: dict[str, type] = {}
    for found in alias.TABLE.values():
        for name, p in inspect.signature(found.ours or found.twin).parameters.items():
            kind = type(p.default) if type(p.default) in (bool, int, float) else None
            if p.default is None:  # annotated `int | None`: a number
                kind = kinds.get(str(p.annotation).removesuffix(" | None"))
            if kind is not None and name not in fields:
                fields[name] = kind
    return fields


def _build(factory: Any, name: str, hparams: dict[str, Any]) -> optax.GradientTransformation:
    accepted = hyperparameters(name)
    unknown = sorted(set(hparams) - set(accepted))
    if unknown:
        raise ValueError(
            f"{name} got unknown hyperparameter(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(accepted)}"
        )
    if "learning_rate" not in hparams:
        raise ValueError(f"{name} needs a learning_rate (a positive float or an optax schedule)")
    return factory(**hparams)


def create(name: str, **hparams: Any) -> optax.GradientTransformation:
    """Builds adamlab's own optimizer `name` (one of `names()`) with optax-style hparams.

    >>> tx = create("adamw", learning_rate=3e-3, weight_decay=1e-2)
    >>> fast = create("adamw", learning_rate=3e-3, weight_decay=1e-2, fused=True)
    """
    return _build(entry(name, "ours").ours, name, hparams)


def reference(name: str, **hparams: Any) -> optax.GradientTransformation:
    """Builds optax's implementation of `name`: the twin that `create(name, ...)` must match.

    Only the optax convention has a twin; a hyperparameter given as None means the default,
    as in `create` (ours take None for "the convention's default": radam's threshold).
    """
    if hparams.pop("fused", False):
        raise ValueError(f"reference({name!r}) is optax's implementation: it has no fused variant")
    convention = hparams.pop("convention", "optax")
    if convention != "optax":
        raise ValueError(
            f"reference({name!r}) is optax's implementation: it has convention='optax' only, "
            f"got {convention!r}"
        )
    twin = entry(name).twin
    if twin is None:
        with_twin = ", ".join(n for n in names("optax") if alias.TABLE[n].twin)
        raise ValueError(f"{name} has no optax twin (optax has none); twins exist for {with_twin}")
    hparams = {k: v for k, v in hparams.items() if v is not None or k == "learning_rate"}
    return _build(twin, name, hparams)
