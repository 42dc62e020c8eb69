"""Where examples come from: TFDS builders, offline preparation, splits and their sizes.

Splits (all by TFDS split slicing, so no example list is ever materialised):
  * "train": the first (1 - validation_fraction) of TFDS `train`, e.g. `train[:90%]`;
  * "validation": the rest of it, e.g. `train[90%:]` (tune on this);
  * "test": TFDS `test` (report on this).
With several processes each one reads its own slice of a split (`tfds.split_for_jax_process`).
"""

import contextlib
import dataclasses
import sys

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from adamlab.data import digits as _digits  # noqa: F401  (registers the `digits` builder)
from adamlab.data.config import DataSettings, read_settings

SPLITS: tuple[str, ...] = ("train", "validation", "test")


class DatasetNotPreparedError(FileNotFoundError):
    """A dataset is not prepared in its data_dir, and the config does not allow downloading."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model and a training loop need to know about the configured data."""

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]  # (H, W, C) of the float32 images the model sees.
    num_train: int  # After carving out validation (and class filtering).
    num_validation: int
    num_test: int


def dataset_info(data_config) -> DatasetInfo:
    """Returns the DatasetInfo of `data_config` (prepares `digits` if needed)."""
    settings = read_settings(data_config)
    builder = load_builder(settings)
    counts = {
        split: count_examples(builder, tfds_split(settings, split), settings.classes)
        if split != "validation" or settings.validation_fraction > 0
        else 0
        for split in SPLITS
    }
    features = builder.info.features
    return DatasetInfo(
        name=settings.name,
        num_classes=len(settings.classes or range(features["label"].num_classes)),
        image_shape=tuple(features["image"].shape),
        num_train=counts["train"],
        num_validation=counts["validation"],
        num_test=counts["test"],
    )


def load_builder(settings: DataSettings) -> tfds.core.DatasetBuilder:
    """A prepared builder for `settings.name`; prepares it if allowed, else raises.

    `digits` is always prepared on first use (it needs no network); other datasets only with
    `download=True`. Under `tfds.testing.mock_data`, preparing is a no-op: use `download=True`.
    """
    builder = tfds.builder(settings.name, data_dir=settings.data_dir)
    if builder.is_prepared():
        return builder
    if settings.name == "digits":
        config = tfds.download.DownloadConfig(try_download_gcs=False)  # Never reach the network.
    elif settings.download:
        config = tfds.download.DownloadConfig()
    else:
        root = epath.Path(builder.data_dir).parents[1]  # data_dir/name/version -> data_dir.
        raise DatasetNotPreparedError(
            f"Dataset {settings.name!r} is not prepared in data_dir={root} (looked for "
            f"{builder.data_dir}) and download is off. Prepare it once, with network access: "
            f"run with --config.data.download=True, or `tfds build {settings.name} "
            f"--data_dir={root}`."
        )
    return _prepare(builder, settings, config)


def _prepare(builder, settings, config) -> tfds.core.DatasetBuilder:
    try:
        # TFDS prints its progress and "Dataset ... prepared" to stdout; stdout is where the
        # commands write their results (`adamlab train` prints result JSON), so to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            builder.download_and_prepare(download_config=config)
    except Exception:
        # Another process may have prepared the same data_dir at the same time (TFDS renames a
        # finished temporary folder into place; the second rename fails). Then use its result.
        fresh = tfds.builder(settings.name, data_dir=settings.data_dir)
        if not fresh.is_prepared():
            raise
        return fresh
    return builder


def tfds_split(settings: DataSettings, split: str) -> str:
    """The TFDS split string of one of SPLITS, e.g. "validation" -> "train[90%:]"."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; allowed: {', '.join(SPLITS)}.")
    if split == "test":
        return "test"
    if settings.validation_fraction == 0:
        if split == "validation":
            raise ValueError(
                "There is no validation split: validation_fraction is 0. Set "
                "--config.data.validation_fraction to a value in (0, 1)."
            )
        return "train"
    boundary = f"{100 * (1 - settings.validation_fraction):g}%"
    return f"train[:{boundary}]" if split == "train" else f"train[{boundary}:]"


def process_split(split: str, process_index: int, process_count: int, drop_remainder: bool):
    """The slice of `split` that process `process_index` of `process_count` reads."""
    return tfds.split_for_jax_process(
        split,
        process_index=process_index,
        process_count=process_count,
        drop_remainder=drop_remainder,
    )


def read_examples(builder, split, classes: tuple[int, ...] | None) -> tf.data.Dataset:
    """Decoded examples {"image": uint8 [H, W, C], "label": int32} of `split`, in file order.

    With `classes`, only those labels are kept, remapped to 0..len(classes)-1 in that order.
    """
    ds = builder.as_dataset(
        split=split,
        shuffle_files=False,  # File order is fixed: the seed alone decides the order we serve.
        read_config=tfds.ReadConfig(try_autocache=False),  # The pipelines cache, after filtering.
    )
    ds = ds.map(
        lambda ex: {"image": ex["image"], "label": tf.cast(ex["label"], tf.int32)},
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    if classes is None:
        return ds
    table = tf.constant(_label_table(classes, builder.info.features["label"].num_classes))
    ds = ds.map(lambda ex: {**ex, "label": tf.gather(table, ex["label"])})
    return ds.filter(lambda ex: ex["label"] >= 0)


def count_examples(builder, split, classes: tuple[int, ...] | None) -> int:
    """Number of examples `read_examples(builder, split, classes)` yields."""
    if classes is None and not mocked(builder):
        # The prepared metadata's count, as `cardinality()` below reports it, without building
        # a dataset for it at every evaluation.
        count = builder.info.splits[split].num_examples
        if isinstance(count, int) and count > 0:
            return count
    if classes is None:
        cardinality = int(builder.as_dataset(split=split).cardinality())
        if cardinality >= 0:  # Known from the prepared metadata: no pass over the data.
            return cardinality
    ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    batches = tfds.as_numpy(ds.map(lambda ex: ex["label"]).batch(8192))
    labels = np.concatenate([np.zeros(0, np.int64), *batches])
    if classes is None:
        return len(labels)
    return int(np.isin(labels, classes).sum())


def mocked(builder) -> bool:
    """Whether `builder` serves `tfds.testing.mock_data`'s examples, not its prepared files."""
    return type(builder).as_dataset.__module__.startswith("tensorflow_datasets.testing")


def _label_table(classes: tuple[int, ...], num_classes: int) -> np.ndarray:
    """table[original label] = new label, or -1 for a label that is dropped."""
    table = np.full(num_classes, -1, np.int32)
    table[list(classes)] = np.arange(len(classes), dtype=np.int32)
    return table
