"""The XLA program of one optimizer step, in a canonical text form that can be compared.

Two optimizers whose steps lower to the same canonical HLO run the same operations in the
same order on every backend: they are numerically identical and equally fast by construction.
This is how we show that our from-scratch transforms cost nothing over optax's.
"""

import re
from typing import Any

import jax
import optax

_DEFINITION = re.compile(r"^\s*(?:ROOT\s+)?([A-Za-z_][\w.\-]*)\s*=", re.M)
_TOKEN = re.compile(r"[A-Za-z_][\w.\-]*")


def _canonicalise(hlo: str) -> str:
    """Renames every HLO value to v0, v1, ... in order of definition; drops debug metadata."""
    hlo = re.sub(r",\s*metadata=\{[^}]*\}", "", hlo)
    hlo = re.sub(r"^HloModule \S+", "HloModule", hlo, flags=re.M)
    names: dict[str, str] = {}
    for name in _DEFINITION.findall(hlo):
        names.setdefault(name, f"v{len(names)}")
    return _TOKEN.sub(lambda m: names.get(m.group(0), m.group(0)), hlo)


def step_program(tx: optax.GradientTransformation, params: Any) -> str:
    """Canonical unoptimised HLO of `params, state <- apply_updates(tx.update(...))`.

    Args:
      tx: the optimizer.
      params: example parameters (shapes and dtypes matter, values do not); the gradients
        are taken to have the same structure.
    """

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    lowered = jax.jit(step).lower(params, tx.init(params), params)
    return _canonicalise(lowered.as_text(dialect="hlo", debug_info=False))
