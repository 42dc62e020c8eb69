"""adamlab.data on the real offline `digits` dataset (prepared once per session into a tmp dir)."""

import collections
import importlib.util
import itertools
import math
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from adamlab import data
from adamlab.data import _tf_setup
from adamlab.data import digits as digits_module

from helpers import child_json

ONE_PROCESS = dict(num_local_devices=4, process_index=0, process_count=1)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    """A data_dir in which the first use prepares digits (offline)."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    config = data.default_data_config()
    config.data_dir = data_dir
    data.dataset_info(config)  # Prepares digits on first use.
    return data_dir


def make_config(data_dir, **overrides):
    config = data.default_data_config()
    config.data_dir = data_dir
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def take(iterator, n):
    return list(itertools.islice(iterator, n))


def examples(batches, masked=False):
    """Multiset of (image bytes, label) over batches (only mask=True entries when masked)."""
    counter = collections.Counter()
    for b in batches:
        images = b["image"].reshape(-1, *b["image"].shape[-3:])
        labels = b["label"].reshape(-1)
        keep = b["mask"].reshape(-1) if masked else np.ones(len(labels), bool)
        counter.update(
            (img.tobytes(), int(lab)) for img, lab in zip(images[keep], labels[keep], strict=True)
        )
    return counter


def reference_examples(data_dir, split, classes=None):
    """Multiset of normalised (image, label) of a TFDS digits split, read without our pipeline."""
    builder = tfds.builder("digits", data_dir=data_dir)
    (mean,), (std,) = data.NORMALIZATION["digits"]
    counter = collections.Counter()
    for ex in tfds.as_numpy(builder.as_dataset(split=split)):
        label = int(ex["label"])
        if classes is not None:
            if label not in classes:
                continue
            label = classes.index(label)
        image = (ex["image"].astype(np.float32) / 255.0 - np.float32(mean)) / np.float32(std)
        counter[(image.astype(np.float32).tobytes(), label)] += 1
    return counter


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


# --- the digits builder -------------------------------------------------------------------------


def test_digits_builder_is_registered_and_matches_sklearn_split(digits_dir):
    builder = tfds.builder("digits", data_dir=digits_dir)
    assert builder.is_prepared()
    assert str(builder.info.version) == "1.0.0" and "handwritten digits" in builder.info.description
    assert builder.info.splits["train"].num_examples == 1437
    assert builder.info.splits["test"].num_examples == 360
    test = list(tfds.as_numpy(builder.as_dataset(split="test")))
    assert {ex["image"].dtype for ex in test} == {np.dtype(np.uint8)}
    assert {ex["image"].shape for ex in test} == {(8, 8, 1)}
    # The test split is exactly sklearn's examples i % 5 == 0, pixels 0..16 scaled to 0..255.
    images, labels = digits_module.digits_images_and_labels()
    expected = collections.Counter((images[i].tobytes(), int(labels[i])) for i in range(0, 1797, 5))
    assert collections.Counter((ex["image"].tobytes(), int(ex["label"])) for ex in test) == expected
    assert images.max() == 255 and images.min() == 0


def test_digits_normalization_constants_are_the_train_split_statistics(digits_dir):
    builder = tfds.builder("digits", data_dir=digits_dir)
    train = np.stack([ex["image"] for ex in tfds.as_numpy(builder.as_dataset(split="train"))])
    x = train.astype(np.float64) / 255.0
    (mean,), (std,) = data.NORMALIZATION["digits"]
    assert x.mean() == pytest.approx(mean, abs=1e-6)
    assert x.std() == pytest.approx(std, abs=1e-6)


# --- dataset_info ---------------------------------------------------------------------------------


def test_dataset_info_counts_follow_validation_fraction_and_classes(digits_dir):
    info = data.dataset_info(make_config(digits_dir))
    assert info == data.DatasetInfo("digits", 10, (8, 8, 1), 1293, 144, 360)
    info = data.dataset_info(make_config(digits_dir, validation_fraction=0.25))
    assert (info.num_train, info.num_validation) == (1078, 359)  # TFDS rounds 75% of 1437.
    info = data.dataset_info(make_config(digits_dir, validation_fraction=0.0))
    assert (info.num_train, info.num_validation) == (1437, 0)

    classes = (7, 5)
    info = data.dataset_info(make_config(digits_dir, classes=classes))
    assert info.num_classes == 2
    _, labels = digits_module.digits_images_and_labels()
    assert info.num_test == int(np.isin(labels[::5], classes).sum())
    assert info.num_train == sum(reference_examples(digits_dir, "train[:90%]", classes).values())
    assert info.num_train + info.num_validation == int(
        np.isin(np.delete(labels, np.s_[::5]), classes).sum()
    )


def test_steps_per_epoch(digits_dir):
    info = data.dataset_info(make_config(digits_dir))
    assert data.steps_per_epoch(info, 128) == 10
    assert data.steps_per_epoch(info, 1293) == 1
    with pytest.raises(ValueError, match="larger than the 1293 training examples"):
        data.steps_per_epoch(info, 1294)


# --- training stream ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stream(digits_dir):
    """12 batches of 256 (5 per epoch: 1293 // 256) from seed 0, with augmentation."""
    config = make_config(digits_dir, augment=True)
    batches = data.train_batches(config, global_batch_size=256, seed=0, **ONE_PROCESS)
    return config, take(batches, 12)


def test_train_batches_shapes_dtypes_and_normalisation(stream):
    _, batches = stream
    (mean,), (std,) = data.NORMALIZATION["digits"]
    for b in batches:
        assert set(b) == {"image", "label"}
        assert b["image"].shape == (256, 8, 8, 1) and b["image"].dtype == np.float32
        assert b["label"].shape == (256,) and b["label"].dtype == np.int32
        assert 0 <= b["label"].min() and b["label"].max() <= 9
    images = np.stack([b["image"] for b in batches[:5]])  # One epoch.
    assert images.min() == pytest.approx(-mean / std)  # Black pixels (and crop padding).
    assert images.max() == pytest.approx((1 - mean) / std)
    assert abs(images.mean()) < 0.1 and abs(images.std() - 1) < 0.1


def test_pmap_layout_splits_the_batch_over_devices(digits_dir):
    config = make_config(digits_dir)
    flat = next(data.train_batches(config, global_batch_size=64, seed=3, **ONE_PROCESS))
    pmap = next(
        data.train_batches(config, global_batch_size=64, seed=3, layout="pmap", **ONE_PROCESS)
    )
    assert pmap["image"].shape == (4, 16, 8, 8, 1) and pmap["label"].shape == (4, 16)
    np.testing.assert_array_equal(pmap["image"].reshape(flat["image"].shape), flat["image"])
    np.testing.assert_array_equal(pmap["label"].reshape(-1), flat["label"])


def test_same_seed_same_stream_and_other_seed_other_order(digits_dir, stream):
    config, batches = stream
    again = take(data.train_batches(config, global_batch_size=256, seed=0, **ONE_PROCESS), 6)
    assert_same_batches(again, batches[:6])
    other = next(data.train_batches(config, global_batch_size=256, seed=1, **ONE_PROCESS))
    assert not np.array_equal(other["label"], batches[0]["label"])


def test_epochs_are_reshuffled_samples_without_replacement(digits_dir, stream):
    _, batches = stream
    unaugmented = make_config(digits_dir)
    plain = take(data.train_batches(unaugmented, global_batch_size=256, seed=0, **ONE_PROCESS), 10)
    train = reference_examples(digits_dir, "train[:90%]")
    for epoch in (plain[:5], plain[5:10]):
        seen = examples(epoch)
        assert sum(seen.values()) == 5 * 256 and not seen - train  # No example twice.
    assert not np.array_equal(plain[0]["label"], plain[5]["label"])  # A new order each epoch.
    # Same seed: augmentation changes images but not which examples or their order.
    for b, p in zip(batches[:10], plain, strict=True):
        np.testing.assert_array_equal(b["label"], p["label"])
    assert not np.array_equal(batches[0]["image"], plain[0]["image"])


@pytest.mark.parametrize("start_step", [1, 5, 7, 11])  # 5 steps per epoch: within and across.
def test_resume_yields_the_uninterrupted_stream(stream, start_step):
    config, batches = stream
    resumed = data.train_batches(
        config, global_batch_size=256, seed=0, start_step=start_step, **ONE_PROCESS
    )
    assert_same_batches(take(resumed, len(batches) - start_step), batches[start_step:])


@pytest.mark.parametrize("shuffle_buffer", [100, 10_000])  # Part of the split; all of it.
def test_index_shuffled_batches_are_the_examples_shuffled(digits_dir, shuffle_buffer):
    """Unaugmented streams shuffle indices and gather from memory; they must serve exactly the
    batches that shuffling the examples themselves serves (the per-example path, which the
    augmented streams use), over an epoch boundary and from a resume point."""
    from adamlab.data import input_pipeline, source

    builder = tfds.builder("digits", data_dir=digits_dir)
    split = "train[:90%]"
    order = input_pipeline._EpochOrder(
        stream_seed=tf.constant([7, 3], tf.int64),
        shuffle_buffer=shuffle_buffer,
        start_epoch=2,
        skip=5 * 32,
        batch=32,
    )
    examples = source.read_examples(builder, split, None)
    reference = order.epochs(lambda e: order.shuffled(examples, e).batch(32, drop_remainder=True))
    images, labels = input_pipeline._in_memory(builder, split, None)
    gathered = input_pipeline._gathered_batches(images, labels, order)
    per_epoch = int(labels.shape[0]) // 32
    pairs = take(zip(tfds.as_numpy(reference), tfds.as_numpy(gathered), strict=True), per_epoch + 8)
    assert len(pairs) == per_epoch + 8  # Into the next epoch.
    for want, got in pairs:
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["label"], want["label"])
    assert not np.array_equal(pairs[0][1]["label"], pairs[per_epoch][1]["label"])


