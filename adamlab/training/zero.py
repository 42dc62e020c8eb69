"""ZeRO-1: the optimizer state sharded over the data-parallel devices, parameters replicated.

Each device keeps and updates 1/N of the moments (Rajbhandari et al. 2020, ZeRO stage 1): pmap
with explicit collectives (`sharded_update`), jit with shardings (`opt_state_shardings`).
docs/internals.md gives both paths, why padding is harmless and the references.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

Tree = Any


def shard_size(size: int, num_shards: int) -> int:
    """Elements per shard of a leaf with `size` elements: ceil(size / num_shards)."""
    return max(1, math.ceil(size / num_shards))


def _flat_padded(x: jax.Array, num_shards: int) -> jax.Array:
    """x flattened and zero-padded to num_shards * shard_size elements."""
    flat = jnp.ravel(x)
    return jnp.pad(flat, (0, shard_size(flat.size, num_shards) * num_shards - flat.size))


def shard_leaves(tree: Tree, num_shards: int) -> Tree:
    """Host/numpy layout for the pmap engine: each leaf -> [num_shards, shard_size] (padded)."""

    def one(x):
        x = np.asarray(x)
        flat = np.zeros(shard_size(x.size, num_shards) * num_shards, x.dtype)
        flat[: x.size] = x.ravel()
        return flat.reshape(num_shards, -1)

    return jax.tree.map(one, tree)


def unshard_leaves(shards: Tree, like: Tree) -> Tree:
    """Inverse of `shard_leaves`: [num_shards, shard_size] leaves back to the shapes of `like`."""
    return jax.tree.map(
        lambda s, x: np.asarray(s).reshape(-1)[: np.size(x)].reshape(np.shape(x)), shards, like
    )


def to_sharded_opt_state(tx: optax.GradientTransformation, opt_state: Tree, num_shards: int):
    """The pmap layout of a (full, host) optimizer state: every leaf gets a leading device axis.

    Parameter-shaped leaves (moments) are split (`shard_leaves`: row i is device i's slice),
    the others (step counts) repeated on every row. Which subtrees are parameter-shaped is found
    by optax from `tx.init` (`optax.tree_map_params`), so any optimizer works.
    """
    return optax.tree_map_params(
        tx,
        lambda x: shard_leaves(x, num_shards),
        opt_state,
        transform_non_params=lambda x: np.broadcast_to(np.asarray(x), (num_shards, *np.shape(x))),
    )


def from_sharded_opt_state(tx: optax.GradientTransformation, opt_state: Tree, params: Tree):
    """Inverse of `to_sharded_opt_state`: the full host state, as the replicated engines keep.

    `opt_state` leaves are [devices, ...] (numpy or fully addressable arrays); `params` gives
    the shapes of the moments.
    """
    # tree_map_params maps f over each parameter-shaped subtree with `params` as extra argument.
    return optax.tree_map_params(
        tx, unshard_leaves, opt_state, params, transform_non_params=lambda x: np.asarray(x)[0]
    )


def local_shards(tree: Tree, axis_name: str, num_shards: int) -> Tree:
    """Inside pmap: this device's slice of every (replicated) leaf, flattened and padded."""
    index = jax.lax.axis_index(axis_name)

    def one(x):
        flat = _flat_padded(x, num_shards)
        size = flat.size // num_shards
        return jax.lax.dynamic_slice_in_dim(flat, index * size, size)

    return jax.tree.map(one, tree)


def reduce_scatter_mean(tree: Tree, axis_name: str, num_shards: int) -> Tree:
    """Inside pmap: this device's slice of the mean over devices of every leaf.

    Equals `local_shards(lax.pmean(tree))` up to the order of the summation (the reduction is
    split into N pieces), i.e. a few float32 ulps.
    """
    return jax.tree.map(
        lambda x: (
            jax.lax.psum_scatter(
                _flat_padded(x, num_shards), axis_name, scatter_dimension=0, tiled=True
            )
            / num_shards
        ),
        tree,
    )


def all_gather_leaves(shards: Tree, like: Tree, axis_name: str) -> Tree:
    """Inside pmap: the full leaves (shapes and dtypes of `like`) from every device's slice."""
    return jax.tree.map(
        lambda s, x: (
            jax.lax.all_gather(s, axis_name, tiled=True)[: x.size].reshape(x.shape).astype(x.dtype)
        ),
        shards,
        like,
    )


def _sharded_norm(tree: Tree, axis_name: str) -> jax.Array:
    """Global L2 norm of a tree whose leaves are disjoint slices on the devices of the axis."""
    squares = sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree))
    return jnp.sqrt(jax.lax.psum(squares, axis_name))


