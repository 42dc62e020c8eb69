"""What a run leaves in its workdir: the config that produced it and its metrics.

`config.json` (a different config is refused), `metrics.jsonl` (one JSON record per line),
TensorBoard scalars, `checkpoints/`; written atomically or repaired on resume so the files
describe exactly one trajectory. docs/internals.md describes the files and torn writes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import numbers
import os
import pathlib
import secrets
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from adamlab import config_dict
from adamlab.training.workdir_lock import WorkdirBusyError, WorkdirLock, naming

__all__ = [
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "METRICS_FILE",
    "ConfigMismatchError",
    "MetricWriter",
    "RunDirError",
    "WorkdirBusyError",
    "WorkdirLock",
    "atomic_write",
    "check_resumable",
    "config_differences",
    "config_to_dict",
    "drop_records_after",
    "prepare_workdir",
    "read_config",
    "read_jsonl",
    "read_metrics",
    "write_config",
    "write_json",
]

_log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"

# Config fields that may differ when a run is started again in its workdir: they change how
# long it trains or how it reports progress, never the trajectory up to the restored step.
RESUMABLE_CHANGES = ("train.num_steps", "train.num_epochs", "train.progress_bar")
# How the processes find each other (`config.distributed`, read by
# `adamlab.training.distributed`) differs per process and may change between a run and its
# resumption (e.g. resumed on more hosts): never part of the comparison.
PROCESS_FIELDS = "distributed"
_MISSING = "<missing>"  # A field one of two compared configs lacks.


class ConfigMismatchError(ValueError):
    """A workdir already holds a run with a different config."""


class RunDirError(ValueError):
    """A workdir, or a file in it, cannot be used: the message names the path and the problem."""


def prepare_workdir(workdir: str | os.PathLike) -> pathlib.Path:
    """Creates `workdir` if needed and checks that files can be written in it; call it before
    writing anything there.

    Raises:
        RunDirError: `workdir` (or a parent) is a file, or it cannot be created or written to
            (read-only filesystem, permissions).
    """
    path = pathlib.Path(workdir)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"workdir {str(path)!r} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        # A real write, not os.access: it also catches read-only mounts and full quotas.
        with tempfile.TemporaryFile(dir=path):
            pass
    except (FileExistsError, NotADirectoryError) as e:
        raise RunDirError(
            f"cannot create workdir {str(path)!r}: {e.filename!r} is a file"
        ) from None
    except OSError as e:
        raise RunDirError(
            f"workdir {str(path)!r} is not writable: {e.strerror or e} "
            "(read-only filesystem or permissions)"
        ) from None
    return path


def config_to_dict(config: ml_collections.ConfigDict | Mapping) -> dict[str, Any]:
    """The config as plain JSON types (tuples become lists), as `config.json` holds it."""
    if isinstance(config, ml_collections.ConfigDict):
        config = config.to_dict()
    return json.loads(json.dumps(config, default=_json_default))


def write_config(workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> None:
    """Writes `workdir/config.json` (atomically: a crash never leaves half a file)."""
    text = json.dumps(config_to_dict(config), indent=2, sort_keys=True) + "\n"
    atomic_write(pathlib.Path(workdir) / CONFIG_FILE, text)


def read_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """Reads `workdir/config.json` back into a ConfigDict (lists where the file had tuples).

    Raises:
        FileNotFoundError: there is no config.json (not a run workdir).
        RunDirError: config.json is not a JSON object (damaged).
    """
    path = pathlib.Path(workdir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} does not exist: {str(workdir)!r} is not a run workdir"
        )
    return ml_collections.ConfigDict(_load_config_json(path))


def _load_config_json(path: pathlib.Path) -> dict:
    """config.json as a dict, or a RunDirError naming the file (never a bare JSONDecodeError)."""
    try:
        data = json.loads(path.read_bytes())
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise RunDirError(
            f"{str(path)!r} is damaged ({e}); restore it from a backup or use a new --workdir"
        ) from None
    if not isinstance(data, dict):
        raise RunDirError(
            f"{str(path)!r} is damaged: it holds a {type(data).__name__}, not a config"
        )
    return data


def config_differences(saved: Mapping, given: Mapping, prefix: str = "") -> list[tuple]:
    """`(dotted.field, saved value, given value)` for every field that differs (or is missing)."""
    differences = []
    for key in sorted(set(saved) | set(given)):
        name = f"{prefix}{key}"
        a, b = saved.get(key, _MISSING), given.get(key, _MISSING)
        if a == _MISSING and isinstance(b, Mapping) or b == _MISSING and isinstance(a, Mapping):
            a, b = (a if a != _MISSING else {}), (b if b != _MISSING else {})  # Field by field.
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            differences += config_differences(a, b, prefix=f"{name}.")
        elif a != b:
            differences.append((name, a, b))
    return differences


def check_resumable(workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> bool:
    """Checks that `config` may continue the run in `workdir`; True if one is there.

    Raises:
      ConfigMismatchError: the saved config differs in a field other than `RESUMABLE_CHANGES`.
      RunDirError: the saved config.json is damaged.
    """
    path = pathlib.Path(workdir) / CONFIG_FILE
    if not path.is_file():
        return False
    saved = _load_config_json(path)
    differences = config_differences(saved, config_to_dict(config))
    # The shipped defaults only where fields differ: a resume with the same config runs no
    # config file.
    defaults = _flat(config_to_dict(config_dict.load_config("digits"))) if differences else {}
    refused = [d for d in differences if not _may_differ(*d, defaults)]
    if refused:
        lines = "\n".join(f"  {name}: {a!r} (saved) != {b!r} (given)" for name, a, b in refused)
        raise ConfigMismatchError(
            f"workdir {str(workdir)!r} holds a run with a different config:\n{lines}\n"
            f"Use a new --workdir for a new experiment; to continue this run only "
            f"{', '.join(RESUMABLE_CHANGES)} may change."
        )
    return True


def _may_differ(name: str, saved: Any, given: Any, defaults: Mapping[str, Any]) -> bool:
    """Whether field `name` may differ between the saved run and the given config.

    Besides `RESUMABLE_CHANGES` and the process fields, a field the saved config lacks may be
    given at its default (`configs/digits.py`): it was added to adamlab after the run started,
    and every new field's default reproduces the behaviour from before it existed.
    """
    if name in RESUMABLE_CHANGES or name.split(".")[0] == PROCESS_FIELDS:
        return True
    return saved == _MISSING and name in defaults and given == defaults[name]


def _flat(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """{"dotted.field": value} of a nested config dict."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class MetricWriter:
    """Writes scalar metrics to `metrics.jsonl` and TensorBoard, in one call.

    Args:
      workdir: the run directory.
      resume_step: the step the run (re)starts from: lines logged with a larger step, by an
        earlier attempt that did not get further, are dropped (all of them for 0). None keeps
        the file as it is (a directory no earlier attempt wrote to).
      drop_splits: splits whose records are dropped whatever their step (with a resume_step:
        records written after the checkpoint the run resumes from). Either way a torn last
        line (a crash mid-write) is removed before appending, so that it cannot glue itself to
        the next record.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        resume_step: int | None = None,
        drop_splits: Sequence[str] = (),
    ):
        tensorboardX = _import_tensorboardx()  # Here: only runs that log need it.

        self.path = pathlib.Path(workdir) / METRICS_FILE
        drop_records_after(self.path, resume_step, drop_splits)
        purge = None if resume_step is None else resume_step + 1
        self._tb = tensorboardX.SummaryWriter(str(workdir), purge_step=purge, flush_secs=30)
        self._file = self.path.open("a")

    def write(self, step: int, split: str, metrics: Mapping[str, Any]) -> None:
        """Appends one line `{"step", "split", **metrics}`; scalars also go to TensorBoard."""
        record = {"step": int(step), "split": split}
        record.update({k: _to_python(v) for k, v in metrics.items()})
        with naming(self.path):
            self._file.write(json.dumps(record, default=_json_default) + "\n")
            self._file.flush()
        for name, value in record.items():
            if name not in ("step", "split") and _is_scalar(value):
                self._tb.add_scalar(f"{split}/{name}", value, int(step))

    def close(self) -> None:
        with naming(self.path):
            self._file.close()
        self._tb.close()

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _import_tensorboardx():
    """tensorboardX, imported here (only runs that log need it) and without torch, which its
    writer imports when installed only to accept torch tensors: while it loads, `import torch`
    fails (a `None` entry in `sys.modules`, removed right after). Its NaN warnings are
    silenced: a diverged run logs NaN on purpose (and says so itself)."""
    if "tensorboardX" not in sys.modules and "torch" not in sys.modules:
        sys.modules["torch"] = None  # type: ignore[assignment]
        try:
            import tensorboardX
        finally:
            del sys.modules["torch"]
    import tensorboardX

    logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)
    return tensorboardX


def read_metrics(workdir: str | os.PathLike, split: str | None = None) -> list[dict]:
    """The records of `metrics.jsonl` (all, or those of one split), in order; a torn last line
    is dropped with a warning.

    Raises:
        RunDirError: a line other than the last is not a JSON record (names file and line).
    """
    records = read_jsonl(pathlib.Path(workdir) / METRICS_FILE)
    return [r for r in records if split is None or r["split"] == split]


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The JSON objects of an append-only file, one per line, tolerating a torn last line."""
    return [record for _, record in _jsonl_records(pathlib.Path(path))]


