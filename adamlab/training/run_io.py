"""What a run leaves in its workdir: the config that produced it and its metrics.

A workdir holds

* `config.json`: the full config of the run, written before training starts. A run started
  again in the same workdir is compared with it, so that two different experiments never mix
  in one directory (only the training length may change, to extend a run).
* `metrics.jsonl`: one JSON object per line, `{"step": ..., "split": "train"|"validation"|
  "test", <metric>: <value>, ...}`, easy to read with `pandas.read_json(path, lines=True)` or
  `read_metrics`.
* TensorBoard event files (`tensorboardX`, which needs no TensorFlow) with the same scalars
  under `<split>/<metric>`.
* `checkpoints/` (see `adamlab.checkpoint`) and `eval_<split>_<step>.json` from
  `adamlab evaluate`.

On resume, metrics logged after the restored step by the interrupted run are dropped (from the
JSON lines and, via `purge_step`, from TensorBoard), so the files describe exactly one
trajectory.
"""

from __future__ import annotations

import json
import numbers
import os
import pathlib
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections
import numpy as np

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"

# Config fields that may differ when a run is started again in its workdir: they change how
# long it trains or how it reports progress, never the trajectory up to the restored step.
RESUMABLE_CHANGES = ("train.num_steps", "train.num_epochs", "train.progress_bar")
# How the processes find each other (`adamlab.distributed`) differs per process and may change
# between a run and its resumption (e.g. resumed on more hosts): never part of the comparison.
PROCESS_FIELDS = "distributed"
# Fields added after runs were already written: a saved config.json without them matches a
# config that leaves them at these defaults (which reproduce what those runs did).
ADDED_FIELDS: dict[str, Any] = {"optimizer.mu_dtype": None, "train.shard_optimizer": False}


class ConfigMismatchError(ValueError):
    """A workdir already holds a run with a different config."""


def config_to_dict(config: ml_collections.ConfigDict | Mapping) -> dict[str, Any]:
    """The config as plain JSON types (tuples become lists), as `config.json` holds it."""
    if isinstance(config, ml_collections.ConfigDict):
        config = config.to_dict()
    return json.loads(json.dumps(config, default=_json_default))


def write_config(workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> None:
    """Writes `workdir/config.json` (atomically: a crash never leaves half a file)."""
    text = json.dumps(config_to_dict(config), indent=2, sort_keys=True) + "\n"
    _atomic_write(pathlib.Path(workdir) / CONFIG_FILE, text)


def read_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """Reads `workdir/config.json` back into a ConfigDict (lists where the file had tuples)."""
    path = pathlib.Path(workdir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} does not exist: {str(workdir)!r} is not a run workdir"
        )
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def config_differences(saved: Mapping, given: Mapping, prefix: str = "") -> list[tuple]:
    """`(dotted.field, saved value, given value)` for every field that differs (or is missing)."""
    differences = []
    for key in sorted(set(saved) | set(given)):
        name = f"{prefix}{key}"
        a, b = saved.get(key, "<missing>"), given.get(key, "<missing>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            differences += config_differences(a, b, prefix=f"{name}.")
        elif a != b:
            differences.append((name, a, b))
    return differences


def check_resumable(workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> bool:
    """Checks that `config` may continue the run in `workdir`; True if one is there.

    Raises:
      ConfigMismatchError: the saved config differs in a field other than `RESUMABLE_CHANGES`.
    """
    path = pathlib.Path(workdir) / CONFIG_FILE
    if not path.is_file():
        return False
    saved = json.loads(path.read_text())
    differences = config_differences(saved, config_to_dict(config))
    refused = [d for d in differences if not _may_differ(*d)]
    if refused:
        lines = "\n".join(f"  {name}: {a!r} (saved) != {b!r} (given)" for name, a, b in refused)
        raise ConfigMismatchError(
            f"workdir {str(workdir)!r} holds a run with a different config:\n{lines}\n"
            f"Use a new --workdir for a new experiment; to continue this run only "
            f"{', '.join(RESUMABLE_CHANGES)} may change."
        )
    return True


def _may_differ(name: str, saved: Any, given: Any) -> bool:
    if name in RESUMABLE_CHANGES or name.split(".")[0] == PROCESS_FIELDS:
        return True
    return name in ADDED_FIELDS and saved == "<missing>" and given == ADDED_FIELDS[name]


class MetricWriter:
    """Writes scalar metrics to `metrics.jsonl` and TensorBoard, in one call.

    Args:
      workdir: the run directory.
      resume_step: the step the run (re)starts from: lines logged with a larger step, by an
        earlier attempt that did not get further, are dropped (all of them for 0). None keeps
        the file as it is (a directory no earlier attempt wrote to).
    """

    def __init__(self, workdir: str | os.PathLike, *, resume_step: int | None = None):
        import tensorboardX  # Imported here: only runs that log need it (~0.1 s import).

        self.path = pathlib.Path(workdir) / METRICS_FILE
        if resume_step is not None:
            _drop_lines_after(self.path, resume_step)
        purge = None if resume_step is None else resume_step + 1
        self._tb = tensorboardX.SummaryWriter(str(workdir), purge_step=purge, flush_secs=30)
        self._file = self.path.open("a")

    def write(self, step: int, split: str, metrics: Mapping[str, Any]) -> None:
        """Appends one line `{"step", "split", **metrics}`; scalars also go to TensorBoard."""
        record = {"step": int(step), "split": split}
        record.update({k: _to_python(v) for k, v in metrics.items()})
        self._file.write(json.dumps(record, default=_json_default) + "\n")
        self._file.flush()
        for name, value in record.items():
            if name not in ("step", "split") and _is_scalar(value):
                self._tb.add_scalar(f"{split}/{name}", value, int(step))

    def close(self) -> None:
        self._file.close()
        self._tb.close()

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def read_metrics(workdir: str | os.PathLike, split: str | None = None) -> list[dict]:
    """The records of `metrics.jsonl` (all, or those of one split), in order."""
    path = pathlib.Path(workdir) / METRICS_FILE
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if split is None or r["split"] == split]


def write_json(path: str | os.PathLike, data: Mapping) -> None:
    """Writes `data` as indented JSON (atomically), numpy values converted."""
    _atomic_write(pathlib.Path(path), json.dumps(data, indent=2, default=_json_default) + "\n")


def _drop_lines_after(path: pathlib.Path, step: int) -> None:
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
    if len(kept) != len(lines):
        _atomic_write(path, "".join(kept))


def _atomic_write(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