def _all_finite_sharded(tree: Tree, axis_name: str) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    local = jnp.all(jnp.stack(leaves)).astype(jnp.int32)
    return jax.lax.pmin(local, axis_name).astype(bool)


def sharded_update(
    tx: optax.GradientTransformation,
    grads: Tree,
    opt_state: Tree,
    params: Tree,
    *,
    axis_name: str,
    num_shards: int,
) -> tuple[Tree, Tree, dict[str, jax.Array]]:
    """One ZeRO-1 optimizer step inside `jax.pmap`; returns (params, opt_state, norms).

    Args:
      tx: an elementwise optimizer; `opt_state` is its state for this device's slices.
      grads: this device's gradient (of its part of the batch), full shapes.
      opt_state: the optimizer state of this device's slices (`to_sharded_opt_state`).
      params: the full parameters (replicated).
      axis_name: the pmap axis; num_shards: its size.

    Returns:
      the new full parameters (identical on every device), the new state of this device's
      slices, and {"grad_norm", "update_norm", "finite"} over all slices (for the metrics).
    """
    grad_shards = reduce_scatter_mean(grads, axis_name, num_shards)
    param_shards = local_shards(params, axis_name, num_shards)
    updates, opt_state = tx.update(grad_shards, opt_state, param_shards)
    new_shards = optax.apply_updates(param_shards, updates)
    new_params = all_gather_leaves(new_shards, params, axis_name)
    stats = {
        "grad_norm": _sharded_norm(grad_shards, axis_name),
        "update_norm": _sharded_norm(updates, axis_name),
        "finite": _all_finite_sharded((grad_shards, updates), axis_name),
    }
    return new_params, opt_state, stats


# ---------------------------------------------------------------------------- jit engine


def partition_spec(shape: tuple[int, ...], num_shards: int, axis: str = "data") -> P:
    """Shards the largest axis divisible by `num_shards` (ties: the last); P() if none is."""
    candidates = [i for i, d in enumerate(shape) if d % num_shards == 0 and d >= num_shards]
    if not candidates:
        return P()
    best = max(candidates, key=lambda i: (shape[i], i))
    return P(*[axis if i == best else None for i in range(len(shape))])


def opt_state_shardings(
    tx: optax.GradientTransformation, abstract_opt_state: Tree, mesh: Mesh, axis: str = "data"
) -> Tree:
    """NamedShardings for the optimizer state: moments sharded over `axis`, the rest replicated.

    `abstract_opt_state` may be the state or its `jax.eval_shape`. Moments too small to split
    (no axis divisible by the mesh size, e.g. a 10-class bias on 4 devices) stay replicated.
    """
    num_shards = mesh.shape[axis]
    replicated = NamedSharding(mesh, P())
    return optax.tree_map_params(
        tx,
        lambda x: NamedSharding(mesh, partition_spec(x.shape, num_shards, axis)),
        abstract_opt_state,
        transform_non_params=lambda _: replicated,
    )


def bytes_on_device(tree: Tree, device: jax.Device) -> int:
    """Bytes of the shards of `tree`'s arrays stored on `device` (what that device holds)."""
    return sum(
        shard.data.nbytes
        for x in jax.tree.leaves(tree)
        for shard in x.addressable_shards
        if shard.device == device
    )
