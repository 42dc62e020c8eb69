"""Convolutions as shifted slices and one matmul, for loops and vectorized runs on XLA:CPU.

`intercepted(step, enabled)` traces `step` with `conv_as_matmul` active; the engine turns it on
for the train step of CPU runs that scan several steps per dispatch or vectorize several runs
(see `conv_as_matmul` for why, and `benchmarks/conv_in_scan.py` for the measurement). Their
evaluation, in no loop, keeps XLA's convolutions, which run it faster, vectorized members
included (`benchmarks/eval_convolutions.py`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def _is_plain_conv(conv: nn.Module, x: jax.Array) -> bool:
    """A 2-D, stride-1, undilated, ungrouped, unmasked "SAME" `nn.Conv` (the CNN's convs)."""
    ones = lambda v: v is None or v == 1 or all(d == 1 for d in v)
    return (
        type(conv) is nn.Conv
        and x.ndim == 4
        and len(tuple(conv.kernel_size)) == 2
        and conv.padding == "SAME"
        and ones(conv.strides)
        and ones(conv.input_dilation)
        and ones(conv.kernel_dilation)
        and conv.feature_group_count == 1
        and conv.mask is None
    )


def conv_as_matmul(next_fun, args, kwargs, context):
    """A `flax.linen.intercept_methods` interceptor: plain convs as shifted slices + one matmul.

    Why, on XLA:CPU: inside a loop body (the `lax.scan` over steps) a convolution runs far
    slower than in a plain jitted step (jax-ml/jax#12868, open; 16x for the digits CNN's step,
    `benchmarks/conv_in_scan.py`); and
    vmapped over runs, a convolution has one kernel per run, which XLA lowers to a grouped
    convolution and expands to a dense one (runs x the FLOPs). As slices and a batched matmul
    it stays runs x one run's work (compare with `benchmarks/sweep.py --conv plain`). Same sums
    in another order: results agree with
    `nn.Conv` to float32 rounding (tests/test_compare.py checks the runs against
    `train_and_evaluate`). Other convs (strided, dilated, grouped) and other modules run
    unchanged.
    """
    conv = context.module
    if context.method_name != "__call__" or len(args) != 1 or not _is_plain_conv(conv, args[0]):
        return next_fun(*args, **kwargs)
    kernel = conv.get_variable("params", "kernel")  # [kh, kw, in, out]
    dtype = conv.dtype or jnp.result_type(args[0], kernel)
    x, kernel = args[0].astype(dtype), kernel.astype(dtype)
    (kh, kw), (h, w) = kernel.shape[:2], x.shape[1:3]
    x = jnp.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
    # [B, H, W, kh * kw * in], ordered as the kernel's reshape: (i, j) major, channels minor.
    patches = jnp.concatenate(
        [x[:, i : i + h, j : j + w] for i in range(kh) for j in range(kw)], axis=-1
    )
    y = jnp.dot(patches, kernel.reshape(-1, kernel.shape[-1]), precision=conv.precision)
    if conv.use_bias:
        y = y + conv.get_variable("params", "bias").astype(dtype)
    return y


def intercepted(fn, enabled: bool):
    """`fn` with `conv_as_matmul` active while it is traced (when `enabled`)."""
    if not enabled:
        return fn

    def wrapped(*args):
        with nn.intercept_methods(conv_as_matmul):
            return fn(*args)

    return wrapped
