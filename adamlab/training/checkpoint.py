"""Checkpoints of train-state pytrees: Orbax behind one small API, plus what makes a step trusted.

Every orbax call in adamlab is in this module, so an orbax API change touches one file. A step
``<directory>/<step>/`` holds three orbax items written by one `ocp.CheckpointManager`: ``state``
(the pytree, `ocp.args.StandardSave`), ``extra`` (a JSON dict: data position, config...) and
``metrics`` (a JSON dict that ranks the "best" step); then ``adamlab_manifest.json``, the size
and sha256 of every file, written last, once orbax has committed the step.

Why it is more than a `CheckpointManager`:

* **Trust.** A step is used only if its files match its manifest, then only if its floating
  values are finite; otherwise `CheckpointCorruptError`, one line naming the step and the file.
  A step without a manifest (a kill between orbax's commit and the manifest, or a save from
  before manifests) cannot be verified: resuming skips it, with a warning, for an older verified
  step, and uses it (with a warning) only when there is none.
* **Falling back.** `restore_newest_intact` (how a run resumes) walks back to the newest step it
  can trust; a writer moves the skipped steps aside to ``damaged-<step>-<time>`` (never deleted),
  so that the run can save them again. `restore` of "best" or of a step never falls back.
* **Retention is ours**: the last ``max_to_keep`` steps plus the best one, deleted only once a
  newer step is committed and sealed. We read metrics ourselves, so an unreadable metrics file
  costs that step its rank (with a warning) instead of the whole directory.
* **Readers** (``read_only=True``: evaluate, `adamlab.restore`) create, delete and rename
  nothing, and list the directory afresh on every call, so they can read a run that trains. A
  step that the trainer deletes while it is read is looked up again ("latest", "best") or named
  in one line (`CheckpointVanishedError`).
* **Failed saves** (disk full, file size limit) leave no temporary directory behind and raise
  `CheckpointWriteError`, one line naming the file and the cause; earlier steps are intact.
* **Mismatches** are named leaf by leaf before any array is read (orbax would silently cast).
* **Devices.** Arrays restore onto the target's shardings, whatever they were saved with.
* **Multi-host.** Call every method on every process; process 0 alone writes manifests and
  renames, orbax synchronises the rest.

Example::

    with Checkpointer(workdir / "checkpoints", max_to_keep=2, best_metric="val_accuracy") as ckpt:
        if ckpt.latest_step() is not None:  # resume where the last run stopped
            step, state, extra = ckpt.restore_newest_intact(state)
        ...
        ckpt.save(step, state, metrics={"val_accuracy": acc}, extra={"epoch": epoch})
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import operator
import os
import re
import shutil
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from adamlab.training.run_io import atomic_write

__all__ = [
    "Checkpointer",
    "CheckpointCorruptError",
    "CheckpointMismatchError",
    "CheckpointVanishedError",
    "CheckpointWriteError",
]

_STATE, _EXTRA, _METRICS = "state", "extra", "metrics"
MANIFEST_FILE = "adamlab_manifest.json"
_MANIFEST_FORMAT = 1
_DAMAGED_PREFIX = "damaged-"  # Not a step name: a set-aside step is never listed.
_TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax's unfinished saves: <step>.orbax-checkpoint-tmp*
_MAX_DIFF_LINES = 20  # A mismatch lists at most this many leaves, then "... and N more".
_MAX_REASON_CHARS = 300
_RETRIES = 3  # Lookups of "latest"/"best" when the trainer deletes the step being read.
_log = logging.getLogger(__name__)


class _OrbaxNoise(logging.Filter):
    """Drops orbax's warning on every read-only open (the point of a reader, not news) and the
    tracebacks its writer threads log for a failed save (raised again as one line here)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        failed_save = "_SignalingThread.run() raised an exception" in message
        return not (failed_save or message.startswith("Given directory is read only"))


logging.getLogger("absl").addFilter(_OrbaxNoise())


class CheckpointMismatchError(ValueError):
    """A saved state does not match the restore target; the message lists the differing leaves
    (``a/b/c`` paths: missing, unexpected, reshaped, retyped), `differences` holds every line."""

    def __init__(self, message: str, differences: tuple[str, ...] = ()):
        super().__init__(message)
        self.differences = differences


