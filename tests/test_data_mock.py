"""adamlab.data pipelines for mnist, fashion_mnist and cifar10 on `tfds.testing.mock_data`.

Under mock_data every split yields the same `NUM_EXAMPLES` random uint8 images (0..255), split
slicing is ignored, and preparing is a no-op (so `download=True` and nothing touches the network).
"""

import itertools

import numpy as np
import pytest
import tensorflow_datasets as tfds

from adamlab import data

NUM_EXAMPLES = 48
ONE_PROCESS = dict(num_local_devices=4, process_index=0, process_count=1)
SHAPES = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3)}


@pytest.fixture(autouse=True)
def mocked_tfds():
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
        yield


def make_config(name, **overrides):
    config = data.default_data_config()
    config.name, config.download = name, True
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def take(iterator, n):
    return list(itertools.islice(iterator, n))


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_train_and_eval_batches(name):
    config = make_config(name)
    info = data.dataset_info(config)
    assert (info.name, info.num_classes, info.image_shape) == (name, 10, SHAPES[name])
    assert info.num_test == NUM_EXAMPLES

    batches = take(data.train_batches(config, global_batch_size=16, seed=0, **ONE_PROCESS), 4)
    mean, std = (np.asarray(v, np.float32) for v in data.NORMALIZATION[name])
    for b in batches:
        assert b["image"].shape == (16, *SHAPES[name]) and b["image"].dtype == np.float32
        assert b["label"].dtype == np.int32 and 0 <= b["label"].min() and b["label"].max() <= 9
        assert np.all(b["image"] >= -mean / std - 1e-5) and np.all(
            b["image"] <= (1 - mean) / std + 1e-5
        )
    again = take(data.train_batches(config, global_batch_size=16, seed=0, **ONE_PROCESS), 4)
    for a, b in zip(again, batches, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
    other = next(data.train_batches(config, global_batch_size=16, seed=1, **ONE_PROCESS))
    assert not np.array_equal(other["image"], batches[0]["image"])
    resumed = next(
        data.train_batches(config, global_batch_size=16, seed=0, start_step=3, **ONE_PROCESS)
    )
    np.testing.assert_array_equal(resumed["image"], batches[3]["image"])  # Epoch 1 (3 per epoch).

    evals = list(
        data.eval_batches(config, split="test", global_batch_size=32, layout="pmap", **ONE_PROCESS)
    )
    assert [b["image"].shape for b in evals] == [(4, 8, *SHAPES[name])] * 2
    assert sum(int(b["mask"].sum()) for b in evals) == NUM_EXAMPLES


def crops_of(original, pad, fill, flip):
    """All zero-padded crops (of the original size) of `original` [H, W, C], maybe flipped."""
    h, w, _ = original.shape
    padded = np.pad(original, [(pad, pad), (pad, pad), (0, 0)], constant_values=0)
    padded = padded + 0  # Copy, then paint the padding with the normalised value of black.
    padded[:pad], padded[-pad:], padded[:, :pad], padded[:, -pad:] = fill, fill, fill, fill
    crops = [padded[y : y + h, x : x + w] for y in range(2 * pad + 1) for x in range(2 * pad + 1)]
    return crops + [c[:, ::-1] for c in crops] if flip else crops


@pytest.mark.parametrize("name, augment", [("cifar10", None), ("mnist", True)])
def test_augmentation_is_a_padded_crop_and_flip_of_the_original(name, augment):
    spec = data.AUGMENTATION[name]
    assert spec.default_on == (name == "cifar10")
    plain = next(
        data.train_batches(
            make_config(name, augment=False), global_batch_size=32, seed=5, **ONE_PROCESS
        )
    )
    augmented = next(
        data.train_batches(
            make_config(name, augment=augment), global_batch_size=32, seed=5, **ONE_PROCESS
        )
    )
    np.testing.assert_array_equal(plain["label"], augmented["label"])  # Same examples, same order.
    mean, std = (np.asarray(v, np.float32) for v in data.NORMALIZATION[name])
    fill = -mean / std
    shifted = flipped = 0
    for original, image in zip(plain["image"], augmented["image"], strict=True):
        matches = [
            np.allclose(c, image, atol=1e-6) for c in crops_of(original, spec.pad, fill, spec.flip)
        ]
        assert any(matches)
        n = (2 * spec.pad + 1) ** 2
        shifted += not matches[n // 2]  # The centre crop is the original itself.
        flipped += spec.flip and not any(matches[:n])
    assert shifted > 16 and (flipped > 4 if spec.flip else flipped == 0)


def test_mnist_is_not_augmented_by_default():
    a = next(data.train_batches(make_config("mnist"), global_batch_size=16, seed=0, **ONE_PROCESS))
    b = next(
        data.train_batches(
            make_config("mnist", augment=False), global_batch_size=16, seed=0, **ONE_PROCESS
        )
    )
    np.testing.assert_array_equal(a["image"], b["image"])
