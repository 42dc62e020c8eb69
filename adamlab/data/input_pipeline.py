"""Training and evaluation batch streams over tf.data, handed over as numpy on the host.

`train_batches`: an infinite, resumable stream of epochs (step k's batch is the same whether the
stream started at 0 or at k); `eval_batches`: one pass, padded with `mask=False` rows.
docs/internals.md gives the seeds, the layouts and why a resume is exact.
"""

import dataclasses
import math
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from adamlab.data import decoded, preprocess, source
from adamlab.data.config import read_settings

LAYOUTS: tuple[str, ...] = ("flat", "pmap")


def steps_per_epoch(info: source.DatasetInfo, global_batch_size: int) -> int:
    """Full training batches per epoch: `info.num_train // global_batch_size`."""
    _check_positive_int("global_batch_size", global_batch_size)
    if global_batch_size > info.num_train:
        raise ValueError(
            f"global_batch_size={global_batch_size} is larger than the {info.num_train} "
            f"training examples of {info.name!r}; use at most {info.num_train}."
        )
    return info.num_train // global_batch_size


def train_batches(data_config, *, seed: int, **options) -> Iterator[dict[str, np.ndarray]]:
    """Infinite, seeded stream of training batches {"image", "label"}, from `start_step` on.

    Args:
      data_config: the data config (see `default_data_config`).
      seed: decides the shuffles and augmentations; same seed, same stream.
      **options: keyword arguments of `train_streams`:
        global_batch_size: examples per step over all processes; each process yields its
          `global_batch_size // process_count`. Must be divisible by devices x processes.
        start_step: first step to yield (0-based); resuming at `k` yields batches `k, k+1, ...`
          of the uninterrupted stream.
        layout: "flat" ([B, H, W, C]) or "pmap" ([num_local_devices, B // devices, H, W, C]).
        num_local_devices, process_index, process_count: default to jax's values.
    """
    (stream,) = train_streams(data_config, seeds=(seed,), **options)
    return stream


