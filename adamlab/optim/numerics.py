"""Numerical building blocks shared by the Adam family: moments, bias correction, counters.

Each helper is one line of the update rules in the papers, written so that the order of
floating-point operations is stated in one place. Every transform in `transform.py` is a
composition of these, which is what makes them agree with each other (and with optax, whose
operation order we follow) to the last bit in float32.
"""

from typing import Any

import jax
import jax.numpy as jnp

Tree = Any


def safe_increment(count: jax.Array) -> jax.Array:
    """Returns `count + 1`, saturating at the dtype's maximum instead of wrapping around.

    An int32 step counter overflows after 2**31 steps; wrapping to a negative count would make
    `1 - b**count` blow up. Saturation keeps the bias correction at its limit (1.0) forever.
    """
    count = jnp.asarray(count)
    if jnp.issubdtype(count.dtype, jnp.integer):
        max_value = jnp.iinfo(count.dtype).max
    elif jnp.issubdtype(count.dtype, jnp.floating):
        max_value = jnp.finfo(count.dtype).max
    else:
        raise ValueError(f"step counter must be an integer or float array, got {count.dtype}")
    max_value = jnp.array(max_value, count.dtype)
    return jnp.where(count < max_value, count + jnp.array(1, count.dtype), max_value)


def abs_sq(x: jax.Array) -> jax.Array:
    """|x|^2 elementwise; for real x this is x * x, for complex x it is real(conj(x) x)."""
    if jnp.iscomplexobj(x):
        return (x.conj() * x).real
    return x * x


def zeros_like(tree: Tree, dtype: Any = None) -> Tree:
    """A tree of zeros shaped like `tree` (None leaves and empty subtrees stay as they are)."""
    return jax.tree.map(lambda x: jnp.zeros_like(x, dtype=dtype), tree)


def cast(tree: Tree, dtype: Any) -> Tree:
    """Casts every leaf to `dtype`; `dtype=None` means leave the tree as it is."""
    if dtype is None:
        return tree
    return jax.tree.map(lambda x: x.astype(dtype), tree)


def cast_like(tree: Tree, like: Tree) -> Tree:
    """Casts every leaf of `tree` to the dtype of the matching leaf of `like`."""
    return jax.tree.map(lambda x, y: x.astype(y.dtype), tree, like)


def first_moment(grads: Tree, mu: Tree, b1: Any) -> Tree:
    """m_t = b1 * m_{t-1} + (1 - b1) * g_t (Kingma & Ba 2015, Algorithm 1)."""
    return jax.tree.map(lambda g, m: (1 - b1) * g + b1 * m, grads, mu)


def second_moment(grads: Tree, nu: Tree, b2: Any) -> Tree:
    """v_t = b2 * v_{t-1} + (1 - b2) * |g_t|^2 (elementwise; |.| handles complex gradients)."""
    return jax.tree.map(lambda g, v: (1 - b2) * abs_sq(g) + b2 * v, grads, nu)


def infinity_moment(grads: Tree, nu: Tree, b2: Any, eps: Any) -> Tree:
    """u_t = max(b2 * u_{t-1}, |g_t| + eps): Adamax's exponentially weighted infinity norm.

    Kingma & Ba 2015, Section 7.1. `eps` inside the max keeps u_t > 0 so that the update
    m_t / u_t is finite even for parameters whose gradient has always been zero.
    """
    return jax.tree.map(lambda g, u: jnp.maximum(jnp.abs(g) + eps, b2 * u), grads, nu)


def bias_correction(moment: Tree, decay: Any, count: jax.Array) -> Tree:
    """moment / (1 - decay^t): undoes the zero initialisation of an exponential moving average.

    `1 - decay**count` is computed in the precision of `decay` (float32 for Python floats) and
    only then cast to each moment's dtype: computing decay**t in bfloat16 rounds it to 1.0
    after a few steps and the correction divides by zero.
    """
    correction = 1 - decay**count
    return jax.tree.map(lambda m: m / correction.astype(m.dtype), moment)


def nesterov_first_moment(mu: Tree, grads: Tree, b1: Any, count: jax.Array) -> Tree:
    """Nadam's look-ahead first moment (Dozat 2016, Algorithm 2):

        m_hat = b1 * m_t / (1 - b1^(t+1)) + (1 - b1) * g_t / (1 - b1^t)

    i.e. the bias-corrected momentum of the *next* step applied now. Dozat also multiplies
    v_hat by b2; like optax and PyTorch we omit that factor.
    """
    return jax.tree.map(
        lambda m, g: b1 * m + (1 - b1) * g,
        bias_correction(mu, b1, safe_increment(count)),
        bias_correction(grads, b1, count),
    )


def adaptive_step(mu_hat: Tree, nu_hat: Tree, eps: Any, eps_root: Any) -> Tree:
    """m_hat / (sqrt(v_hat + eps_root) + eps).

    `eps` outside the root is the paper's; `eps_root` inside it keeps the derivative of the
    update finite when v_hat = 0, which matters when differentiating through the optimizer.
    """
    return jax.tree.map(lambda m, v: m / (jnp.sqrt(v + eps_root) + eps), mu_hat, nu_hat)
