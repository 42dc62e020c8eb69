"""`digits`: scikit-learn's bundled handwritten digits as a real TFDS dataset.

It is the offline default dataset: scikit-learn ships the 1797 images inside its wheel, so the
dataset is prepared into any `data_dir` without network access, which lets CI and laptops
without a connection run every pipeline and training path for real.

Data (UCI "Optical Recognition of Handwritten Digits", test part, as bundled by scikit-learn):
1797 grey-scale 8x8 images of the digits 0-9 (about 180 per class). scikit-learn stores each
pixel as a count 0..16 (ink in a 4x4 block of the original 32x32 bitmap); the builder rescales
them to 0..255 uint8 (`round(v * 255 / 16)`) so that `digits` is read exactly like MNIST.

Fixed split, by position `i` in `sklearn.datasets.load_digits()`:
  * test:  `i % 5 == 0`  -> 360 examples,
  * train: the others    -> 1437 examples.
Examples are keyed by `i`; TFDS stores them in a deterministic hashed order of the key.
"""

import numpy as np
import tensorflow_datasets as tfds

NUM_EXAMPLES = 1797
TEST_EVERY = 5  # example i is a test example iff i % TEST_EVERY == 0.


def digits_images_and_labels() -> tuple[np.ndarray, np.ndarray]:
    """Returns sklearn's digits as (uint8 images [1797, 8, 8, 1] in 0..255, int64 labels)."""
    from sklearn.datasets import load_digits  # Local import: sklearn is only needed to prepare.

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return images, bunch.target.astype(np.int64)


def split_indices(split: str) -> np.ndarray:
    """Indices into sklearn's digits of the fixed `train`/`test` split."""
    index = np.arange(NUM_EXAMPLES)
    is_test = index % TEST_EVERY == 0
    if split == "test":
        return index[is_test]
    if split == "train":
        return index[~is_test]
    raise ValueError(f"digits has splits 'train' and 'test', not {split!r}.")


class Digits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's 8x8 handwritten digits (offline; prepared without network)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: 1437 train / 360 test (index % 5 == 0)."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1)),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
            citation="Alpaydin, E. and Kaynak, C. (1998). Optical Recognition of Handwritten "
            "Digits. UCI Machine Learning Repository. https://doi.org/10.24432/C50P49",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download: the data ship with scikit-learn.
        return {split: self._generate_examples(split) for split in ("train", "test")}

    def _generate_examples(self, split):
        images, labels = digits_images_and_labels()
        for i in split_indices(split):
            yield int(i), {"image": images[i], "label": int(labels[i])}
