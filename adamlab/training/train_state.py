"""The training state: one plain pytree of arrays (no methods, no optimizer object).

Everything the step needs and the checkpointer saves is here and nothing else: the step count,
the parameters, BatchNorm statistics (an empty dict for models without BatchNorm), the optimizer
state and the base random key. The key is stored as raw `jax.random.key_data` (uint32) so the
state holds arrays only (orbax saves it as-is); steps wrap it back with
`jax.random.wrap_key_data` and derive per-step keys with `fold_in(rng, step)`, so the key never
needs to be updated and a resumed run draws the same dropout masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax


@flax.struct.dataclass
class TrainState:
    """State of a run. `step` is int32 []; `rng` is uint32 key data (see module docstring)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array


def _init(model: nn.Module, key: jax.Array, dummy: jax.Array) -> dict[str, Any]:
    return model.init(key, dummy, train=False)


# jit: one compiled init instead of every initializer op by op; the model is a static (hashable)
# argument, so building the same model's state again reuses the compiled init.
_init_jitted = jax.jit(_init, static_argnums=0)
# On CPU, LLVM's optimisation level 1: the initializers' random-bit and inverse-erf code is most
# of a cold run's init compile, which is faster so, to the same bits (elementwise code;
# tests/test_models.py holds every shipped model to it; docs/performance.md measures it).
_init_jitted_cpu = jax.jit(
    _init, static_argnums=0, compiler_options={"xla_backend_optimization_level": 1}
)


def _init_variables(model: nn.Module, key: jax.Array, dummy: jax.Array) -> dict[str, Any]:
    # Compiler options are a top-level program's: under a trace (eval_shape, an enclosing
    # jit) the init is part of that program.
    top_level_on_cpu = jax.default_backend() == "cpu" and not isinstance(key, jax.core.Tracer)
    return (_init_jitted_cpu if top_level_on_cpu else _init_jitted)(model, key, dummy)


def as_key(rng: jax.Array | int) -> jax.Array:
    """A typed PRNG key from a typed key, raw uint32 key data or an int seed."""
    if isinstance(rng, int):
        return jax.random.key(rng)
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return rng
    return jax.random.wrap_key_data(rng)


def create_train_state(
    rng_key: jax.Array | int,
    model: nn.Module,
    tx: optax.GradientTransformation,
    image_shape: Sequence[int],
) -> TrainState:
    """Initialises parameters, BatchNorm statistics and optimizer state at step 0.

    Args:
      rng_key: typed key (`jax.random.key(seed)`), its key data, or an int seed. It is split into
        an initialisation key and the state's base key (used for dropout).
      model: a linen module called as `model(x, train=...)`.
      tx: the optimizer.
      image_shape: (H, W, C) of one example.
    """
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (height, width, channels), got {image_shape}")
    init_key, state_key = jax.random.split(as_key(rng_key))
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    variables = _init_variables(model, init_key, dummy)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        rng=jax.random.key_data(state_key),
    )


def param_count(params: Any) -> int:
    """Number of scalars in a parameter pytree."""
    return int(sum(np.prod(np.shape(x), dtype=np.int64) for x in jax.tree.leaves(params)))
