"""adamlab: the Adam family of optimizers, from scratch, in JAX.

Subpackages are imported lazily by their users: `adamlab.optim` needs only jax and optax,
so it stays importable on machines without TensorFlow (e.g. a bare GPU image).
"""

__version__ = "0.1.0"