class CheckpointCorruptError(ValueError):
    """A saved step is damaged: a file differs from its manifest, orbax cannot read it, or it
    holds non-finite values. One line: the step, the file, the reason, the intact steps."""

    def __init__(
        self, step: int, file: str, reason: str, *, directory: str = "", intact_steps=None
    ):
        self.step, self.file, self.directory = step, file, directory
        self.reason = _one_line(reason)
        self.intact_steps = intact_steps
        where = os.path.join(directory, str(step), file) if directory else f"{step}/{file}"
        message = f"checkpoint step {step} is damaged: {where}: {self.reason}"
        if intact_steps is not None:
            message += f"; intact steps: {list(intact_steps) or 'none'}"
        super().__init__(message)

    def with_intact_steps(self, intact_steps: tuple[int, ...]) -> CheckpointCorruptError:
        return CheckpointCorruptError(
            self.step, self.file, self.reason, directory=self.directory, intact_steps=intact_steps
        )


class CheckpointVanishedError(FileNotFoundError):
    """A step was deleted (by the writer's retention) while it was being read."""


class CheckpointWriteError(OSError):
    """A save failed (disk full, file too large, permissions); its temporary files are removed
    and earlier steps are intact. One line: the file and the cause."""


class Checkpointer:
    """Saves and restores train-state pytrees with a JSON dict and metrics, in `directory`.

    Args:
        directory: where the step directories live; created by a writer. Reopening resumes.
        max_to_keep: how many of the most recent steps to keep (None keeps every step).
        best_metric: a key of the `metrics` given to `save`; the best step by it is kept even
            when older, and is what ``restore(..., step="best")`` loads.
        best_mode: "max" (accuracy) or "min" (loss). A NaN or missing metric never ranks.
        save_interval_steps: `save` writes only multiples of this (unless forced or preempted).
        async_save: write in a background thread; `save` returns once arrays are on the host.
            `wait_until_finished` (or `close`) commits and seals it.
        read_only: never create, delete or rename anything (evaluate, reports); `save` raises.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int | None = 3,
        best_metric: str | None = None,
        best_mode: str = "max",
        save_interval_steps: int = 1,
        async_save: bool = False,
        read_only: bool = False,
    ):
        if max_to_keep is not None and (not _is_int(max_to_keep) or max_to_keep < 1):
            raise ValueError(
                f"max_to_keep must be a positive int or None (keep all), got {max_to_keep!r}"
            )
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        if best_metric is not None and not isinstance(best_metric, str):
            raise TypeError(f"best_metric must be a metric name (str) or None, got {best_metric!r}")
        if not _is_int(save_interval_steps) or save_interval_steps < 1:
            raise ValueError(
                f"save_interval_steps must be a positive int, got {save_interval_steps!r}"
            )
        self._directory = os.path.abspath(os.fspath(directory))
        self._max_to_keep, self._best_metric, self._best_mode = max_to_keep, best_metric, best_mode
        self._read_only, self._async = bool(read_only), bool(async_save)
        self._options = (
            _read_only_options()
            if self._read_only
            else _writer_options(save_interval_steps, async_save)
        )
        self._manager = self._open_manager()
        self._metrics: dict[int, dict[str, float]] = {}  # Read or saved by this object.
        self._pending: set[int] = set()  # Async saves not yet committed and sealed.
        self._warned: set[str] = set()  # One warning per problem and object.
        self._barriers = 0  # Names the barriers of `_set_aside` uniquely.

    def _open_manager(self) -> ocp.CheckpointManager:
        handlers = {
            _STATE: ocp.handlers.StandardCheckpointHandler(),
            _EXTRA: ocp.handlers.JsonCheckpointHandler(),
            _METRICS: ocp.handlers.JsonCheckpointHandler(filename=_METRICS),  # orbax's layout
        }
        registry = ocp.handlers.create_default_handler_registry(**handlers)
        return ocp.CheckpointManager(
            self._directory, options=self._options, handler_registry=registry
        )

    @property
    def directory(self) -> str:
        return self._directory

    @property
    def read_only(self) -> bool:
        return self._read_only

    # -- writing ----------------------------------------------------------------------------

    def save(
        self,
        step: int,
        state: Any,
        *,
        metrics: Mapping[str, float] | None = None,
        extra: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> bool:
        """Saves `state` (a pytree of arrays and scalars) at `step` if due; returns whether it did.

        Due: `step` is a multiple of `save_interval_steps`, `force` is set (the end of training)
        or orbax saw a preemption; a step already on disk is never rewritten.

        Args:
            metrics: scalars of this step; `best_metric` ranks the steps. None (or {}) leaves the
                step out of the ranking (e.g. a preemption point without validation).
            extra: a JSON dict (nested lists of floats included) returned by `restore`; JSON
                rules apply: tuples come back as lists, dict keys as strings.

        Raises:
            CheckpointWriteError: the write failed (one line; nothing half-written is left).
            PermissionError: this Checkpointer is read-only.
        """
        if self._read_only:
            raise PermissionError(f"Checkpointer({self._directory!r}) is read-only: cannot save")
        step = _check_step(step)
        metrics = _check_metrics(metrics, self._best_metric)
        extra = _check_extra(extra)
        if step in self.all_steps():
            return False
        args = ocp.args.Composite(
            **{
                _STATE: ocp.args.StandardSave(state),
                _EXTRA: ocp.args.JsonSave(extra),
                _METRICS: ocp.args.JsonSave(metrics),
            }
        )
        earlier = set(self._pending)  # Committed once orbax starts a new save.
        try:
            saved = self._manager.save(step, args=args, force=force)
        except Exception as e:
            raise self._write_failed(step, e) from e
        if saved:
            self._metrics[step] = metrics
            self._pending.add(step)
            self._seal(earlier if self._async else earlier | {step})
        return bool(saved)

    def wait_until_finished(self) -> None:
        """Blocks until an asynchronous save is committed, then seals it (manifest, retention)."""
        if self._pending:
            try:
                self._manager.wait_until_finished()
            except Exception as e:
                raise self._write_failed(max(self._pending), e) from e
            self._seal(set(self._pending))

    def close(self) -> None:
        """Finishes pending saves and releases orbax's resources."""
        try:
            self.wait_until_finished()
        finally:
            self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Checkpointer({self._directory!r}, steps={self.all_steps()})"

    def _seal(self, steps: set[int]) -> None:
        """Writes the manifest of each committed step of `steps`, then deletes what retention
        no longer keeps (only now: a step goes once a newer one is committed and sealed)."""
        self._pending -= steps
        if jax.process_index() == 0:
            for step in sorted(steps):
                step_dir = os.path.join(self._directory, str(step))
                manifest = os.path.join(step_dir, MANIFEST_FILE)
                if os.path.isdir(step_dir) and not os.path.exists(manifest):
                    try:
                        _write_manifest(step_dir)
                    except OSError as e:
                        raise CheckpointWriteError(
                            f"could not write {manifest}: {_cause(e)}; step {step} stays "
                            "unverified (a resume will not trust it)"
                        ) from e
        for step in self._steps_to_delete():
            if step in self._manager.all_steps():
                self._manager.delete(step)
            self._metrics.pop(step, None)

    def _steps_to_delete(self) -> list[int]:
        on_disk = [s for s in self.all_steps() if s not in self._pending]
        if self._max_to_keep is None or len(on_disk) <= self._max_to_keep:
            return []
        keep = set(on_disk[-self._max_to_keep :]) | {self.best_step()}
        return [s for s in on_disk if s not in keep]

    def _write_failed(self, step: int, error: BaseException) -> CheckpointWriteError:
        """Removes the unfinished save of `step` (process 0) and returns the one-line error."""
        with contextlib.suppress(Exception):
            self._manager.wait_until_finished()  # Its other writer threads, if any.
        if jax.process_index() == 0:
            _remove_unfinished(self._directory, step)
        self._pending.discard(step)
        where = _file_of(error) or os.path.join(self._directory, str(step))
        return CheckpointWriteError(
            f"could not save checkpoint step {step}: {where}: {_cause(error)}; "
            f"the earlier steps are intact: {self._listed() or 'none'}"
        )

    # -- listing ----------------------------------------------------------------------------

    def all_steps(self) -> list[int]:
        """Every step on disk (listed afresh), plus this object's uncommitted saves, ascending."""
        return sorted(set(self._listed()) | self._pending)

    def _listed(self) -> list[int]:
        """Committed steps: directories named by an int (orbax commits by renaming into one)."""
        try:
            entries = list(os.scandir(self._directory))
        except FileNotFoundError:
            return []
        steps = []
        for entry in entries:
            if not entry.name.isdigit():
                continue
            if entry.is_dir():
                steps.append(int(entry.name))
            else:
                self._warn_once(
                    entry.path,
                    "%s is not a checkpoint (a file where a step directory should be): skipped",
                    entry.path,
                )
        return sorted(steps)

    def latest_step(self) -> int | None:
        """The most recent saved step, or None."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def best_step(self) -> int | None:
        """The step with the best finite `best_metric` (the latest among equals), or None."""
        if self._best_metric is None:
            return None
        sign = 1 if self._best_mode == "max" else -1
        ranked = [
            (sign * value, step)
            for step in self.all_steps()
            if not math.isnan(value := self.metrics(step).get(self._best_metric, math.nan))
        ]
        return max(ranked)[1] if ranked else None

    def metrics(self, step: int | str = "latest") -> dict[str, float]:
        """The metrics saved with `step` (int, "latest" or "best"); {} if none (or unreadable)."""
        step = self.resolve_step(step)
        if step not in self._metrics:
            self._metrics[step] = self._read_metrics(step)
        return dict(self._metrics[step])

    def _read_metrics(self, step: int) -> dict[str, float]:
        path = os.path.join(self._directory, str(step), _METRICS, _METRICS)
        try:
            with open(path, "rb") as f:
                metrics = json.loads(f.read())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError included
            metrics = e
        if _is_metrics_dict(metrics):
            return metrics
        self._warn_once(
            path,
            "checkpoint step %d: unreadable metrics file %s (%s); the step takes no part in "
            "the best-checkpoint ranking",
            step,
            path,
            _one_line(metrics),
        )
        return {}

    def resolve_step(self, step: int | str) -> int:
        """Turns "latest", "best" or an int into a step on disk, or raises FileNotFoundError."""
        available = self.all_steps()
        where = f"in {self._directory} (available steps: {available or 'none'})"
        if isinstance(step, str) and step == "best" and self._best_metric is None:
            raise ValueError(
                f"step='best' is undefined: the checkpoints in {self._directory} are not "
                "ranked by a metric (best_metric=None); use 'latest' or a step"
            )
        if isinstance(step, str) and step in ("latest", "best"):
            resolved = self.latest_step() if step == "latest" else self.best_step()
            if resolved is None:
                metric = "" if step == "latest" else f" with metric {self._best_metric!r}"
                raise FileNotFoundError(f"No checkpoint{metric} {where}.")
            return resolved
        if not _is_int(step):
            raise ValueError(f"step must be an int, 'latest' or 'best', got {step!r}")
        if int(step) not in available:
            raise FileNotFoundError(f"No checkpoint for step {int(step)} {where}.")
        return int(step)

    # -- reading ----------------------------------------------------------------------------

    def restore(self, target: Any, step: int | str = "latest") -> tuple[Any, dict]:
        """Restores `step` ("latest", "best" or an int) into `target`'s structure, shardings and
        dtypes; returns ``(state, extra)``. See `restore_with_step`."""
        return self.restore_with_step(target, step)[1:]

    def restore_with_step(self, target: Any, step: int | str = "latest") -> tuple[int, Any, dict]:
        """Restores `step` after verifying it; never falls back to another step.

        Args:
            target: a pytree like the saved state, of arrays or `jax.ShapeDtypeStruct`s (with
                ``.sharding`` to place the result; without one, on the first local device).
            step: an int, "latest" or "best" (looked up again if the writer deletes it meanwhile).

        Returns:
            ``(step, state, extra)``: the step read, the state with `target`'s structure, and
            the saved `extra` dict.

        Raises:
            FileNotFoundError: no such step; `CheckpointVanishedError`: it was deleted while read.
            CheckpointMismatchError: the saved tree differs from `target`.
            CheckpointCorruptError: the step is damaged; the message lists the intact steps.
        """
        self.wait_until_finished()
        for attempt in range(_RETRIES):
            resolved = self.resolve_step(step)
            try:
                return resolved, *self._restore_checked(resolved, target)
            except CheckpointVanishedError:
                if not isinstance(step, str) or attempt == _RETRIES - 1:
                    raise
            except CheckpointCorruptError as e:
                raise self._with_intact_steps(e) from None
        raise AssertionError("unreachable")

    def restore_newest_intact(self, target: Any) -> tuple[int, Any, dict]:
        """Restores the newest step that can be trusted: how a run resumes.

        Walks back from the latest step, warning once per step it skips: damaged ones, and
        those without a manifest while an older verified step exists. A writer then moves the
        skipped steps aside (``damaged-<step>-<time>``), so that the run can save them again.

        Returns:
            ``(step, state, extra)``.

        Raises:
            FileNotFoundError: there is no checkpoint.
            CheckpointMismatchError: the newest readable step differs from `target` (a config
                change, not damage: never skipped).
            CheckpointCorruptError: every step is damaged (the error of the newest one).
        """
        self.wait_until_finished()
        self.resolve_step("latest")  # FileNotFoundError if there is none.
        errors: list[CheckpointCorruptError] = []
        unverified: list[int] = []
        for step in reversed(self.all_steps()):
            try:
                if self.verify(step):
                    return self._resume_from(step, target, verified=True)
                _log.warning(
                    "checkpoint step %d has no %s (a run killed before writing it): its files "
                    "cannot be verified, so it is not trusted while an older step can be",
                    step,
                    MANIFEST_FILE,
                )
                unverified.append(step)
            except CheckpointCorruptError as e:
                _log.warning("skipping a damaged step: %s", e)
                errors.append(e)
        for step in unverified:  # No verified step restores: the newest unverified one that does.
            try:
                return self._resume_from(step, target, verified=False)
            except CheckpointCorruptError as e:
                _log.warning("skipping a damaged step: %s", e)
                errors.append(e)
        raise max(errors, key=lambda e: e.step).with_intact_steps(())

    def _resume_from(self, step: int, target: Any, verified: bool) -> tuple[int, Any, dict]:
        """Restores `step`, then moves the newer steps (skipped) aside."""
        state, extra = self._restore_checked(step, target, verified)
        skipped = [s for s in self.all_steps() if s > step]
        if skipped:
            _log.warning(
                "resuming from step %d, the newest checkpoint that can be trusted (skipped: %s)",
                step,
                ", ".join(map(str, skipped)),
            )
            self._set_aside(skipped)
        return step, state, extra

    def restore_extra(self, step: int | str = "latest") -> dict:
        """The `extra` dict saved with `step`, without reading the arrays (checksums verified)."""
        self.wait_until_finished()
        step = self.resolve_step(step)
        try:
            return self._read_extra(step, self.verify(step))
        except CheckpointCorruptError as e:
            raise self._with_intact_steps(e) from None

    def verify(self, step: int) -> bool:
        """Checks `step`'s files against its manifest: True if they match, False if it has none.

        Raises:
            CheckpointCorruptError: a file is missing, resized or changed, or the manifest is
                unreadable.
        """
        step_dir = os.path.join(self._directory, str(step))
        manifest = _read_manifest(step, step_dir, self._directory)
        if manifest is None:
            return False
        for name, expected in sorted(manifest.items()):
            problem = _file_problem(os.path.join(step_dir, name), expected)
            if problem:
                raise CheckpointCorruptError(step, name, problem, directory=self._directory)
        return True

    def intact_steps(self) -> tuple[int, ...]:
        """Steps whose files match their manifest, plus those without one (unverified)."""
        intact = []
        for step in self.all_steps():
            with contextlib.suppress(CheckpointCorruptError):
                self.verify(step)
                intact.append(step)
        return tuple(intact)

    def _restore_checked(
        self, step: int, target: Any, verified: bool | None = None
    ) -> tuple[Any, dict]:
        """One step: verify the manifest (unless done), compare trees, read, refuse non-finite
        values."""
        if verified is None:
            with self._reading(step, MANIFEST_FILE, True):
                verified = self.verify(step)
        if not verified:
            self._warn_once(
                f"unverified {step}",
                "checkpoint step %d in %s has no %s: it is read unverified",
                step,
                self._directory,
                MANIFEST_FILE,
            )
        abstract = jax.tree.map(_abstract_leaf, target)
        state_dir = epath.Path(self._directory) / str(step) / _STATE
        with self._reading(step, f"{_STATE}/_METADATA", verified):
            if not state_dir.exists() and state_dir.parent.exists():
                raise CheckpointMismatchError(
                    f"Checkpoint step {step} in {self._directory} has no {_STATE!r} item; it was "
                    "not written by adamlab.checkpoint.Checkpointer."
                )
            # The handler's metadata, not the manager's: that one also parses the metrics.
            item = ocp.handlers.StandardCheckpointHandler().metadata(state_dir)
        saved = _flat_specs(getattr(item, "tree", item), _saved_spec)
        differences = _diff_trees(saved, _flat_specs(abstract, _target_spec))
        if differences:
            raise CheckpointMismatchError(self._mismatch_message(step, differences), differences)
        extra = self._read_extra(step, verified)  # First: an unreadable one is named exactly.
        args = ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(abstract)})
        with self._reading(step, _STATE, verified):
            state = self._manager.restore(step, args=args)[_STATE]
        bad = _nonfinite_leaves(state)
        if bad:
            listed = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more leaves" if bad[3:] else "")
            raise CheckpointCorruptError(
                step, _STATE, f"non-finite values in {listed}", directory=self._directory
            )
        return state, extra

    def _read_extra(self, step: int, verified: bool) -> dict:
        with self._reading(step, f"{_EXTRA}/metadata", verified):
            args = ocp.args.Composite(**{_EXTRA: ocp.args.JsonRestore()})
            return dict(self._manager.restore(step, args=args)[_EXTRA] or {})

    @contextlib.contextmanager
    def _reading(self, step: int, file: str, verified: bool):
        """Turns an error reading `step` into one line: `CheckpointVanishedError` if the step
        was deleted meanwhile, else (for an unverified step) `CheckpointCorruptError` naming the
        file. A verified step's files are as saved: other errors there propagate unchanged."""
        try:
            yield
        except CheckpointMismatchError:
            raise
        except Exception as e:
            if self._vanished(step, e):
                raise CheckpointVanishedError(
                    f"checkpoint step {step} in {self._directory} vanished while it was read "
                    "(the training run's retention deletes old steps); steps now: "
                    f"{self.all_steps() or 'none'}"
                ) from None
            if verified or isinstance(e, CheckpointCorruptError):
                raise
            step_dir = os.path.join(self._directory, str(step))
            name = _file_in_message(str(e), step_dir) or file
            reason = f"unreadable ({type(e).__name__}: {str(e).strip() or 'no detail'})"
            raise CheckpointCorruptError(step, name, reason, directory=self._directory) from None

    def _vanished(self, step: int, error: BaseException) -> bool:
        """Whether `step` is gone; waits up to 1 s for a deletion that `error` suggests (a
        missing file) to finish removing the directory."""
        step_dir = os.path.join(self._directory, str(step))
        text = f"{type(error).__name__} {error}".lower()
        suggests = any(w in text for w in ("not found", "no such file", "not_found", "missing"))
        deadline = time.monotonic() + (1.0 if suggests else 0.0)
        while os.path.isdir(step_dir) and time.monotonic() < deadline:
            time.sleep(0.05)
        return not os.path.isdir(step_dir)

    def _with_intact_steps(self, error: CheckpointCorruptError) -> CheckpointCorruptError:
        return error.with_intact_steps(tuple(s for s in self.intact_steps() if s != error.step))

    def _set_aside(self, steps: list[int]) -> None:
        """Renames `steps` to ``damaged-<step>-<time>`` (writers only; nothing is deleted)."""
        if self._read_only:
            return
        if jax.process_index() == 0:
            stamp = time.strftime("%Y%m%dT%H%M%S")
            for step in steps:
                aside = os.path.join(self._directory, f"{_DAMAGED_PREFIX}{step}-{stamp}")
                os.rename(os.path.join(self._directory, str(step)), aside)
                _log.warning("moved checkpoint step %d aside to %s", step, aside)
        self._barriers += 1  # Every process sets aside the same steps: the same barrier name.
        ocp.multihost.sync_global_processes(f"adamlab_set_aside_{self._barriers}")
        self._manager.close()  # orbax lists steps once, when opened: reopen it.
        self._manager = self._open_manager()
        for step in steps:
            self._metrics.pop(step, None)

    def _mismatch_message(self, step: int, differences: tuple[str, ...]) -> str:
        shown = list(differences[:_MAX_DIFF_LINES])
        if len(differences) > _MAX_DIFF_LINES:
            shown.append(f"... and {len(differences) - _MAX_DIFF_LINES} more")
        return (
            f"Checkpoint step {step} in {self._directory} does not match the restore target "
            f"({len(differences)} differing leaves). The likely cause is a model or optimizer "
            "config that differs from the run that wrote it (layer sizes, optimizer, param "
            "dtype).\n  " + "\n  ".join(shown)
        )

    def _warn_once(self, key: str, message: str, *args) -> None:
        if key not in self._warned:
            self._warned.add(key)
            _log.warning(message, *args)


