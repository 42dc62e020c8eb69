"""adamlab.optim: the Adam family written from first principles as optax transformations.

Optimizers: `adam`, `adamw`, `amsgrad`, `nadam`, `nadamw`, `radam`, `adamax`, `adabelief`
(optax-compatible signatures), their building blocks (`scale_by_*`, `add_decayed_weights`,
`scale_by_learning_rate`), and by name: `create(name, **hparams)` for ours,
`reference(name, **hparams)` for the optax twin.
"""

from adamlab.optim.alias import (
    adabelief,
    adam,
    adamax,
    adamw,
    amsgrad,
    nadam,
    nadamw,
    radam,
)
from adamlab.optim.registry import create, hyperparameters, names, reference
from adamlab.optim.transform import (
    ScaleByAdamState,
    ScaleByAmsgradState,
    ScaleByScheduleState,
    add_decayed_weights,
    scale_by_adam,
    scale_by_adamax,
    scale_by_amsgrad,
    scale_by_belief,
    scale_by_learning_rate,
    scale_by_radam,
)

__all__ = [
    "ScaleByAdamState",
    "ScaleByAmsgradState",
    "ScaleByScheduleState",
    "adabelief",
    "adam",
    "adamax",
    "adamw",
    "add_decayed_weights",
    "amsgrad",
    "create",
    "hyperparameters",
    "nadam",
    "nadamw",
    "names",
    "radam",
    "reference",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_amsgrad",
    "scale_by_belief",
    "scale_by_learning_rate",
    "scale_by_radam",
]
