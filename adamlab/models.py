"""Flax (linen) image classifiers, by name: "cnn", "resnet", "mlp" and "logreg", built by one
factory, `create_model(config.model, num_classes)`.

linen keeps parameters and BatchNorm statistics as plain pytrees outside the module, what a
pure, donated `train_step` and a checkpointer want. Models compute in `dtype`, keep float32
parameters and return float32 logits; `__call__(x, *, train)`. docs/internals.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from adamlab import config_dict

MODELS: tuple[str, ...] = ("cnn", "resnet", "mlp", "logreg")
DTYPES: dict[str, Any] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def max_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
    """`nn.max_pool(x, (2, 2), strides=(2, 2))` (VALID) as a reshape and a max over [..., H, W, C].

    The same values, and the same gradient wherever the maximum of a window is unique (after a
    ReLU, ties are zeros, whose gradient the ReLU zeroes anyway). Why not `nn.max_pool`: XLA:CPU
    runs reduce_window's backward pass (select_and_scatter) slowly, and much more slowly under
    `vmap` (vectorized runs of the one loop); a reshape-max is a plain reduction.
    """
    *batch, height, width, channels = x.shape
    x = x[..., : height // 2 * 2, : width // 2 * 2, :]
    x = x.reshape(*batch, height // 2, 2, width // 2, 2, channels)
    return x.max(axis=(-4, -2))


class CNN(nn.Module):
    """conv-relu-maxpool blocks, then a dense hidden layer and the classifier.

    Defaults (32 -> 64 channels, 3x3 kernels, dense 128) follow the Flax MNIST example. Each block
    halves the spatial size with a 2x2 max pool while the size is at least 2, so the same network
    works on 8x8 digits (8 -> 4 -> 2) and 28x28 MNIST (28 -> 14 -> 7).
    """

    num_classes: int
    features: Sequence[int] = (32, 64)
    dense_features: int = 128
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        x = x.astype(self.dtype)
        for features in self.features:
            x = nn.relu(nn.Conv(features, (3, 3), dtype=self.dtype)(x))
            if min(x.shape[-3:-1]) >= 2:
                x = max_pool_2x2(x)
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.dense_features, dtype=self.dtype)(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
        return x.astype(jnp.float32)


def _batch_norm(train: bool, dtype: Any, axis_name: str | None, **kwargs) -> nn.BatchNorm:
    """The ResNet's BatchNorm: batch statistics while training, their running average after."""
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        dtype=dtype,
        axis_name=axis_name,
        **kwargs,
    )


class ResidualBlock(nn.Module):
    """Basic block of He et al. 2016 (two 3x3 convs, post-activation), 1x1 projection shortcut.

    The last BatchNorm's scale starts at zero (Goyal et al. 2017), so each block starts as the
    identity, which makes the net train stably with Adam's larger early steps.
    """

    features: int
    strides: int = 1
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        norm = lambda **kw: _batch_norm(train, self.dtype, self.axis_name, **kw)
        conv = lambda f, k, s: nn.Conv(f, k, (s, s), use_bias=False, dtype=self.dtype)
        y = nn.relu(norm()(conv(self.features, (3, 3), self.strides)(x)))
        y = norm(scale_init=nn.initializers.zeros)(conv(self.features, (3, 3), 1)(y))
        if x.shape != y.shape:
            x = norm()(conv(self.features, (1, 1), self.strides)(x))
        return nn.relu(x + y)


class ResNet(nn.Module):
    """CIFAR-style ResNet: a 3x3 stem, stages of residual blocks, global average pool, classifier.

    The defaults are ResNet-20 (3 stages of 3 blocks, 16/32/64 channels, 0.27M parameters), the
    CIFAR-10 network of He et al. 2016. `axis_name` is BatchNorm's: set it (the pmap step does,
    via `model.clone`) to average batch statistics across devices so that they equal the
    statistics of the global batch.
    """

    num_classes: int
    stage_sizes: Sequence[int] = (3, 3, 3)
    num_filters: int = 16
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        x = x.astype(self.dtype)
        x = nn.Conv(self.num_filters, (3, 3), use_bias=False, dtype=self.dtype)(x)
        x = nn.relu(_batch_norm(train, self.dtype, self.axis_name)(x))
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                x = ResidualBlock(
                    self.num_filters * 2**i,
                    strides=2 if i > 0 and j == 0 else 1,
                    dtype=self.dtype,
                    axis_name=self.axis_name,
                )(x, train=train)
        x = jnp.mean(x, axis=(-3, -2))
        x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
        return x.astype(jnp.float32)


