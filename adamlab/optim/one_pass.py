"""The optimizer step in one pass over memory: update and apply, in place, on all CPU threads.

`update_and_apply(tx, grads, state, params)` is ``tx.update`` then ``optax.apply_updates``.
For a chain that carries a one-pass step (fused ``adam``/``adamw``/``nadam``/``nadamw`` in
the optax convention: `attach`) with float32 params on the CPU, it runs the C++ kernel
`kernels/adam_one_pass.cc` through `jax.ffi`: one pass reading p, g, m, v and writing p, m, v
in place (aliased), the chain's own float32 operations in its order, and the chain's state
leaf for leaf. Elsewhere, or where the kernel cannot be built (`native.load`), it is the two
calls. `tx` itself is untouched; the kernel has no derivative. docs/performance.md has more.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamlab.optim import native, numerics, transform

Tree = Any
KERNEL = "adam_one_pass"


class AdamHyperparameters(NamedTuple):
    """What the kernel needs of an ``adam``/``adamw``/``nadam``/``nadamw`` chain (floats or
    schedules)."""

    learning_rate: Any
    b1: Any
    b2: Any
    eps: Any
    eps_root: Any
    weight_decay: Any  # None for adam and nadam (their chains have no decay state)
    nesterov: bool = False


def attach(
    tx: optax.GradientTransformation, hyperparameters: AdamHyperparameters
) -> optax.GradientTransformation:
    """`tx` (an optax-convention fused ``adam``/``adamw``/``nadam``/``nadamw`` chain) with a
    one-pass step that `update_and_apply` can use. Its init and update are `tx`'s."""

    def update_fn(updates, state, params=None, **extra_args):
        return tx.update(updates, state, params, **extra_args)

    update_fn.one_pass = lambda grads, state, params: adam_one_pass(
        hyperparameters, grads, state, params
    )
    return type(tx)(tx.init, update_fn)


def one_pass_of(tx: optax.GradientTransformation) -> Callable | None:
    """The one-pass step `attach` gave `tx`, or None."""
    return getattr(tx.update, "one_pass", None)


def update_and_apply(
    tx: optax.GradientTransformation, grads: Tree, state: Any, params: Tree
) -> tuple[Tree, Any]:
    """(new params, new state): ``tx.update`` then ``optax.apply_updates``, in one pass on
    the CPU kernel where `tx` carries one and it applies (see the module docstring)."""
    one_pass = one_pass_of(tx)
    if one_pass is not None:
        result = one_pass(grads, state, params)
        if result is not None:
            return result
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state


def _advance(state: Any) -> Any:
    """A schedule's state one step on (`transform.ScaleByScheduleState`); EmptyState as is."""
    if isinstance(state, transform.ScaleByScheduleState):
        return transform.ScaleByScheduleState(count=numerics.safe_increment(state.count))
    return state


def coefficients(hp: AdamHyperparameters, state: tuple) -> jax.Array:
    """f32[11], the kernel's per-step scalars, formed as the chain forms them: step_size = -lr,
    b1, 1 - b1, b2, 1 - b2, r1, r2 = 1/(1 - b2^t), eps, eps_root, wd, cg. Adam: r1 =
    1/(1 - b1^t), cg = 0; Nadam: (r1, cg) = `numerics.nesterov_coefficients`."""
    adam_state, *rest = state
    count = numerics.safe_increment(adam_state.count)
    lr_count = getattr(rest[-1], "count", None)
    weight_decay = 0.0
    if hp.weight_decay is not None:
        weight_decay = numerics.value_at(hp.weight_decay, getattr(rest[0], "count", None))
    if hp.nesterov:
        r1, grad_coefficient = numerics.nesterov_coefficients(hp.b1, count)
    else:
        r1, grad_coefficient = numerics.reciprocal_correction(hp.b1, count), 0.0
    values = (
        -1 * numerics.value_at(hp.learning_rate, lr_count),
        hp.b1,
        1 - hp.b1,
        hp.b2,
        1 - hp.b2,
        r1,
        numerics.reciprocal_correction(hp.b2, count),
        hp.eps,
        hp.eps_root,
        weight_decay,
        grad_coefficient,
    )
    return jnp.stack([jnp.asarray(v, jnp.float32) for v in values])


def _applies(grads: Tree, adam_state: Any, params: Tree) -> bool:
    """The kernel's preconditions: CPU, params given, four trees of one structure and shapes,
    all float32."""
    if params is None or jax.default_backend() != "cpu":
        return False
    structure = jax.tree.structure(params)
    trees = (params, grads, adam_state.mu, adam_state.nu)
    if any(jax.tree.structure(t) != structure for t in trees):
        return False
    leaves = [jax.tree.leaves(t) for t in trees]
    return all(
        x.dtype == jnp.float32 and x.shape == p.shape
        for p, *others in zip(*leaves, strict=True)
        for x in (p, *others)
    )


def adam_one_pass(
    hp: AdamHyperparameters, grads: Tree, state: tuple, params: Tree
) -> tuple[Tree, tuple] | None:
    """One Adam(W) / Nadam(W) step on the kernel: (new params, new chain state), or None where
    it does not apply (then the caller runs update + apply)."""
    adam_state, *rest = state
    if not _applies(grads, adam_state, params):
        return None
    target = native.load(KERNEL)
    if target is None:
        return None
    p_leaves, treedef = jax.tree.flatten(params)
    if not p_leaves:
        return None
    g_leaves = jax.tree.leaves(grads)
    m_leaves, v_leaves = jax.tree.leaves(adam_state.mu), jax.tree.leaves(adam_state.nu)
    operands, results, aliases = [coefficients(hp, state)], [], {}
    for i, leaf in enumerate(zip(p_leaves, g_leaves, m_leaves, v_leaves, strict=True)):
        operands.extend(leaf)
        results.extend([jax.ShapeDtypeStruct(leaf[0].shape, jnp.float32)] * 3)
        # operand 1 + 4i is p, + 1 g, + 2 m, + 3 v; result 3i is p, + 1 m, + 2 v
        aliases.update({1 + 4 * i: 3 * i, 3 + 4 * i: 3 * i + 1, 4 + 4 * i: 3 * i + 2})
    call = jax.ffi.ffi_call(
        target, results, input_output_aliases=aliases, vmap_method="broadcast_all"
    )
    out = call(*operands)
    params = treedef.unflatten(out[0::3])
    adam_state = transform.ScaleByAdamState(
        count=numerics.safe_increment(adam_state.count),
        mu=treedef.unflatten(out[1::3]),
        nu=treedef.unflatten(out[2::3]),
    )
    return params, (adam_state, *map(_advance, rest))
