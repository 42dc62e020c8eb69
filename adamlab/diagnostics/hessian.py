r"""Curvature of a loss: Hessian-vector products, Lanczos, and the preconditioned sharpness.

    hvp = make_hvp(loss, params)                 # v [n] -> H v, forward-over-reverse
    top = jax.jit(lambda k: lanczos(hvp, n, k, num_steps=20))(key)   # largest first
    sharpness = float(top.eigenvalues[0])

Everything works on a loss's flat parameter vector (`jax.flatten_util.ravel_pytree`).
docs/internals.md gives the methods (Pearlmutter 1994; stochastic Lanczos quadrature; Cohen
et al. 2022's preconditioned sharpness) and the references.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

Operator = Callable[[jax.Array], jax.Array]


class LanczosResult(NamedTuple):
    """Ritz values (largest first) and the squared first components of their vectors."""

    eigenvalues: np.ndarray  # [m]
    weights: np.ndarray  # [m], sum 1: tau_j^2, the quadrature weights of SLQ


def make_hvp(loss: Callable[[Any], jax.Array], params: Any) -> tuple[Operator, int]:
    """`(hvp, n)`: v [n] -> H v of `loss` at `params`, on flat vectors, and n."""
    flat, unravel = ravel_pytree(params)
    flat_grad = lambda p: ravel_pytree(jax.grad(loss)(unravel(p)))[0]

    def hvp(v: jax.Array) -> jax.Array:
        return jax.jvp(flat_grad, (flat,), (v.astype(flat.dtype),))[1]

    return hvp, flat.size


def preconditioned_hvp(hvp: Operator, diagonal: jax.Array) -> Operator:
    """v -> P^-1/2 H P^-1/2 v for P = diag(`diagonal`) (> 0): the eigenvalues of P^-1 H."""
    scale = jax.lax.rsqrt(diagonal)
    return lambda v: scale * hvp(scale * v)


def lanczos_tridiagonal(
    matvec: Operator, start: jax.Array, num_steps: int
) -> tuple[jax.Array, jax.Array]:
    """`num_steps` Lanczos iterations from `start`: T's diagonal (alphas) and off-diagonal
    (betas; betas[:-1] are used). Full reorthogonalisation; jit-able (a `lax.fori_loop`)."""
    n = start.shape[0]
    dtype = start.dtype
    basis = jnp.zeros((num_steps + 1, n), dtype).at[0].set(start / jnp.linalg.norm(start))

    def body(j, carry):
        basis, alphas, betas = carry
        v = basis[j]
        w = matvec(v)
        alpha = jnp.vdot(w, v)
        for _ in range(2):  # Twice is enough (Parlett's "twice is enough") in float32.
            w = w - basis.T @ (basis @ w)
        beta = jnp.linalg.norm(w)
        # A breakdown (an invariant subspace found) leaves zeros, which add only zero rows of T.
        nxt = jnp.where(beta > 1e-30, w / jnp.maximum(beta, 1e-30), jnp.zeros_like(w))
        return basis.at[j + 1].set(nxt), alphas.at[j].set(alpha), betas.at[j].set(beta)

    init = (basis, jnp.zeros(num_steps, dtype), jnp.zeros(num_steps, dtype))
    _, alphas, betas = jax.lax.fori_loop(0, num_steps, body, init)
    return alphas, betas


def ritz(alphas: jax.Array, betas: jax.Array) -> LanczosResult:
    """Eigenvalues of T (largest first) and the squared first components of its eigenvectors."""
    tri = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
    values, vectors = jnp.linalg.eigh(tri)
    return LanczosResult(values[::-1], vectors[0, ::-1] ** 2)


def lanczos(matvec: Operator, n: int, key: jax.Array, num_steps: int = 20) -> LanczosResult:
    """Ritz values of the symmetric `matvec` on R^n from a random start (largest first).

    Traceable: jit the caller once (a closure passed to `jax.jit` compiles per closure).
    """
    num_steps = min(num_steps, n)
    start = jax.random.normal(key, (n,), jnp.float32)
    return ritz(*lanczos_tridiagonal(matvec, start, num_steps))


def spectral_density(
    matvec: Operator, n: int, key: jax.Array, *, num_probes: int = 4, num_steps: int = 30
) -> LanczosResult:
    """Stochastic Lanczos quadrature: nodes and weights [num_probes, m] (traceable).

    Each probe is a random start; its Ritz values are the nodes and its tau_j^2 the weights of
    a quadrature of the spectral measure. `density` smooths them into a density estimate.
    """
    keys = jax.random.split(key, num_probes)
    return jax.lax.map(lambda k: lanczos(matvec, n, k, num_steps), keys)


def density(
    result: LanczosResult, num_points: int = 200, sigma: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(grid, density): SLQ's nodes smoothed by Gaussians of width `sigma` (None: 1% of the
    range), weighted by tau_j^2 and averaged over probes; integrates to ~1 over the grid."""
    nodes, weights = np.asarray(result.eigenvalues), np.asarray(result.weights)
    low, high = nodes.min(), nodes.max()
    width = max(high - low, 1e-12)
    sigma = 0.01 * width if sigma is None else sigma
    grid = np.linspace(low - 0.05 * width, high + 0.05 * width, num_points)
    kernels = np.exp(-0.5 * ((grid[None, None, :] - nodes[..., None]) / sigma) ** 2)
    kernels /= sigma * np.sqrt(2 * np.pi)
    return grid, (weights[..., None] * kernels).sum(axis=1).mean(axis=0)


def exact_hessian(loss: Callable[[Any], jax.Array], params: Any) -> np.ndarray:
    """The dense n x n Hessian of `loss` at `params` (small models only: tests, references)."""
    flat, unravel = ravel_pytree(params)
    return np.asarray(jax.hessian(lambda p: loss(unravel(p)))(flat))