@pytest.mark.parametrize("augment", [False, True])
def test_streams_of_several_seeds_are_each_seeds_own_stream(digits_dir, augment):
    """One run's members read `train_streams` (one in-memory copy of the split for all): each
    stream is exactly the one `train_batches` yields for its seed alone, from a resume point."""
    config = make_config(digits_dir, augment=augment)
    kwargs = dict(global_batch_size=64, start_step=3, **ONE_PROCESS)
    streams = data.train_streams(config, seeds=(4, 0, 4), **kwargs)
    for seed, stream in zip((4, 0, 4), streams, strict=True):
        alone = data.train_batches(config, seed=seed, **kwargs)
        assert_same_batches(take(stream, 30), take(alone, 30))  # Into the second epoch.


def test_class_filtering_remaps_labels_in_the_given_order(digits_dir):
    classes = (7, 5)
    config = make_config(digits_dir, classes=classes)
    batch = next(data.train_batches(config, global_batch_size=64, seed=0, **ONE_PROCESS))
    assert set(np.unique(batch["label"])) == {0, 1}
    assert not examples([batch]) - reference_examples(digits_dir, "train[:90%]", classes)
    test = list(data.eval_batches(config, split="test", global_batch_size=64, **ONE_PROCESS))
    assert examples(test, masked=True) == reference_examples(digits_dir, "test", classes)


