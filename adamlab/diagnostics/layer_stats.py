r"""Per-layer statistics of one train step, from its gradients, updates and optimizer state.

    stats = make_layer_stats(AdamSpec.from_hparams("adam", {"b2": 0.999}))
    values = stats(grads, updates, params, opt_state, learning_rate)  # {name: scalar}

Called inside the jitted train step on the steps that log it (nothing recomputed); names are
"<leaf path>/<statistic>". docs/internals.md lists the statistics.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from adamlab import optim

QUANTILES = (0.05, 0.5, 0.95)
NORMS = ("param_norm", "grad_norm", "update_norm", "update_param_ratio")
ADAM_STATS = ("step_q05", "step_q50", "step_q95", "eps_fraction")


@dataclasses.dataclass(frozen=True)
class AdamSpec:
    """What the statistics need to know of the optimizer beyond its state."""

    name: str
    b2: float = 0.999
    eps: float = 1e-8
    convention: str = "optax"
    threshold: float | None = None  # RAdam's; None: the convention's (5; 4 for "paper").
    base_learning_rate: float = 1.0  # The config's peak: a swept peak scales the schedule.

    @classmethod
    def from_hparams(cls, name: str, hparams: dict[str, Any], base_learning_rate: float = 1.0):
        """The spec of optimizer `name` with `hparams` (missing ones: the optimizer's default)."""
        defaults = {}
        if name in optim.names():
            signature = inspect.signature(getattr(optim, name))
            defaults = {
                k: p.default for k, p in signature.parameters.items() if p.default is not p.empty
            }
        merged = defaults | {k: v for k, v in hparams.items() if v is not None}
        fields = {f.name for f in dataclasses.fields(cls)} - {"name", "base_learning_rate"}
        kwargs = {k: merged[k] for k in fields if merged.get(k) is not None}
        return cls(name=name, base_learning_rate=base_learning_rate, **kwargs)

    @property
    def adam_family(self) -> bool:
        return self.name in optim.names()


def find_state(tree: Any, fields: tuple[str, ...]) -> Any | None:
    """The first NamedTuple in `tree` (breadth first) that has every one of `fields`."""
    stack = [tree]
    while stack:
        node = stack.pop(0)
        if hasattr(node, "_fields") and set(fields) <= set(node._fields):
            return node
        if isinstance(node, tuple | list):
            stack.extend(node)
        elif isinstance(node, dict):
            stack.extend(node.values())
    return None


def hyperparameter(opt_state: Any, name: str, default: float) -> jax.Array:
    """A swept hyperparameter from the inject_hyperparams state, else `default`."""
    injected = find_state(opt_state, ("hyperparams",))
    if injected is not None and name in injected.hyperparams:
        return jnp.asarray(injected.hyperparams[name], jnp.float32)
    return jnp.asarray(default, jnp.float32)


def _named_leaves(tree: Any) -> dict[str, jax.Array]:
    return {
        jax.tree_util.keystr(p, simple=True, separator="/"): x
        for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def _norms(grads, updates, params) -> dict[str, jax.Array]:
    out = {}
    for (name, p), g, u in zip(
        _named_leaves(params).items(),
        jax.tree.leaves(grads),
        jax.tree.leaves(updates),
        strict=True,
    ):
        p_norm, u_norm = jnp.linalg.norm(p.ravel()), jnp.linalg.norm(u.ravel())
        out[f"{name}/param_norm"] = p_norm
        out[f"{name}/grad_norm"] = jnp.linalg.norm(g.ravel())
        out[f"{name}/update_norm"] = u_norm
        out[f"{name}/update_param_ratio"] = u_norm / p_norm
    return out


def _bias_corrected(tree: Any, count: jax.Array, b2: jax.Array) -> dict[str, jax.Array]:
    """Per leaf v / (1 - b2^t)."""
    correction = 1.0 - b2 ** jnp.asarray(count, jnp.float32)
    return {k: v / correction for k, v in _named_leaves(tree).items()}


def second_moment_hat(spec: AdamSpec, state: Any, b2: jax.Array) -> dict[str, jax.Array]:
    """Per leaf the v_hat that the step divides by (see the module docstring)."""
    if spec.name == "adamax":
        return _named_leaves(state.nu)
    if spec.name == "amsgrad" and spec.convention == "pytorch":
        return _bias_corrected(state.nu_max, state.count, b2)
    if spec.name == "amsgrad":
        return _named_leaves(state.nu_max)  # optax: max of v_hat already; paper: no correction.
    return _bias_corrected(state.nu, state.count, b2)


def _adam_stats(spec: AdamSpec, opt_state: Any, learning_rate: jax.Array) -> dict[str, jax.Array]:
    fields = ("count", "mu", "nu", "nu_max") if spec.name == "amsgrad" else ("count", "mu", "nu")
    state = find_state(opt_state, fields)
    if state is None:
        return {}
    b2 = hyperparameter(opt_state, "b2", spec.b2)
    eps = hyperparameter(opt_state, "eps", spec.eps)
    peak = hyperparameter(opt_state, "learning_rate", spec.base_learning_rate)
    lr = learning_rate * peak / spec.base_learning_rate
    out = {}
    for name, v_hat in second_moment_hat(spec, state, b2).items():
        root = jnp.sqrt(v_hat.astype(jnp.float32)).ravel()
        q05, q50, q95 = jnp.quantile(lr / (root + eps), jnp.asarray(QUANTILES))
        out |= {f"{name}/step_q05": q05, f"{name}/step_q50": q50, f"{name}/step_q95": q95}
        out[f"{name}/eps_fraction"] = jnp.mean(eps > root)
    if spec.name == "amsgrad":
        if spec.convention == "optax":
            current = _bias_corrected(state.nu, state.count, b2)
        else:
            current = _named_leaves(state.nu)
        for name, v_max in _named_leaves(state.nu_max).items():
            out[f"{name}/amsgrad_max_active"] = jnp.mean(v_max > current[name])
    if spec.name in ("radam", "radamw"):
        t = jnp.asarray(state.count, jnp.float32)
        rho_inf = 2.0 / (1.0 - b2) - 1.0
        rho = rho_inf - 2.0 * t * b2**t / (1.0 - b2**t)
        threshold = spec.threshold or (4.0 if spec.convention == "paper" else 5.0)
        tractable = rho >= threshold if spec.convention == "optax" else rho > threshold
        out["radam/rho"] = rho
        out["radam/rectified"] = tractable.astype(jnp.float32)
    return out


def make_layer_stats(spec: AdamSpec) -> Callable[..., dict[str, jax.Array]]:
    """`stats(grads, updates, params, opt_state, learning_rate) -> {name: float32 scalar}`."""

    def stats(grads, updates, params, opt_state, learning_rate):
        out = _norms(grads, updates, params)
        if spec.adam_family:
            out |= _adam_stats(spec, opt_state, learning_rate)
        return {k: jnp.asarray(v, jnp.float32) for k, v in out.items()}

    return stats
