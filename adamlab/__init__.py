"""adamlab: the Adam family of optimizers, from scratch, in JAX.

Subpackages are imported lazily by their users: `adamlab.optim` needs only jax and optax,
so it stays importable on machines without TensorFlow (e.g. a bare GPU image).
"""

__version__ = "0.1.0"


def restore(workdir, checkpoint="latest", **options):
    """A saved run in one call: `adamlab.training.restore.restore` (imported on first use)."""
    from adamlab.training import restore as restore_module

    return restore_module.restore(workdir, checkpoint, **options)
