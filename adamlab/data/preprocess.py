"""Per-example and per-batch transforms: normalisation and seeded augmentation.

Normalisation: scale uint8 pixels to [0, 1], then standardise with per-dataset constants,
`(x / 255 - mean) / std` (per channel for CIFAR-10). The constants are the mean and standard
deviation over all pixels of each dataset's full TFDS `train` split (before the validation carve):
  * digits: computed here from our `digits` train split (1437 images, rescaled to 0..255):
    `x = images / 255; x.mean(), x.std()`; `tests/test_data.py` recomputes and checks them.
  * mnist (0.1307, 0.3081) and cifar10 (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616):
    the standard published values over the 60k / 50k train images. (The often quoted CIFAR-10
    std (0.2023, 0.1994, 0.2010) is a mean of per-image stds, not the pixel std.)
  * fashion_mnist (0.2860, 0.3530): the standard values over the 60k train images.

Augmentation (training only, `augment=True`; default on for cifar10 only): pad with black (0)
pixels, take a random crop of the original size, and for natural images flip left-right. Flips
are off for digit datasets (a flipped digit is not the same digit). All randomness is stateless,
keyed by (seed, process, epoch, example), so a stream is a pure function of its seed.
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