def _writer_options(save_interval_steps: int, async_save: bool) -> ocp.CheckpointManagerOptions:
    """A writer saves at intervals or on preemption and keeps every step (retention is ours);
    it removes unfinished saves that a crash left behind when it opens the directory."""
    return ocp.CheckpointManagerOptions(
        save_decision_policy=ocp.checkpoint_managers.AnySavePolicy(
            [
                ocp.checkpoint_managers.FixedIntervalPolicy(save_interval_steps),
                ocp.checkpoint_managers.PreemptionCheckpointingPolicy(),
            ]
        ),
        preservation_policy=ocp.checkpoint_managers.LatestN(n=None),
        cleanup_tmp_directories=True,
        enable_async_checkpointing=async_save,
        lightweight_initialize=True,  # Metrics are read by us, tolerantly.
        create=True,
    )


def _read_only_options() -> ocp.CheckpointManagerOptions:
    """A reader creates and cleans up nothing (an unfinished save may be a live trainer's);
    save_interval_steps=0 and max_to_keep=None are what read_only forces (spares its warnings)."""
    return ocp.CheckpointManagerOptions(
        read_only=True,
        create=False,
        cleanup_tmp_directories=False,
        save_interval_steps=0,
        max_to_keep=None,
        lightweight_initialize=True,
    )