# --- evaluation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "split, tfds_split", [("train", "train[:90%]"), ("validation", "train[90%:]"), ("test", "test")]
)
def test_eval_batches_count_each_example_exactly_once(digits_dir, split, tfds_split):
    config = make_config(digits_dir)
    batches = list(data.eval_batches(config, split=split, global_batch_size=64, **ONE_PROCESS))
    reference = reference_examples(digits_dir, tfds_split)
    n = sum(reference.values())
    assert len(batches) == math.ceil(n / 64)
    assert sum(int(b["mask"].sum()) for b in batches) == n
    assert examples(batches, masked=True) == reference
    last = batches[-1]
    assert last["mask"].dtype == np.bool_ and last["image"].dtype == np.float32
    assert not last["image"][~last["mask"]].any() and not last["label"][~last["mask"]].any()


def test_eval_pmap_layout(digits_dir):
    config = make_config(digits_dir)
    batches = list(
        data.eval_batches(config, split="test", global_batch_size=64, layout="pmap", **ONE_PROCESS)
    )
    assert {b["image"].shape for b in batches} == {(4, 16, 8, 8, 1)}
    assert {b["mask"].shape for b in batches} == {(4, 16)}
    assert sum(int(b["mask"].sum()) for b in batches) == 360


# --- several processes ----------------------------------------------------------------------------


