"""adamlab.data.decoded: a split decoded once, kept in memory and across commands, the same arrays
whatever the cache holds (nothing, a damaged file, a directory that cannot be written)."""

import logging
import os
import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from adamlab import data, runtime
from adamlab.data import decoded, source

SPLIT = "train[:90%]"


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
    config = data.default_data_config()
    config.data_dir = str(tmp_path_factory.mktemp("tfds"))
    return source.load_builder(source.read_settings(config))


@pytest.fixture
def cache(monkeypatch, tmp_path):
    """A fresh process's view: nothing in memory, the cache directory tmp_path/data."""
    monkeypatch.setattr(decoded, "_in_process", type(decoded._in_process)())
    monkeypatch.setattr(decoded, "_unusable", set())
    monkeypatch.setattr(decoded, "_warned", set())
    monkeypatch.delenv(decoded.SWITCH, raising=False)
    monkeypatch.setenv(decoded.DIRECTORY_ENV, str(tmp_path / "data"))
    return tmp_path / "data"


def _decoded_by_tfds(builder, split=SPLIT, classes=None):
    batches = list(tfds.as_numpy(source.read_examples(builder, split, classes).batch(4096)))
    return (
        np.concatenate([b["image"] for b in batches]),
        np.concatenate([b["label"] for b in batches]),
    )


def _forget_in_process(monkeypatch):
    """As the next command would start: the memory empty, only the directory left."""
    monkeypatch.setattr(decoded, "_in_process", type(decoded._in_process)())


