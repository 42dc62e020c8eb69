"""adamlab.optim: the Adam family and its successors, written from the papers as optax transforms.

The optimizers (`names()`: `adam`, `adamw`, `nadam`, ...) have optax-compatible signatures
(`alias.py`), their building blocks are the `scale_by_*` transforms and the weight decays
(`transform.py`), and by name (`registry.py`, over the one table `alias.TABLE`)
`create(name, **hparams)` builds ours, `reference(name, **hparams)` the optax twin. Every
optimizer takes ``convention="optax" | "pytorch" | "paper"`` (`CONVENTIONS`;
docs/conventions.md), and those that bias-correct ``fused=True`` (the corrections as scalar
multiplications). `inject_hyperparams` is optax's with float32 hyperparameters.
`update_and_apply(tx, grads, state, params)` is ``tx.update`` then ``optax.apply_updates``, in
one pass on a C++ CPU kernel for a fused Adam(W)/Nadam(W) (`one_pass.py`).
"""

from adamlab.optim import alias, registry, transform
from adamlab.optim.alias import *  # noqa: F403 - every public constructor (alias.__all__)
from adamlab.optim.numerics import CONVENTIONS
from adamlab.optim.one_pass import update_and_apply
from adamlab.optim.registry import create, hyperparameters, names, reference
from adamlab.optim.transform import *  # noqa: F403 - the transforms and states (transform.__all__)

__all__ = [
    *alias.__all__,
    *transform.__all__,
    "CONVENTIONS",
    "create",
    "hyperparameters",
    "names",
    "reference",
    "registry",
    "update_and_apply",
]