def test_processes_split_eval_data_exactly_once(digits_dir):
    config = make_config(digits_dir)
    per_process = [
        list(
            data.eval_batches(
                config,
                split="test",
                global_batch_size=112,
                num_local_devices=4,
                process_index=i,
                process_count=2,
            )
        )
        for i in range(2)
    ]
    assert len(per_process[0]) == len(per_process[1]) == 4  # 180 each, in 4 batches of 56.
    assert {b["image"].shape[0] for p in per_process for b in p} == {56}
    p0, p1 = (examples(p, masked=True) for p in per_process)
    assert p0 + p1 == reference_examples(digits_dir, "test") and sum(p0.values()) == 180


def test_processes_read_disjoint_training_shards(digits_dir):
    config = make_config(digits_dir, validation_fraction=0.0)
    # 1437 train examples -> 718 per process (one dropped); 5 steps of 128 per process and epoch.
    epochs = [
        take(
            data.train_batches(
                config,
                global_batch_size=256,
                seed=0,
                num_local_devices=2,
                process_index=i,
                process_count=2,
            ),
            5,
        )
        for i in range(2)
    ]
    assert {b["image"].shape for e in epochs for b in e} == {(128, 8, 8, 1)}
    p0, p1 = (examples(e) for e in epochs)
    assert sum((p0 + p1).values()) == 1280 and not (p0 + p1) - reference_examples(
        digits_dir, "train"
    )


def test_streams_run_without_the_autotuning_thread_and_keep_their_elements():
    """Deleting an iterator waits for tf.data's autotuning thread (up to a minute late in a
    long run: `adamlab train`'s exit once took 37 s), so the streams turn it off."""
    from adamlab.data import input_pipeline

    ds = tf.data.Dataset.range(100).map(lambda x: 2 * x, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    untuned = input_pipeline._without_tuning_thread(ds)
    assert ds.options().autotune.enabled is not False
    assert untuned.options().autotune.enabled is False
    assert (
        list(untuned.as_numpy_iterator()) == list(ds.as_numpy_iterator()) == list(range(0, 200, 2))
    )


# --- errors ---------------------------------------------------------------------------------------


def test_preparing_digits_writes_nothing_to_stdout(tmp_path, capsys):
    """The commands print their results (JSON) on stdout; TFDS's preparation messages would
    corrupt them on a machine's first run."""
    info = data.dataset_info(make_config(str(tmp_path)))  # Prepares digits in a new data_dir.
    captured = capsys.readouterr()
    assert info.num_train > 0 and (tmp_path / "digits").is_dir()
    assert captured.out == ""
    assert "prepared" in captured.err  # TFDS's messages still reach the user, on stderr.


def test_unknown_dataset_lists_the_allowed_ones(digits_dir):
    with pytest.raises(ValueError, match="'svhn'; allowed: digits, mnist, fashion_mnist, cifar10"):
        data.dataset_info(make_config(digits_dir, name="svhn"))


def test_unprepared_dataset_without_download_says_how_to_prepare(tmp_path):
    config = make_config(str(tmp_path), name="mnist")
    for call in (
        lambda: data.dataset_info(config),
        lambda: data.train_batches(config, global_batch_size=8, seed=0, **ONE_PROCESS),
        lambda: data.eval_batches(config, split="test", global_batch_size=8, **ONE_PROCESS),
    ):
        with pytest.raises(data.DatasetNotPreparedError) as error:
            call()
        message = str(error.value)
        assert "'mnist'" in message and f"data_dir={tmp_path}" in message
        assert "--config.data.download=True" in message and "tfds build mnist" in message
    assert issubclass(data.DatasetNotPreparedError, FileNotFoundError)
    assert not list(tmp_path.iterdir())  # Nothing was downloaded or written.


def test_download_reaches_the_official_files(tmp_path, monkeypatch):
    """With download on, preparing MNIST gets as far as fetching its four files (stopped there:
    no network in tests). The steps before it read TFDS's checksum registry, which needs
    `importlib_resources`, a dependency TFDS does not declare (tensorflow/datasets#11212)."""
    requested = []

    class Offline(Exception):
        pass

    def download_and_extract(self, urls):
        requested.extend(urls.values())
        raise Offline

    monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", download_and_extract)
    config = make_config(str(tmp_path), name="mnist")
    config.download = True
    with pytest.raises(Offline):
        data.dataset_info(config)
    assert sorted(url.rsplit("/", 1)[-1] for url in requested) == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            dict(global_batch_size=30),
            "global_batch_size=30 is not divisible by num_local_devices=4 x process_count=1 = 4",
        ),
        (
            dict(global_batch_size=12, process_count=2),
            "not divisible by .* = 8; use a multiple of 8",
        ),
        (dict(global_batch_size=0), "global_batch_size must be a positive int"),
        (dict(layout="pjit"), "Unknown layout 'pjit'; allowed: flat, pmap"),
        (dict(process_index=2, process_count=2), r"process_index must be an int in \[0, 2\)"),
        (dict(global_batch_size=2048), "larger than the training data"),
        (dict(start_step=-1), "start_step must be an int >= 0"),
    ],
)
def test_train_batches_argument_errors(digits_dir, kwargs, match):
    args = dict(global_batch_size=64, seed=0, **ONE_PROCESS) | kwargs
    with pytest.raises(ValueError, match=match):
        data.train_batches(make_config(digits_dir), **args)


