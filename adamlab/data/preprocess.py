"""Per-example and per-batch transforms: normalisation and seeded augmentation.

Normalisation is `(x / 255 - mean) / std` with per-dataset constants over each dataset's full
TFDS `train` split; augmentation (training only) pads, crops and, for natural images, flips,
with stateless seeds. docs/data.md gives where each constant comes from and the defaults.
"""

import dataclasses

import tensorflow as tf

NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "digits": ((0.305261,), (0.376158,)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Random crop after zero padding by `pad` pixels per side, then optionally a random flip."""

    pad: int
    flip: bool
    default_on: bool  # Whether `augment=None` means on.


AUGMENTATION: dict[str, Augmentation] = {
    "digits": Augmentation(pad=1, flip=False, default_on=False),
    "mnist": Augmentation(pad=2, flip=False, default_on=False),
    "fashion_mnist": Augmentation(pad=2, flip=True, default_on=False),
    "cifar10": Augmentation(pad=4, flip=True, default_on=True),
}


def normalize(images: tf.Tensor, name: str) -> tf.Tensor:
    """uint8 images [..., C] -> float32 `(x / 255 - mean) / std` with `name`'s constants."""
    mean, std = NORMALIZATION[name]
    x = tf.cast(images, tf.float32) / 255.0
    return (x - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def augment(image: tf.Tensor, seed: tf.Tensor, spec: Augmentation) -> tf.Tensor:
    """Pads `image` [H, W, C] with zeros, crops back to [H, W, C] and maybe flips; stateless."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    padded = tf.pad(image, [[spec.pad, spec.pad], [spec.pad, spec.pad], [0, 0]])
    image = tf.image.stateless_random_crop(padded, tf.shape(image), seed=crop_seed)
    if spec.flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    return image


def fold_in(seed: tf.Tensor, data) -> tf.Tensor:
    """A new stateless seed [2] from `seed` [2] and an integer (like `jax.random.fold_in`)."""
    return tf.random.experimental.stateless_fold_in(seed, tf.cast(data, tf.int64))