def write_json(path: str | os.PathLike, data: Mapping) -> None:
    """Writes `data` as indented JSON (atomically), numpy values converted."""
    atomic_write(pathlib.Path(path), json.dumps(data, indent=2, default=_json_default) + "\n")


def atomic_write(path: str | os.PathLike, text: str) -> None:
    """Replaces `path` by `text` (written to a file beside it, fsynced, renamed over it) so that
    a crash leaves the old file or the new one, whole. A failure (disk full) removes the
    temporary file and raises an OSError naming `path`."""
    path = pathlib.Path(path)
    with naming(path):
        fd, tmp = _create_beside(path)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    _fsync_directory(path.parent)


def _create_beside(path: pathlib.Path) -> tuple[int, str]:
    """A new file ``.<name>.<random>.tmp`` beside `path`, mode 0666 less the umask (mkstemp's
    would be 0600, unlike the checkpoints and metrics beside it)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        with contextlib.suppress(FileExistsError):
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), str(tmp)


def _fsync_directory(directory: pathlib.Path) -> None:
    """Makes a rename in `directory` durable (best effort: not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _jsonl_records(path: pathlib.Path) -> list[tuple[str, dict]]:
    """(line with its newline, parsed object) for every line of a JSON-lines file. A torn last
    line (cut short, or NUL bytes a filesystem left after a crash) is dropped with a warning;
    an unreadable line elsewhere is a RunDirError naming the file and the line."""
    if not path.is_file():
        return []
    lines = path.read_bytes().splitlines(keepends=True)
    while lines and not lines[-1].strip(b" \t\r\n\0"):  # trailing blank or NUL-only lines
        lines.pop()
    records = []
    for number, raw in enumerate(lines, start=1):
        try:
            record = json.loads(raw.decode())
            if not isinstance(record, dict):
                raise ValueError(f"a {type(record).__name__}, not an object")
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            if number == len(lines):
                _log.warning("%s: dropped a torn last line %d (%r)", path, number, raw[:80])
                break
            raise RunDirError(f"{path}:{number}: not a JSON record ({e})") from None
        records.append((raw.decode().rstrip("\r\n") + "\n", record))
    return records


def drop_records_after(path: pathlib.Path, step: int | None, splits: Sequence[str] = ()) -> None:
    """Rewrites `path` (atomically) without the records after `step` (None: keeps them all),
    with a `step`, without the records of `splits` too, and without a torn last line; leaves it
    untouched when nothing is to be dropped."""
    if not path.is_file():
        return
    records = _jsonl_records(path)
    dropped = lambda r: step is not None and (r["step"] > step or r.get("split") in splits)
    kept = [line for line, record in records if not dropped(record)]
    text = "".join(kept)
    if text.encode() != path.read_bytes():
        atomic_write(path, text)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _to_python(value: Any) -> Any:
    """numpy/jax scalars and arrays -> Python numbers and lists (NaN stays NaN, as Python's
    json writes and reads it)."""
    if hasattr(value, "tolist"):
        return np.asarray(value).tolist()
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic | np.ndarray) or hasattr(value, "__array__"):
        return np.asarray(value).tolist()
    if isinstance(value, Iterable):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as JSON")
