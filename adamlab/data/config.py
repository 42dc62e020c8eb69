"""The data section of an experiment config: defaults, and one validated reading of it.

Other modules never read `data_config` attributes directly: they call `read_settings`, which
checks every field once and says what is allowed when a value is wrong.
"""

import dataclasses
from collections.abc import Sequence

import ml_collections

DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion_mnist", "cifar10")
NUM_CLASSES = 10  # All of DATASETS have 10 classes.


def default_data_config() -> ml_collections.ConfigDict:
    """The default data config (offline `digits`); variants override only what changes."""
    config = ml_collections.ConfigDict()
    config.name = "digits"  # One of DATASETS. `digits` needs no network.
    config.data_dir = ml_collections.config_dict.placeholder(str)  # None -> TFDS default dir.
    config.download = False  # Allow downloading/preparing a missing dataset (digits: always).
    config.validation_fraction = 0.1  # Carved from the end of train: tune on it, report on test.
    config.augment = ml_collections.config_dict.placeholder(bool)  # None -> dataset default.
    config.shuffle_buffer = 10_000  # tf.data shuffle buffer (>= split size: a full shuffle).
    # Keep only these labels, remapped to 0..len-1 in this order (transfer: (0,..,4) -> (5,..,9)).
    config.classes = ml_collections.config_dict.placeholder(tuple)
    return config


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """A checked copy of the data config."""

    name: str
    data_dir: str | None
    download: bool
    validation_fraction: float
    augment: bool | None
    shuffle_buffer: int
    classes: tuple[int, ...] | None


def read_settings(data_config) -> DataSettings:
    """Reads and checks `data_config` (a ConfigDict or anything with those attributes).

    Missing attributes take their `default_data_config()` value.
    """
    defaults = default_data_config()
    get = lambda field: getattr(data_config, field, defaults[field])
    name = get("name")
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset name {name!r}; allowed: {', '.join(DATASETS)}.")
    fraction = get("validation_fraction")
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, int | float)
        or not (0 <= fraction < 1)
    ):
        raise ValueError(f"validation_fraction must be a number in [0, 1), got {fraction!r}.")
    buffer = get("shuffle_buffer")
    if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 1:
        raise ValueError(f"shuffle_buffer must be a positive int, got {buffer!r}.")
    augment = get("augment")
    if augment is not None and not isinstance(augment, bool):
        raise ValueError(f"augment must be True, False or None (dataset default), got {augment!r}.")
    data_dir = get("data_dir")
    return DataSettings(
        name=name,
        data_dir=None if data_dir is None else str(data_dir),
        download=bool(get("download")),
        validation_fraction=float(fraction),
        augment=augment,
        shuffle_buffer=buffer,
        classes=_check_classes(get("classes")),
    )


def _check_classes(classes: Sequence[int] | None) -> tuple[int, ...] | None:
    if classes is None:
        return None
    allowed = f"a non-empty sequence of distinct labels in 0..{NUM_CLASSES - 1}, or None"
    try:
        classes = tuple(classes)
    except TypeError:
        raise ValueError(f"classes must be {allowed}; got {classes!r}.") from None
    valid = all(isinstance(c, int) and not isinstance(c, bool) for c in classes) and all(
        0 <= c < NUM_CLASSES for c in classes
    )
    if not classes or not valid or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be {allowed}; got {classes!r}.")
    return classes