def _no_decoding(monkeypatch):
    def refuse(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(decoded, "_decode", refuse)


def test_the_arrays_are_tfds_examples_in_order_and_read_only(builder, cache):
    images, labels = decoded.split_arrays(builder, SPLIT, None)
    want_images, want_labels = _decoded_by_tfds(builder)
    assert images.dtype == np.uint8 and labels.dtype == np.int32
    np.testing.assert_array_equal(images, want_images)
    np.testing.assert_array_equal(labels, want_labels)
    assert not images.flags.writeable and not labels.flags.writeable
    # Filtered and remapped classes are their own entry: labels 0..2 of digits 3, 5, 7.
    images, labels = decoded.split_arrays(builder, SPLIT, (3, 5, 7))
    want_images, want_labels = _decoded_by_tfds(builder, classes=(3, 5, 7))
    np.testing.assert_array_equal(images, want_images)
    np.testing.assert_array_equal(labels, want_labels)
    assert set(np.unique(labels)) == {0, 1, 2}
    assert len(list(cache.glob("*.npz"))) == 2


def test_a_split_is_decoded_once_per_process_and_once_across_commands(builder, cache, monkeypatch):
    first = decoded.split_arrays(builder, SPLIT, None)
    (stored,) = cache.glob("*.npz")
    _no_decoding(monkeypatch)
    assert decoded.split_arrays(builder, SPLIT, None) is first  # The same arrays in memory.
    _forget_in_process(monkeypatch)
    again = decoded.split_arrays(builder, SPLIT, None)  # From the directory.
    assert again is not first
    for got, want in zip(again, first, strict=True):
        np.testing.assert_array_equal(got, want)
        assert not got.flags.writeable
    assert list(cache.glob("*")) == [stored]  # No temporary file left beside it.


def test_other_splits_and_changed_files_are_other_entries(builder, cache):
    train = decoded.split_arrays(builder, SPLIT, None)
    validation = decoded.split_arrays(builder, "train[90%:]", None)
    assert len(train[1]) + len(validation[1]) == builder.info.splits["train"].num_examples
    assert len(list(cache.glob("*.npz"))) == 2
    # Re-preparing the data (new files) misses the key: their modification time differs.
    for instruction in builder.info.splits[SPLIT].file_instructions:
        info = os.stat(instruction.filename)
        os.utime(instruction.filename, ns=(info.st_atime_ns, info.st_mtime_ns + 1))
    decoded.split_arrays(builder, SPLIT, None)
    assert len(list(cache.glob("*.npz"))) == 3


@pytest.mark.parametrize("damage", ["truncated", "bytes changed", "other arrays"])
def test_a_damaged_file_is_decoded_again_and_replaced(builder, cache, monkeypatch, caplog, damage):
    want = decoded.split_arrays(builder, SPLIT, None)
    (stored,) = cache.glob("*.npz")
    decoded.split_arrays(builder, "train[90%:]", None)
    (validation,) = set(cache.glob("*.npz")) - {stored}
    validation.rename(cache.parent / "other.npz")
    raw = stored.read_bytes()
    if damage == "truncated":
        stored.write_bytes(raw[: len(raw) // 2])
    elif damage == "bytes changed":  # In the images' data: zip's CRC-32 catches it.
        middle = len(raw) // 2
        stored.write_bytes(raw[:middle] + bytes([raw[middle] ^ 0xFF]) + raw[middle + 1 :])
    else:  # Readable, of the right shapes, but not decoded from this split's files.
        other = next(f for f in cache.parent.glob("other*.npz"))
        stored.write_bytes(other.read_bytes())
    _forget_in_process(monkeypatch)
    with caplog.at_level(logging.WARNING, logger=decoded.__name__):
        got = decoded.split_arrays(builder, SPLIT, None)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"decoded data: {stored}") or f"could not read {stored}" in line
    assert "decoding the split again" in line
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    _forget_in_process(monkeypatch)
    _no_decoding(monkeypatch)  # Replaced: the next command reads it.
    np.testing.assert_array_equal(decoded.split_arrays(builder, SPLIT, None)[1], want[1])


def test_a_directory_that_cannot_be_written_is_left_after_one_warning(
    builder, cache, monkeypatch, caplog, tmp_path
):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    monkeypatch.setenv(decoded.DIRECTORY_ENV, str(blocker / "data"))
    want = _decoded_by_tfds(builder)
    with caplog.at_level(logging.WARNING, logger=decoded.__name__):
        got = decoded.split_arrays(builder, SPLIT, None)
        decoded.split_arrays(builder, "train[90%:]", None)  # Not tried again.
    (line,) = [r.getMessage() for r in caplog.records]
    assert f"cannot store in {blocker / 'data'}" in line and "memory only" in line
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    assert decoded.directory() is None
    assert blocker.read_text() == "not a directory"


def test_off_by_switch_or_without_a_directory_nothing_is_written(builder, cache, monkeypatch):
    monkeypatch.setenv(decoded.SWITCH, "off")
    assert decoded.directory() is None
    decoded.split_arrays(builder, SPLIT, None)
    monkeypatch.delenv(decoded.SWITCH)
    monkeypatch.delenv(decoded.DIRECTORY_ENV)
    decoded.split_arrays(builder, "train[90%:]", None)
    assert not cache.exists()


def test_mocked_data_is_never_kept(cache):
    with tfds.testing.mock_data(num_examples=12):
        builder = tfds.builder("mnist")
        first = decoded.split_arrays(builder, "test", None)
        second = decoded.split_arrays(builder, "test", None)
    assert first[0].shape == (12, 28, 28, 1)
    assert first is not second and not decoded._in_process
    assert not cache.exists()


def test_a_training_stream_is_the_same_from_the_cache(builder, cache, monkeypatch):
    config = data.default_data_config()
    config.data_dir = str(pathlib.Path(builder.data_dir).parents[1])
    decoding = next(data.train_batches(config, global_batch_size=32, seed=3, start_step=5))
    _forget_in_process(monkeypatch)
    _no_decoding(monkeypatch)
    cached = next(data.train_batches(config, global_batch_size=32, seed=3, start_step=5))
    for key in ("image", "label"):
        np.testing.assert_array_equal(cached[key], decoding[key])
        assert cached[key].dtype == decoding[key].dtype


def test_the_command_keeps_decoded_data_in_the_users_cache_directory(monkeypatch, tmp_path, caplog):
    monkeypatch.delenv(runtime.DATA_CACHE_DIR_ENV, raising=False)
    monkeypatch.delenv(runtime.DATA_CACHE_SWITCH, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert runtime.use_data_cache() == tmp_path / "xdg" / "adamlab" / "data"
    assert os.environ[decoded.DIRECTORY_ENV] == str(tmp_path / "xdg" / "adamlab" / "data")
    assert decoded.directory() == tmp_path / "xdg" / "adamlab" / "data"
    # The user's directory, if it can be used; else off for this process, in one line.
    monkeypatch.setenv(runtime.DATA_CACHE_DIR_ENV, str(tmp_path / "mine"))
    assert runtime.use_data_cache() == tmp_path / "mine"
    (tmp_path / "shared").mkdir(mode=0o777)
    os.chmod(tmp_path / "shared", 0o777)
    monkeypatch.setenv(runtime.DATA_CACHE_DIR_ENV, str(tmp_path / "shared"))
    with caplog.at_level(logging.WARNING, logger=runtime.__name__):
        assert runtime.use_data_cache() is None
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == (
        f"data cache off: {tmp_path / 'shared'}: writable by others; decoding the data in each run"
    )
    assert decoded.directory() is None
    monkeypatch.setenv(runtime.DATA_CACHE_SWITCH, "0")
    monkeypatch.setenv(runtime.DATA_CACHE_DIR_ENV, str(tmp_path / "mine"))
    assert runtime.use_data_cache() is None and decoded.directory() is None


@pytest.mark.parametrize(
    "split",
    ["train", "train[:90%]", "train[90%:]", "test"]
    + [source.process_split("train[90%:]", i, 3, False) for i in range(3)]
    + [source.process_split("train[:90%]", i, 2, True) for i in range(2)],
    ids=str,
)
def test_counts_from_the_metadata_are_those_of_a_pass_over_the_data(builder, split):
    # count_examples reads prepared data's counts from its metadata (no dataset is built at
    # each evaluation); they are the number of examples the split yields.
    counted = sum(1 for _ in source.read_examples(builder, split, None))
    assert source.count_examples(builder, split, None) == counted
    assert builder.info.splits[split].num_examples == counted