# -- integrity ----------------------------------------------------------------------------------


def _digest(path: str) -> tuple[int, str]:
    """(size, sha256 hex) of a file, read in 1 MiB blocks."""
    sha, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            sha.update(block)
            size += len(block)
    return size, sha.hexdigest()


def _write_manifest(step_dir: str) -> None:
    """Writes ``<step_dir>/adamlab_manifest.json``: {relative path: size, sha256} of every file."""
    files = {}
    for root, _, names in os.walk(step_dir):
        for name in names:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, step_dir).replace(os.sep, "/")
            if relative != MANIFEST_FILE and not name.startswith(f".{MANIFEST_FILE}"):
                size, sha256 = _digest(path)
                files[relative] = {"size": size, "sha256": sha256}
    manifest = {"format": _MANIFEST_FORMAT, "files": dict(sorted(files.items()))}
    atomic_write(os.path.join(step_dir, MANIFEST_FILE), json.dumps(manifest, indent=1) + "\n")


def _read_manifest(step: int, step_dir: str, directory: str) -> dict[str, dict] | None:
    """The ``files`` of a step's manifest, or None if it has none."""
    try:
        with open(os.path.join(step_dir, MANIFEST_FILE), "rb") as f:
            manifest = json.loads(f.read())
        files = manifest["files"]
        if manifest.get("format") != _MANIFEST_FORMAT or not all(
            isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str)
            for v in files.values()
        ):
            raise ValueError(f"not an adamlab manifest of format {_MANIFEST_FORMAT}")
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointCorruptError(
            step, MANIFEST_FILE, f"unreadable manifest ({e})", directory=directory
        ) from None
    return files