def train_streams(
    data_config,
    *,
    global_batch_size: int,
    seeds: Sequence[int],
    start_step: int = 0,
    layout: str = "flat",
    num_local_devices: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> list[Iterator[dict[str, np.ndarray]]]:
    """`train_batches` for each of `seeds`, the streams of the members of one run: each the
    stream its seed alone yields; they share one in-memory copy of the split, decoded once
    (`adamlab.data.decoded`). Arguments as documented in `train_batches`."""
    settings = read_settings(data_config)
    local_batch, devices, index, count = _topology(
        global_batch_size, layout, num_local_devices, process_index, process_count
    )
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
            raise ValueError(f"seed must be an int, got {seed!r}.")
    if isinstance(start_step, bool) or not isinstance(start_step, int) or start_step < 0:
        raise ValueError(f"start_step must be an int >= 0, got {start_step!r}.")
    builder = source.load_builder(settings)
    split = source.process_split(
        source.tfds_split(settings, "train"), index, count, drop_remainder=True
    )
    num_examples = source.count_examples(builder, split, settings.classes)
    steps = num_examples // local_batch
    if steps == 0:
        raise ValueError(
            f"global_batch_size={global_batch_size} is larger than the training data: this "
            f"process has {num_examples} examples of {settings.name!r} for a batch of "
            f"{local_batch}. Use a smaller global_batch_size."
        )
    start_epoch, skip_steps = divmod(start_step, steps)
    spec = preprocess.AUGMENTATION[settings.name]
    do_augment = spec.default_on if settings.augment is None else settings.augment
    images, labels = _in_memory(builder, split, settings.classes)

    def finish(batch):
        image = preprocess.normalize(batch["image"], settings.name)
        return _apply_layout({"image": image, "label": batch["label"]}, layout, devices)

    streams = []
    for seed in seeds:
        order = _EpochOrder(
            stream_seed=preprocess.fold_in(tf.constant([seed, 0], tf.int64), index),
            shuffle_buffer=settings.shuffle_buffer,
            start_epoch=start_epoch,
            skip=skip_steps * local_batch,
            batch=local_batch,
        )
        if do_augment:
            batches = _augmented_batches(images, labels, order, spec)
        else:
            batches = _gathered_batches(images, labels, order)
        ds = batches.map(finish, num_parallel_calls=tf.data.AUTOTUNE)
        streams.append(iter(tfds.as_numpy(_without_tuning_thread(ds.prefetch(tf.data.AUTOTUNE)))))
    return streams


def _without_tuning_thread(ds: tf.data.Dataset) -> tf.data.Dataset:
    """`ds` without tf.data's autotuning thread, which a closing stream waits for, up to a
    minute (docs/performance.md). Without it, `AUTOTUNE` parallelism is the number of cores
    and prefetch buffers grow when the consumer waits; same elements, same order."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


@dataclasses.dataclass(frozen=True)
class _EpochOrder:
    """Which examples a stream serves, in which order: epoch `e` (from `start_epoch` on) is
    the split shuffled with a seed from (`stream_seed`, e), its first epoch skipping `skip`
    examples (a resumed stream), cut into `batch`-sized batches without a remainder."""

    stream_seed: tf.Tensor
    shuffle_buffer: int
    start_epoch: int
    skip: int
    batch: int

    def epoch_seed(self, epoch: tf.Tensor) -> tf.Tensor:
        return preprocess.fold_in(self.stream_seed, epoch)

    def shuffled(self, ds: tf.data.Dataset, epoch: tf.Tensor) -> tf.data.Dataset:
        """`ds` in epoch `epoch`'s order, from the resume point. tf.data's shuffle draws its
        order from the seed, the buffer size and the element count alone, so the split's
        examples and their indices `0..n-1` come out in the same order."""
        # Traced into the flat_map's function graph, which inherits TF's global seed; shuffle would
        # pair it with our op seed, so a `tf.random.set_seed` elsewhere would change the stream.
        tf.compat.v1.get_default_graph().seed = None
        ds = ds.shuffle(
            self.shuffle_buffer,
            seed=preprocess.fold_in(self.epoch_seed(epoch), 0)[0],
            reshuffle_each_iteration=False,
        )
        skip = tf.constant(self.skip, tf.int64)
        return ds.skip(tf.where(epoch == self.start_epoch, skip, tf.constant(0, tf.int64)))

    def epochs(self, one_epoch) -> tf.data.Dataset:
        """The infinite stream: `one_epoch(epoch)`'s batches for epoch start_epoch, +1, ..."""
        return tf.data.Dataset.counter(self.start_epoch).flat_map(one_epoch)


def _gathered_batches(images: tf.Tensor, labels: tf.Tensor, order: _EpochOrder):
    """Batches of an in-memory split: the shuffle runs over indices, each batch is one gather.

    The same batches as shuffling the examples themselves (`_EpochOrder.shuffled`), at a
    fraction of the cost: per example tf.data moves an int64, not an image, and the batch is
    assembled by one `tf.gather` (MNIST: 784 bytes per image, several streams in a benchmark).
    """
    indices = tf.data.Dataset.range(int(labels.shape[0]))

    def one_epoch(epoch):
        return order.shuffled(indices, epoch).batch(order.batch, drop_remainder=True)

    gather = lambda idx: {"image": tf.gather(images, idx), "label": tf.gather(labels, idx)}
    return order.epochs(one_epoch).map(gather, num_parallel_calls=tf.data.AUTOTUNE)


def _augmented_batches(images: tf.Tensor, labels: tf.Tensor, order: _EpochOrder, spec):
    """Batches of examples augmented one by one, each with a stateless seed from (epoch seed,
    the example's index in the split): the same image every time that example is served in
    that epoch of that stream, whatever the resume point."""
    examples = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})
    examples = examples.enumerate()

    def one_epoch(epoch):
        aug_seed = preprocess.fold_in(order.epoch_seed(epoch), 1)
        augment = lambda i, ex: {
            "image": preprocess.augment(ex["image"], preprocess.fold_in(aug_seed, i), spec),
            "label": ex["label"],
        }
        ds = order.shuffled(examples, epoch).map(augment, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.batch(order.batch, drop_remainder=True)

    return order.epochs(one_epoch)


def _in_memory(builder, split, classes) -> tuple[tf.Tensor, tf.Tensor]:
    """The split's images [n, H, W, C] uint8 and labels [n] int32, in memory (MNIST's train
    split: 42 MB), decoded once (`adamlab.data.decoded`)."""
    images, labels = decoded.split_arrays(builder, split, classes)
    return tf.convert_to_tensor(images), tf.convert_to_tensor(labels)


def eval_batches(
    data_config,
    *,
    split: str,
    global_batch_size: int,
    layout: str = "flat",
    num_local_devices: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over `split` ("train", "validation" or "test") in padded, masked batches.

    Each process reads its slice of the split; the union over processes is every example of
    the split exactly once (where `mask` is True). Padding: zero images, label 0, mask False.
    """
    settings = read_settings(data_config)
    local_batch, devices, index, count = _topology(
        global_batch_size, layout, num_local_devices, process_index, process_count
    )
    builder = source.load_builder(settings)
    full_split = source.tfds_split(settings, split)
    slices = [source.process_split(full_split, i, count, False) for i in range(count)]
    sizes = [source.count_examples(builder, s, settings.classes) for s in slices]
    num_batches = math.ceil(max(sizes) / local_batch)  # The same on every process.

    image_shape = builder.info.features["image"].shape
    images, labels = _in_memory(builder, slices[index], settings.classes)
    ds = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})
    ds = ds.map(
        lambda ex: {
            "image": preprocess.normalize(ex["image"], settings.name),
            "label": ex["label"],
            "mask": tf.constant(True),
        },
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    padding = {
        "image": tf.zeros(image_shape, tf.float32),
        "label": tf.constant(0, tf.int32),
        "mask": tf.constant(False),
    }
    ds = ds.concatenate(
        tf.data.Dataset.from_tensors(padding).repeat(num_batches * local_batch - sizes[index])
    )
    ds = ds.batch(local_batch, drop_remainder=True)
    ds = ds.map(lambda b: _apply_layout(b, layout, devices)).prefetch(tf.data.AUTOTUNE)
    return iter(tfds.as_numpy(_without_tuning_thread(ds)))


def _topology(global_batch_size, layout, num_local_devices, process_index, process_count):
    """Checks the batch/device/process arguments; returns (local_batch, devices, index, count)."""
    import jax  # Local import: only the defaults need jax.

    if layout not in LAYOUTS:
        raise ValueError(f"Unknown layout {layout!r}; allowed: {', '.join(LAYOUTS)}.")
    devices = jax.local_device_count() if num_local_devices is None else num_local_devices
    count = jax.process_count() if process_count is None else process_count
    index = jax.process_index() if process_index is None else process_index
    _check_positive_int("global_batch_size", global_batch_size)
    _check_positive_int("num_local_devices", devices)
    _check_positive_int("process_count", count)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        raise ValueError(f"process_index must be an int in [0, {count}), got {index!r}.")
    shards = devices * count
    if global_batch_size % shards:
        raise ValueError(
            f"global_batch_size={global_batch_size} is not divisible by num_local_devices="
            f"{devices} x process_count={count} = {shards}; use a multiple of {shards}, e.g. "
            f"{max(shards, global_batch_size // shards * shards)}."
        )
    return global_batch_size // count, devices, index, count


def _apply_layout(batch, layout, devices):
    """Leaves a batch as is ("flat") or splits its leading axis into [devices, per_device]."""
    if layout == "flat":
        return batch
    return {k: tf.reshape(v, [devices, -1, *v.shape[1:]]) for k, v in batch.items()}


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