ACTIVATIONS = ("relu", "tanh", "elu", "gelu")


class MLP(nn.Module):
    """Dense layers with dropout after each (Kingma & Ba 2015: 2 x 1000 ReLU units, dropout).

    `activation` is one of ACTIVATIONS (Cohen et al. 2021's edge of stability: tanh).
    """

    num_classes: int
    hidden: Sequence[int] = (1000, 1000)
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32
    activation: str = "relu"

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        x = x.reshape((x.shape[0], -1)).astype(self.dtype)
        for width in self.hidden:
            x = getattr(nn, self.activation)(nn.Dense(width, dtype=self.dtype)(x))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


class LogisticRegression(nn.Module):
    """Softmax regression: one dense layer on the flattened image (64 -> 10 on digits)."""

    num_classes: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        del train  # No dropout or statistics.
        x = x.reshape((x.shape[0], -1)).astype(self.dtype)
        return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


_CLASSES: dict[str, type[nn.Module]] = {
    "cnn": CNN,
    "resnet": ResNet,
    "mlp": MLP,
    "logreg": LogisticRegression,
}
# Fields a config may not set: filled in by create_model / the engines.
_RESERVED = ("name", "num_classes", "dtype", "axis_name", "parent")


def _architecture_fields(name: str) -> tuple[str, ...]:
    fields = (f.name for f in dataclasses.fields(_CLASSES[name]) if f.init)
    return tuple(f for f in fields if f not in _RESERVED)


def default_model_config(name: str = "cnn") -> ml_collections.ConfigDict:
    """The model part of an experiment config with every architecture field at its default."""
    validate_model_config({"name": name})
    config = ml_collections.ConfigDict({"name": name, "dtype": "float32"})
    for field in dataclasses.fields(_CLASSES[name]):
        if field.name in _architecture_fields(name):
            config[field.name] = field.default
    return config


def validate_model_config(model_config: Any) -> None:
    """Raises ValueError naming the problem if `model_config` cannot build a model."""
    config = config_dict.as_dict(model_config, "model config")
    name = config.get("name")
    if name not in MODELS:
        raise ValueError(f"model.name={name!r} is not a model; allowed: {', '.join(MODELS)}")
    dtype = config.get("dtype", "float32")
    if dtype not in DTYPES:
        raise ValueError(f"model.dtype={dtype!r} is not supported; allowed: {', '.join(DTYPES)}")
    allowed = _architecture_fields(name)
    # Fields of the other models are ignored, so that `--config.model.name=mlp` works on a config
    # written for the CNN; a field of no model is a typo.
    known = {f for other in MODELS for f in _architecture_fields(other)}
    unknown = sorted(set(config) - known - {"name", "dtype"})
    if unknown:
        raise ValueError(
            f"model fields {unknown} are fields of no model; for {name!r} "
            f"allowed: name, dtype, {', '.join(allowed)}"
        )
    activation = config.get("activation", "relu")
    if "activation" in allowed and activation not in ACTIVATIONS:
        raise ValueError(
            f"model.activation={activation!r} is unknown; allowed: {', '.join(ACTIVATIONS)}"
        )
    rate = config.get("dropout_rate", 0.0) if "dropout_rate" in allowed else 0.0
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"model.dropout_rate={rate} must be in [0, 1)")
    for key in ("features", "stage_sizes", "hidden"):
        if key in config and (not config[key] or any(int(v) != v or v < 1 for v in config[key])):
            raise ValueError(f"model.{key}={config[key]} must be a non-empty sequence of ints >= 1")


def create_model(model_config: Any, num_classes: int) -> nn.Module:
    """Builds the model named by `model_config.name` (one of `MODELS`).

    Args:
      model_config: ConfigDict (or mapping) with `name`, optional `dtype` ("float32" or
        "bfloat16", the computation dtype; parameters stay float32) and the chosen model's
        fields (its class's attributes; missing ones take their defaults).
      num_classes: size of the logits.

    Returns:
      A linen module called as `model.apply(variables, images, train=...)` on float32 images
      [B, H, W, C]; it returns float32 logits [B, num_classes].
    """
    validate_model_config(model_config)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r} must be an int >= 2")
    config = config_dict.as_dict(model_config, "model config")
    name = config.pop("name")
    dtype = DTYPES[config.pop("dtype", "float32")]
    kwargs = {
        k: tuple(v) if isinstance(v, list | tuple) else v
        for k, v in config.items()
        if k in _architecture_fields(name)
    }
    return _CLASSES[name](num_classes=num_classes, dtype=dtype, **kwargs)
