"""A split's decoded examples as arrays, decoded once: kept for the process, and on disk for the
next command in $ADAMLAB_DATA_CACHE_DIR when it names a directory (the `adamlab` command sets
it: `adamlab.runtime`; ``ADAMLAB_DATA_CACHE=0`` turns it off).

A split becomes (images uint8 [n, H, W, C], labels int32 [n]) once, stored as a `.npz` keyed by
the TFDS files it came from; docs/performance.md says why, what invalidates a file and what
happens to one that cannot be read or written. Mocked TFDS data is never kept.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from adamlab import switches
from adamlab.data import source

SWITCH = "ADAMLAB_DATA_CACHE"
DIRECTORY_ENV = "ADAMLAB_DATA_CACHE_DIR"
_FORMAT = 1  # Of the stored files; part of the key.
_KEPT_IN_PROCESS = 8  # Splits kept in memory: a run's train, validation and test, and more.
_log = logging.getLogger(__name__)
_unusable: set[str] = set()  # Directories a store failed in: not tried again.
_in_process: collections.OrderedDict[str, tuple[np.ndarray, np.ndarray]] = collections.OrderedDict()
_warned: set[str] = set()


def directory() -> Path | None:
    """Where decoded splits are stored across processes, or None (kept in memory only)."""
    value = os.environ.get(DIRECTORY_ENV) or None
    if value is None or str(Path(value)) in _unusable or switches.switched_off(SWITCH):
        return None
    return Path(value)


def split_arrays(builder, split, classes: tuple[int, ...] | None) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of `source.read_examples(builder, split, classes)`, in its order, as
    read-only numpy arrays: from memory, from the directory, or decoded (then kept)."""
    identity = _identity(builder, split, classes)
    if identity is None:
        return _decode(builder, split, classes)
    key = hashlib.sha256(identity.encode()).hexdigest()[:32]
    if key in _in_process:
        _in_process.move_to_end(key)
        return _in_process[key]
    stored = directory()
    arrays = None if stored is None else _load(stored / f"{key}.npz", identity, builder)
    if arrays is None:
        arrays = _decode(builder, split, classes)
        if stored is not None:
            _store(stored / f"{key}.npz", identity, arrays)
    _in_process[key] = arrays
    while len(_in_process) > _KEPT_IN_PROCESS:
        _in_process.popitem(last=False)
    return arrays


def _decode(builder, split, classes) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for batch in source.tfds.as_numpy(source.read_examples(builder, split, classes).batch(8192)):
        images.append(batch["image"])
        labels.append(batch["label"])
    shape = tuple(builder.info.features["image"].shape)
    images = np.concatenate([np.zeros((0, *shape), np.uint8), *images])
    labels = np.concatenate([np.zeros(0, np.int32), *labels])
    return _read_only(images), _read_only(labels)


def _read_only(x: np.ndarray) -> np.ndarray:
    x.setflags(write=False)  # Shared by every caller: nobody may change it.
    return x


def _identity(builder, split, classes) -> str | None:
    """Where the split's examples come from, as JSON, or None when that is not a set of files
    on disk (mocked data, a missing file): then nothing is kept."""
    if source.mocked(builder):
        return None
    try:
        instructions = builder.info.splits[split].file_instructions
        files = []
        for f in instructions:
            stat = os.stat(os.fspath(f.filename))
            where = [os.path.abspath(f.filename), f.skip, f.take]
            files.append([*where, stat.st_size, stat.st_mtime_ns])
    except (OSError, KeyError, ValueError, TypeError, AttributeError):
        return None
    identity = {
        "format": _FORMAT,
        "dataset": builder.info.full_name,
        "split": str(split),
        "classes": None if classes is None else list(classes),
        "files": files,
    }
    return json.dumps(identity, sort_keys=True)


def _load(path: Path, identity: str, builder) -> tuple[np.ndarray, np.ndarray] | None:
    """The arrays stored in `path`, or None when there are none or they cannot be trusted: a
    file holds the identity of the split it was decoded from, and is used for that one only."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            images, labels = stored["images"], stored["labels"]
            theirs = str(stored["identity"]) if "identity" in stored.files else None
    except (FileNotFoundError, NotADirectoryError):
        return None
    except Exception as e:  # A truncated or changed file: zip's or numpy's error.
        _warn_once(f"could not read {path} ({type(e).__name__}: {e}); decoding the split again")
        return None
    shape = tuple(builder.info.features["image"].shape)
    if (
        theirs != identity
        or images.dtype != np.uint8
        or labels.dtype != np.int32
        or images.shape[1:] != shape
        or images.shape[:1] != labels.shape
    ):
        _warn_once(f"{path} does not hold this split's arrays; decoding the split again")
        return None
    return _read_only(images), _read_only(labels)


def _store(path: Path, identity: str, arrays: tuple[np.ndarray, np.ndarray]) -> None:
    """Writes the arrays under a temporary name, then renames it into place (a reader never
    sees half a file; two processes storing the same key write the same bytes)."""
    images, labels = arrays
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
            temporary = f.name
            np.savez(f, images=images, labels=labels, identity=np.array(identity))
        os.replace(temporary, path)
    except OSError as e:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        _warn_once(f"cannot store in {path.parent} ({e.strerror or e}); kept in memory only")
        _unusable.add(str(path.parent))  # Full or read-only: not tried again by this process.


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        _log.warning("decoded data: %s", message)
