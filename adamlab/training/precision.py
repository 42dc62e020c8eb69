"""Mixed precision: which dtype parameters are stored, computed and returned in.

A `Policy` in the style of DeepMind's jmp: float32 *master* parameters live in the train state
and in the optimizer; the train step casts a copy to the compute dtype (bfloat16) for the forward
and backward pass; the gradient comes back through that cast as float32 (the transpose of a cast
is a cast back), so the optimizer adds float32 updates to float32 weights and small updates are
not rounded away (bfloat16 has 8 mantissa bits: 1 + 2**-9 == 1). Logits are returned in float32
so the softmax cross-entropy is computed in float32.

bfloat16 has float32's exponent range, so no loss scaling is needed (unlike float16).

With the optimizer's `mu_dtype="bfloat16"` Adam's first moment is stored in bfloat16 as well
(a smoothed gradient; its rounding error is far below its own noise), while the second moment
stays float32 (it is squared gradients, whose small values bfloat16 would flush). Bytes per
parameter: float32 Adam 4 (params) + 4 (mu) + 4 (nu) = 12; with a bfloat16 mu, 10.

Where it applies: adamlab's models take a `dtype` and cast each layer's float32 parameters to it
themselves (Flax's `dtype` vs `param_dtype`), keeping BatchNorm statistics and scales in float32,
which is what `model.dtype="bfloat16"` in a config does (the train loop passes no policy). A
`Policy` given to `make_engine(..., policy=...)` / `make_train_step(..., policy=...)` casts *all*
floating parameters before `model.apply`: for models without their own `dtype` handling.

    policy = Policy(compute_dtype=jnp.bfloat16)
    logits = model.apply(policy.cast_to_compute(params), x)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

DTYPES: dict[str, Any] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def as_dtype(name: Any, *, what: str = "dtype") -> jnp.dtype:
    """`jnp.dtype` of a name in DTYPES (or a dtype); ValueError naming what is allowed."""
    key = name if isinstance(name, str) else getattr(np.dtype(name), "name", None)
    if key not in DTYPES:
        raise ValueError(f"{what}={name!r} is not supported; allowed: {', '.join(DTYPES)}")
    return jnp.dtype(DTYPES[key])


def _cast_floating(tree: Any, dtype: Any) -> Any:
    """Casts the floating-point leaves of `tree` to `dtype`; integer/bool leaves unchanged."""

    def cast(x):
        if jnp.issubdtype(jnp.result_type(x), jnp.floating) and jnp.result_type(x) != dtype:
            return jnp.asarray(x).astype(dtype)
        return x

    return jax.tree.map(cast, tree)


@dataclasses.dataclass(frozen=True)
class Policy:
    """Dtypes of parameters (stored), computation (forward/backward) and outputs (logits)."""

    param_dtype: Any = jnp.float32
    compute_dtype: Any = jnp.float32
    output_dtype: Any = jnp.float32

    @property
    def is_mixed(self) -> bool:
        """Whether the step computes in another dtype than the parameters are stored in."""
        return jnp.dtype(self.compute_dtype) != jnp.dtype(self.param_dtype)

    def cast_to_compute(self, tree: Any) -> Any:
        return _cast_floating(tree, jnp.dtype(self.compute_dtype))

    def cast_to_param(self, tree: Any) -> Any:
        return _cast_floating(tree, jnp.dtype(self.param_dtype))

    def cast_to_output(self, tree: Any) -> Any:
        return _cast_floating(tree, jnp.dtype(self.output_dtype))


def policy_from_config(config: Any) -> Policy:
    """Float32 master parameters and outputs; computation in `config.model.dtype`."""
    compute = as_dtype(config.model.get("dtype", "float32"), what="model.dtype")
    return Policy(param_dtype=jnp.float32, compute_dtype=compute, output_dtype=jnp.float32)


def tree_bytes(tree: Any) -> int:
    """Total bytes of the array leaves of `tree` (shapes and dtypes; works on eval_shape)."""
    leaves = jax.tree.leaves(tree)
    return int(sum(np.prod(x.shape, dtype=np.int64) * np.dtype(x.dtype).itemsize for x in leaves))
