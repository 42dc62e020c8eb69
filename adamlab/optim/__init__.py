"""adamlab.optim: the Adam family written from first principles as optax transformations.

Optimizers: `adam`, `adamw`, `amsgrad`, `nadam`, `nadamw`, `radam`, `radamw`, `adamax`,
`adabelief` (optax-compatible signatures), their building blocks (`scale_by_*`,
`add_decayed_weights`, `subtract_decayed_weights`, `scale_by_learning_rate`), and by name:
`create(name, convention=..., **hparams)` for ours, `reference(name, **hparams)` for the optax
twin. Every optimizer takes ``convention="optax" | "pytorch" | "paper"`` (`CONVENTIONS`;
docs/conventions.md) and ``fused=True`` for its fused variant (`adamlab.optim.fused`: the same
rule and state with one division per element). `inject_hyperparams` is optax's with float32
hyperparameters. `update_and_apply(tx, grads, state, params)` is ``tx.update`` then
``optax.apply_updates``, in one pass on a C++ CPU kernel for ``adam``, ``adamw``, ``nadam``
and ``nadamw`` with ``fused=True`` (`adamlab.optim.one_pass`).
"""

from adamlab.optim.alias import (
    adabelief,
    adam,
    adamax,
    adamw,
    amsgrad,
    inject_hyperparams,
    nadam,
    nadamw,
    radam,
    radamw,
)
from adamlab.optim.numerics import CONVENTIONS
from adamlab.optim.one_pass import update_and_apply
from adamlab.optim.registry import create, hyperparameters, names, reference
from adamlab.optim.transform import (
    ScaleByAdamState,
    ScaleByAmsgradState,
    ScaleByNadamState,
    ScaleByScheduleState,
    add_decayed_weights,
    scale_by_adam,
    scale_by_adamax,
    scale_by_amsgrad,
    scale_by_belief,
    scale_by_learning_rate,
    scale_by_radam,
    subtract_decayed_weights,
)

__all__ = [
    "CONVENTIONS",
    "ScaleByAdamState",
    "ScaleByAmsgradState",
    "ScaleByNadamState",
    "ScaleByScheduleState",
    "adabelief",
    "adam",
    "adamax",
    "adamw",
    "add_decayed_weights",
    "amsgrad",
    "create",
    "hyperparameters",
    "inject_hyperparams",
    "nadam",
    "nadamw",
    "names",
    "radam",
    "radamw",
    "reference",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_amsgrad",
    "scale_by_belief",
    "scale_by_learning_rate",
    "scale_by_radam",
    "subtract_decayed_weights",
    "update_and_apply",
]