def _file_problem(path: str, expected: Mapping[str, Any]) -> str | None:
    """What is wrong with a file compared with its manifest entry, or None."""
    try:
        size, sha256 = _digest(path)
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    if size != expected["size"]:
        return f"{size} bytes instead of the {expected['size']} saved (truncated or overwritten)"
    if sha256 != expected["sha256"]:
        return "sha256 differs from the one saved (its bytes changed on disk)"
    return None


def _file_in_message(message: str, step_dir: str) -> str | None:
    """The most specific path inside `step_dir` that an error message names, relative to it
    (tensorstore names the database directory, then the data file that failed)."""
    prefix = re.escape(step_dir.rstrip("/") + "/")
    paths = [p.rstrip("./") for p in re.findall(prefix + r"([^\s'\",:;\]\[)(]+)", message)]
    return max(paths, key=len) if any(paths) else None


def _remove_unfinished(directory: str, step: int) -> None:
    """Removes ``<step>.orbax-checkpoint-tmp*``, again until it stays away: writes that were
    in flight when the save failed (tensorstore's) may recreate it for a moment."""
    quiet, deadline = 0, time.monotonic() + 5
    while quiet < 3 and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            names = [n for n in os.listdir(directory) if n.startswith(f"{step}{_TMP_SUFFIX}")]
            for name in names:
                shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
            quiet = 0 if names else quiet + 1
        time.sleep(0.05)