@pytest.mark.parametrize(
    "overrides, split, match",
    [
        ({}, "val", "Unknown split 'val'; allowed: train, validation, test"),
        (
            {"validation_fraction": 0.0},
            "validation",
            "no validation split: validation_fraction is 0",
        ),
        ({"validation_fraction": 1.0}, "test", r"validation_fraction must be a number in \[0, 1\)"),
        ({"classes": (3, 3)}, "test", "classes must be a non-empty sequence of distinct labels"),
        ({"classes": (10,)}, "test", r"labels in 0..9, or None; got \(10,\)"),
        ({"shuffle_buffer": 0}, "test", "shuffle_buffer must be a positive int"),
    ],
)
def test_config_and_split_errors(digits_dir, overrides, split, match):
    config = make_config(digits_dir, **overrides)
    with pytest.raises(ValueError, match=match):
        data.eval_batches(config, split=split, global_batch_size=64, **ONE_PROCESS)


def test_default_config():
    config = data.default_data_config()
    assert config.to_dict() == dict(
        name="digits",
        data_dir=None,
        download=False,
        validation_fraction=0.1,
        augment=None,
        shuffle_buffer=10_000,
        classes=None,
    )
    config.data_dir, config.classes, config.augment = "/tmp/x", (0, 1), True  # Typed placeholders.
    assert data.DATASETS == ("digits", "mnist", "fashion_mnist", "cifar10")


@pytest.mark.skipif(
    importlib.util.find_spec("tf_keras") is not None, reason="tf_keras installed: TF imports it"
)
def test_tensorflow_is_imported_without_keras_and_tf_keras_still_works():
    """TF's import loads Keras 3 and scikit-learn (its eager import of Keras's optimizers),
    which tf.data never uses: adamlab.data imports TF without them, leaves
    TF_USE_LEGACY_KERAS as it found it (unset), and `tf.keras` still works when used."""
    code = """if True:
        import json, os, sys
        import adamlab.data
        seen = {k: k in sys.modules for k in ("keras", "sklearn")}
        seen["variable_set"] = "TF_USE_LEGACY_KERAS" in os.environ
        import tensorflow as tf
        seen["dense_units"] = tf.keras.layers.Dense(3).units
        seen["keras_after_use"] = "keras" in sys.modules
        print(json.dumps(seen))
    """
    env = {k: v for k, v in os.environ.items() if k != _tf_setup.LEGACY_KERAS}
    assert child_json(code, env=env) == {
        "keras": False,
        "sklearn": False,
        "variable_set": False,
        "dense_units": 3,
        "keras_after_use": True,
    }


def test_a_users_legacy_keras_choice_or_an_installed_tf_keras_is_left_alone(monkeypatch):
    monkeypatch.delenv(_tf_setup.LEGACY_KERAS, raising=False)
    assert _tf_setup._skips_keras_at_import() == (importlib.util.find_spec("tf_keras") is None)
    monkeypatch.setenv(_tf_setup.LEGACY_KERAS, "0")
    assert not _tf_setup._skips_keras_at_import()
    monkeypatch.delenv(_tf_setup.LEGACY_KERAS)
    real_find_spec = importlib.util.find_spec
    installed = lambda name, *a: object() if name == "tf_keras" else real_find_spec(name, *a)
    monkeypatch.setattr(importlib.util, "find_spec", installed)
    assert not _tf_setup._skips_keras_at_import()
