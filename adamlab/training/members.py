"""The members of a run: N >= 1 training runs carried and stepped together in one program.

Every implementation x swept value x seed shares one state structure, so one step trains them
all (`Members`, `make_member_step`, `vectorize`); a diverged member is frozen, never stopping
the others. docs/internals.md describes the grid and the freezing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from adamlab.training.steps import evaluation_params
from adamlab.training.train_state import TrainState, create_train_state

_TINY = 1e-30  # Floor of the parity's denominator: a leaf of zeros compares absolutely.
LOGGED = (
    "loss",
    "accuracy",
    "learning_rate",
    "grad_norm",
    "update_norm",
    "param_norm",
    "update_param_ratio",
)


@flax.struct.dataclass
class Members:
    """The carried state of a run's members (see the module docstring)."""

    states: tuple[TrainState, ...]  # One per implementation; leaves [*grid, ...].
    alive: jax.Array  # bool [*grid, implementations]: every step so far was finite.
    diverged_at: jax.Array  # int32 [*grid, implementations]: first non-finite step, 0 if none.
    parity: jax.Array  # float32 [*grid]: max over steps of relative_difference(states[0:2]).


def relative_difference(a: Any, b: Any) -> jax.Array:
    """max over leaves of max|a - b| / max(max|b|, tiny): 0 iff the pytrees are equal.

    Normalised per leaf by the leaf's scale rather than per element: elementwise ratios blow up
    at weights that cross zero, where a 1-ulp difference would read as 100%.
    """
    per_leaf = jax.tree.map(
        lambda x, y: jnp.max(jnp.abs(x - y)) / jnp.maximum(jnp.max(jnp.abs(y)), _TINY), a, b
    )
    return jnp.max(jnp.stack(jax.tree.leaves(per_leaf)))


def _keep_if(keep: jax.Array, new: TrainState, old: TrainState) -> TrainState:
    """`new` where `keep`, else `old` (the step counter always advances)."""
    kept = jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, old)
    return kept.replace(step=new.step)


def make_member_step(train_steps: Sequence[Callable]) -> Callable:
    """`step(members, batch) -> (members, metrics)` for one grid point.

    `train_steps[i]` is implementation i's pure train step (`steps.make_train_step`). Metrics:
    LOGGED and "finite", each stacked over implementations ([implementations]); steps built
    with per-layer diagnostics add "layers", a tuple of each implementation's {name: scalar}
    (their names may differ: the optax twin of a baseline, a different state).
    """

    def step(carry: Members, batch: dict) -> tuple[Members, dict]:
        outputs = []  # A loop, not a comprehension: one frame fewer above every train step.
        for train_step, state in zip(train_steps, carry.states, strict=True):
            outputs.append(train_step(state, batch))
        finite = jnp.stack([m["finite"] for _, m in outputs])
        keep = carry.alive & finite
        states = tuple(
            _keep_if(keep[i], new, old)
            for i, ((new, _), old) in enumerate(zip(outputs, carry.states, strict=True))
        )
        taken = outputs[0][0].step  # The 1-based number of the step just taken.
        diverged_at = jnp.where(carry.alive & ~finite, taken, carry.diverged_at)
        parity = carry.parity
        if len(states) >= 2:
            parity = jnp.maximum(parity, relative_difference(states[0].params, states[1].params))
        metrics = {k: jnp.stack([m[k] for _, m in outputs]) for k in (*LOGGED, "finite")}
        if any("layers" in m for _, m in outputs):
            metrics["layers"] = tuple(m.get("layers", {}) for _, m in outputs)
        return Members(states, keep, diverged_at, parity), metrics

    return step


def vectorize(fn: Callable, grid: tuple[int, ...], batch_axis: int | None = 0) -> Callable:
    """`fn(carry, batch)` mapped over the grid `[values, seeds]` (unchanged for grid ())."""
    if not grid:
        return fn
    return jax.vmap(jax.vmap(fn, in_axes=(0, batch_axis)), in_axes=(0, None))


def evaluation_point(state: TrainState, eval_params: Callable | None, grid: tuple[int, ...]):
    """The params one implementation's members (leading axes `grid`) are evaluated and shipped
    at (`steps.evaluation_params`), as host arrays."""
    point = vectorize(lambda s, _: evaluation_params(s, eval_params), grid, batch_axis=None)
    return jax.tree.map(np.asarray, point(state, None))


def initial_members(
    model: Any,
    txs: Sequence[Any],
    image_shape: Sequence[int],
    seeds: Sequence[int],
    values: dict[str, np.ndarray],
    make_tx: Sequence[Callable[[dict], Any]],
    params_for_seed: Callable[[int, Any], Any] | None = None,
) -> Members:
    """Every member's step-0 state (host arrays), grid () for one seed and no sweep.

    Seed s's parameters are `create_train_state(jax.random.key(s), ...)`'s, as a single run's;
    `params_for_seed(seed, params)` may replace them (a transfer's loaded parameters); each
    implementation's optimizer state is initialised for each run's values (`make_tx[i](v)`).
    """
    num_values = len(next(iter(values.values()))) if values else 1
    single = not values and len(seeds) == 1
    per_impl = []
    for tx, build in zip(txs, make_tx, strict=True):
        states = []
        for seed in seeds:
            state = create_train_state(jax.random.key(seed), model, tx, image_shape)
            if params_for_seed is not None:
                params = params_for_seed(seed, state.params)
                state = state.replace(params=params, opt_state=tx.init(params))
            states.append(jax.device_get(state))
        if single:
            per_impl.append(states[0])
            continue
        stacked = jax.tree.map(lambda *xs: np.stack(xs), *states)  # [seeds, ...]
        rows = []
        for v in range(num_values):
            run_tx = build({k: x[v] for k, x in values.items()})
            opt_states = [run_tx.init(s.params) for s in states]
            opt = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *opt_states)
            rows.append(stacked.replace(opt_state=opt))
        per_impl.append(jax.tree.map(lambda *xs: np.stack(xs), *rows))  # [values, seeds, ...]
    grid = () if single else (num_values, len(seeds))
    m = len(txs)
    return Members(
        states=tuple(per_impl),
        alive=np.ones((*grid, m), bool),
        diverged_at=np.zeros((*grid, m), np.int32),
        parity=np.zeros(grid, np.float32),
    )