def _file_of(error: BaseException) -> str | None:
    """The file an OSError in `error`'s chain names, or the last path a message quotes."""
    while error is not None:
        if isinstance(error, OSError) and error.filename:
            return os.fspath(error.filename)
        quoted = re.findall(r'"(/[^"]+)"', str(error))
        if quoted:
            return quoted[-1]
        error = error.__cause__ or error.__context__
    return None


def _cause(error: BaseException) -> str:
    """`error`'s reason in one line: the OS's words for its errno (from an OSError, or the
    ``os_error_code`` tensorstore reports), else its message's first line."""
    chained = error
    while chained is not None:
        code = getattr(chained, "errno", None) if isinstance(chained, OSError) else None
        found = re.search(r"os_error_code='(\d+)'", str(chained))
        code = code or (int(found.group(1)) if found else None)
        if code:
            return f"{os.strerror(code)} ({errno.errorcode.get(code, code)})"
        chained = chained.__cause__ or chained.__context__
    lines = str(error).strip().splitlines()
    return _one_line(f"{type(error).__name__}: {lines[0] if lines else 'no detail'}")


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())[:_MAX_REASON_CHARS]


def _nonfinite_leaves(tree: Any) -> list[str]:
    """Paths of the floating leaves of `tree` that hold a NaN or an infinity."""
    paths, arrays, bad = [], [], []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jnp.inexact):
            paths.append(_path_str(path))
            arrays.append(leaf)
        elif isinstance(leaf, np.ndarray | np.inexact | float) and np.issubdtype(
            np.asarray(leaf).dtype, np.inexact
        ):
            if not np.isfinite(leaf).all():
                bad.append(_path_str(path))
    if arrays:  # One small program for every jax array (sharded ones included).
        finite = jax.device_get(jax.jit(lambda xs: [jnp.isfinite(x).all() for x in xs])(arrays))
        bad += [path for path, ok in zip(paths, finite, strict=True) if not ok]
    return sorted(bad)


# -- arguments ----------------------------------------------------------------------------------


def _is_int(x: Any) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


def _check_step(step: Any) -> int:
    try:
        step = operator.index(step)
    except TypeError:
        raise TypeError(f"step must be an int, got {type(step).__name__}: {step!r}") from None
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return step


def _check_metrics(metrics: Mapping[str, Any] | None, best_metric: str | None) -> dict:
    """Metrics as a {str: float} dict ({} for None). A non-empty dict must hold `best_metric`:
    its absence is most likely a misspelt name, which would silently disable "best"."""
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a dict of name -> scalar, got {type(metrics).__name__}")
    out = {}
    for name, value in metrics.items():
        if np.size(value) != 1:
            raise TypeError(f"metric {name!r} must be a scalar, got shape {np.shape(value)}")
        out[str(name)] = float(np.asarray(value).reshape(()))
    if out and best_metric is not None and best_metric not in out:
        raise ValueError(
            f"metrics lack best_metric {best_metric!r} (got {sorted(out)}); pass it, or save "
            "with metrics=None (or {}) to leave this step out of the best ranking."
        )
    return out


def _check_extra(extra: Mapping[str, Any] | None) -> dict:
    """`extra` as a dict, checked to be JSON-serialisable now rather than in a writer thread."""
    if extra is None:
        return {}
    if not isinstance(extra, Mapping):
        raise TypeError(f"extra must be a dict, got {type(extra).__name__}")
    try:
        json.dumps(dict(extra))
    except (TypeError, ValueError) as e:
        raise TypeError(
            "extra must be JSON-serialisable (dicts, lists, str, int, float, bool, None; convert "
            f"numpy/jax scalars with int()/float()): {e}"
        ) from None
    return dict(extra)


def _is_metrics_dict(metrics: Any) -> bool:
    return isinstance(metrics, Mapping) and all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
        for k, v in metrics.items()
    )


# -- trees --------------------------------------------------------------------------------------


def _abstract_leaf(x: Any) -> Any:
    """A restore-target leaf: a jax array becomes a ShapeDtypeStruct keeping its sharding; one
    without a sharding goes to the first local device (the saved sharding may name devices that
    do not exist here); numpy arrays and Python scalars stay as they are."""
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    if isinstance(x, jax.ShapeDtypeStruct) and x.sharding is None:
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device)
    return x


def _path_str(path: tuple) -> str:
    """'params/dense/kernel': orbax stores NamedTuples as dicts and tuples as lists, so the path
    (dict keys, attribute names, indices alike), not the node type, identifies a leaf."""
    parts = []
    for key in path:
        attr = next((a for a in ("key", "name", "idx") if hasattr(key, a)), None)
        parts.append(str(getattr(key, attr) if attr else key))
    return "/".join(parts)


def _flat_specs(tree: Any, spec_fn) -> dict[str, tuple[tuple[int, ...], np.dtype | None]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_path_str(path): spec_fn(leaf) for path, leaf in leaves}


def _saved_spec(meta: Any) -> tuple[tuple[int, ...], np.dtype | None]:
    """(shape, dtype) from orbax's metadata; dtype None (any) for a saved Python scalar, which
    restores into whatever scalar dtype the target asks for."""
    if isinstance(meta, ocp.metadata.ScalarMetadata):
        return (), None
    dtype = getattr(meta, "dtype", None)
    return tuple(getattr(meta, "shape", ())), None if dtype is None else np.dtype(dtype)


def _target_spec(leaf: Any) -> tuple[tuple[int, ...], np.dtype | None]:
    """(shape, dtype) as orbax would save `leaf`: a typed PRNG key as its key data."""
    if isinstance(leaf, bool | int | float | complex):
        return (), None
    shape, dtype = tuple(np.shape(leaf)), leaf.dtype
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(shape, dtype))
        return tuple(data.shape), np.dtype(data.dtype)
    return shape, np.dtype(dtype)


def _diff_trees(saved: dict, target: dict) -> tuple[str, ...]:
    """One line per leaf that is missing, unexpected, or of another shape or dtype."""

    def fmt(spec):
        return f"{spec[1] or 'scalar'}{list(spec[0])}"

    lines = [
        f"missing from checkpoint (in target only): {p} {fmt(target[p])}"
        for p in sorted(target.keys() - saved.keys())
    ]
    lines += [
        f"unexpected in checkpoint (not in target): {p} {fmt(saved[p])}"
        for p in sorted(saved.keys() - target.keys())
    ]
    for path in sorted(saved.keys() & target.keys()):
        (s_shape, s_dtype), (t_shape, t_dtype) = saved[path], target[path]
        if s_shape != t_shape:
            lines.append(f"shape differs: {path} checkpoint {s_shape} vs target {t_shape}")
        elif None not in (s_dtype, t_dtype) and s_dtype != t_dtype:
            lines.append(f"dtype differs: {path} checkpoint {s_dtype} vs target {t_dtype}")
    return tuple(lines)
