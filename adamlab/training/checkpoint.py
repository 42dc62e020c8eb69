"""Checkpoints of train-state pytrees: Orbax behind one small API, and what makes a step trusted.

Every orbax call in adamlab is here. A step directory holds orbax's items ``state``, ``extra``
and ``metrics``, then ``adamlab_manifest.json`` (size and sha256 of every file) written after
orbax's commit; docs/reliability.md says what survives what. Multi-host: call every method on
every process; process 0 alone writes manifests and renames.
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
import pathlib
import re
import shutil
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from adamlab.training.optimizers import path_of
from adamlab.training.run_io import atomic_write

__all__ = [
    "Checkpointer",
    "CheckpointCorruptError",
    "CheckpointMismatchError",
    "CheckpointVanishedError",
    "CheckpointWriteError",
]

MANIFEST_FILE = "adamlab_manifest.json"
_MANIFEST_FORMAT = 1
_MAX_DIFF_LINES = 20
_RETRIES = 3  # Lookups of "latest"/"best" when the writer deletes the step being read.
_log = logging.getLogger(__name__)


def _orbax_noise(record: logging.LogRecord) -> bool:
    """False for orbax's warning on every read-only open (a reader's point) and the tracebacks
    its threads log for a failed save (raised again here as one line)."""
    message = record.getMessage()
    failed_save = "_SignalingThread.run() raised an exception" in message
    return not (failed_save or message.startswith("Given directory is read only"))


logging.getLogger("absl").addFilter(_orbax_noise)


class CheckpointMismatchError(ValueError):
    """A saved state does not match the restore target; `differences` lists every leaf."""

    def __init__(self, message: str, differences: tuple[str, ...] = ()):
        super().__init__(message)
        self.differences = differences


class CheckpointCorruptError(ValueError):
    """A damaged step: one line naming the step, the file, the reason and the intact steps."""

    def __init__(self, step: int, file: str, reason: str, *, directory="", intact_steps=None):
        self.step, self.file, self.directory = step, file, directory
        self.reason, self.intact_steps = _one_line(reason), intact_steps
        message = f"checkpoint step {step} is damaged: {os.path.join(directory, str(step), file)}"
        message += f": {self.reason}"
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
    """A save failed (disk full, file too large); nothing half-written is left."""


class Checkpointer:
    """Saves and restores train-state pytrees, a JSON dict and metrics, in `directory`.

    Args:
        directory: where the step directories live; reopening it resumes.
        max_to_keep: how many of the most recent steps to keep (None: all).
        best_metric: the metric that ranks steps for "best"; the best step is always kept.
        best_mode: "max" (accuracy) or "min" (loss). A NaN or missing metric never ranks.
        save_interval_steps: `save` writes multiples of this (or forced, or at a preemption).
        async_save: write in a background thread; `wait_until_finished` commits and seals.
        read_only: never create, delete or rename anything (evaluate, reports).
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
            raise ValueError(f"max_to_keep must be a positive int or None, got {max_to_keep!r}")
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        if best_metric is not None and not isinstance(best_metric, str):
            raise TypeError(f"best_metric must be a metric name (str) or None, got {best_metric!r}")
        if not _is_int(save_interval_steps) or save_interval_steps < 1:
            raise ValueError(f"save_interval_steps must be a positive int: {save_interval_steps!r}")
        self.directory = os.path.abspath(os.fspath(directory))
        self._keep, self._best_metric, self._best_mode = max_to_keep, best_metric, best_mode
        self.read_only, self._async = bool(read_only), bool(async_save)
        self._options = _manager_options(self.read_only, save_interval_steps, self._async)
        self._manager = self._open_manager()
        self._metrics: dict[int, dict[str, float]] = {}  # Read or saved by this object.
        self._pending: set[int] = set()  # Async saves not yet committed and sealed.
        self._warned: set[str] = set()
        self._barriers = 0

    def _open_manager(self) -> ocp.CheckpointManager:
        registry = ocp.handlers.create_default_handler_registry(
            state=ocp.handlers.StandardCheckpointHandler(),
            extra=ocp.handlers.JsonCheckpointHandler(),
            metrics=ocp.handlers.JsonCheckpointHandler(filename="metrics"),  # orbax's layout
        )
        return ocp.CheckpointManager(
            self.directory, options=self._options, handler_registry=registry
        )

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Checkpointer({self.directory!r}, steps={self.all_steps()})"

    # -- writing ----------------------------------------------------------------------------

    def save(self, step: int, state: Any, *, metrics=None, extra=None, force=False) -> bool:
        """Saves `state` (a pytree) at `step` if due (a multiple of `save_interval_steps`, `force`
        or a preemption) and not on disk yet; returns whether it did. `metrics`: scalars ranking
        the step by `best_metric` (None or {}: unranked). `extra`: a JSON dict (lists of floats
        too) that `restore` returns. Raises CheckpointWriteError if the write fails."""
        if self.read_only:
            raise PermissionError(f"Checkpointer({self.directory!r}) is read-only: cannot save")
        step, metrics, extra = _check_save(step, metrics, extra, self._best_metric)
        if step in self.all_steps():
            return False
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            extra=ocp.args.JsonSave(extra),
            metrics=ocp.args.JsonSave(metrics),
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
        """Blocks until an asynchronous save is committed, then seals it."""
        if self._pending:
            try:
                self._manager.wait_until_finished()
            except Exception as e:
                raise self._write_failed(max(self._pending), e) from e
            self._seal(set(self._pending))

    def close(self) -> None:
        try:
            self.wait_until_finished()
        finally:
            self._manager.close()

    def _seal(self, steps: set[int]) -> None:
        """Writes the manifests of the committed `steps`, then deletes what is not kept."""
        self._pending -= steps
        for step in sorted(steps) if jax.process_index() == 0 else ():
            step_dir = os.path.join(self.directory, str(step))
            manifest = os.path.join(step_dir, MANIFEST_FILE)
            try:
                if os.path.isdir(step_dir) and not os.path.exists(manifest):
                    _write_manifest(step_dir)
            except OSError as e:
                raise CheckpointWriteError(
                    f"could not write {manifest}: {_cause(e)}; step {step} is left unverified"
                ) from e
        on_disk = [s for s in self.all_steps() if s not in self._pending]
        if self._keep is not None and len(on_disk) > self._keep:
            kept = set(on_disk[-self._keep :]) | {self.best_step()}
            for step in (s for s in on_disk if s not in kept):
                if step in self._manager.all_steps():  # Listed when opened, or saved since.
                    self._manager.delete(step)
                self._metrics.pop(step, None)

    def _write_failed(self, step: int, error: BaseException) -> CheckpointWriteError:
        """Removes the unfinished save of `step` and returns the one-line error."""
        with contextlib.suppress(Exception):
            self._manager.wait_until_finished()  # Its other threads, if any.
        _quiet_closed_loop()
        if jax.process_index() == 0:
            _remove_unfinished(self.directory, step)
        with contextlib.suppress(Exception):  # Writes that failed on the removed directory
            self._manager.close()  # (its metadata) end with it: not the next restore's error.
        self._manager = self._open_manager()
        self._pending.discard(step)
        where = _file_of(error) or os.path.join(self.directory, str(step))
        return CheckpointWriteError(
            f"could not save checkpoint step {step}: {where}: {_cause(error)}; "
            f"the earlier steps are intact: {self._listed() or 'none'}"
        )

    # -- listing ----------------------------------------------------------------------------

    def all_steps(self) -> list[int]:
        """Every step on disk (listed afresh) and this object's uncommitted saves, ascending."""
        return sorted(set(self._listed()) | self._pending)

    def _listed(self) -> list[int]:
        """Directories named by an int: committed steps (orbax commits by renaming into one)."""
        with contextlib.suppress(FileNotFoundError):
            entries = [e for e in os.scandir(self.directory) if e.name.isdigit()]
            for e in (e for e in entries if not e.is_dir()):
                why = "%s is not a checkpoint (a file where a step directory should be): skipped"
                self._warn_once(e.path, why, e.path)
            return sorted(int(e.name) for e in entries if e.is_dir())
        return []

    def latest_step(self) -> int | None:
        return max(self.all_steps(), default=None)

    def best_step(self) -> int | None:
        """The step with the best finite `best_metric` (the latest among equals), or None."""
        if self._best_metric is None:
            return None
        sign = 1 if self._best_mode == "max" else -1
        values = [(self.metrics(s).get(self._best_metric, math.nan), s) for s in self.all_steps()]
        ranked = [(sign * value, step) for value, step in values if not math.isnan(value)]
        return max(ranked)[1] if ranked else None

    def metrics(self, step: int | str = "latest") -> dict[str, float]:
        """The metrics saved with `step` (int, "latest" or "best"); {} if none or unreadable."""
        step = self.resolve_step(step)
        if step not in self._metrics:
            path = os.path.join(self.directory, str(step), "metrics", "metrics")
            try:
                metrics = json.loads(pathlib.Path(path).read_bytes())
            except FileNotFoundError:
                metrics = {}
            except (OSError, ValueError) as e:  # JSONDecodeError, UnicodeDecodeError
                metrics = e
            if not isinstance(metrics, dict) or not all(map(_is_number, metrics.values())):
                why = "checkpoint step %d: unreadable metrics file %s (%s); the step takes no part "
                why += "in the best-checkpoint ranking"
                self._warn_once(path, why, step, path, _one_line(metrics))
                metrics = {}
            self._metrics[step] = metrics
        return dict(self._metrics[step])

    def resolve_step(self, step: int | str) -> int:
        """Turns "latest", "best" or an int into a step on disk, or raises FileNotFoundError."""
        available = self.all_steps()
        where = f"in {self.directory} (available steps: {available or 'none'})"
        if isinstance(step, str) and step in ("latest", "best"):
            if step == "best" and self._best_metric is None:
                raise ValueError(
                    f"step='best' is undefined: the checkpoints in {self.directory} are not "
                    "ranked by a metric (best_metric=None); use 'latest' or a step"
                )
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
        """``(state, extra)`` of `step`: `restore_with_step` without the step."""
        return self.restore_with_step(target, step)[1:]

    def restore_with_step(self, target: Any, step: int | str = "latest") -> tuple[int, Any, dict]:
        """``(step, state, extra)`` of `step` (an int, "latest" or "best"), verified, in the
        structure, shardings and dtypes of `target` (arrays or `jax.ShapeDtypeStruct`s; without a
        sharding, on the first local device). Never falls back to another step.

        Raises:
            FileNotFoundError: no such step (`CheckpointVanishedError`: deleted while read);
            CheckpointMismatchError: the saved tree differs; CheckpointCorruptError: damaged.
        """
        self.wait_until_finished()
        for attempt in range(_RETRIES):
            resolved = self.resolve_step(step)
            try:
                with self._reading(resolved, MANIFEST_FILE, True):
                    verified = self.verify(resolved)
                return resolved, *self._restore_checked(resolved, target, verified)
            except CheckpointVanishedError:
                if not isinstance(step, str) or attempt == _RETRIES - 1:
                    raise
            except CheckpointCorruptError as e:
                raise self._with_intact_steps(e) from None
        raise AssertionError("unreachable")

    def restore_newest_intact(self, target: Any) -> tuple[int, Any, dict]:
        """``(step, state, extra)`` of the newest step that can be trusted: how a run resumes.

        Warns once per step it skips (damaged, or unverified while an older step is verified); a
        writer moves them aside (``damaged-<step>-<time>``) so that the run can save them again.
        A mismatch (a config change, not damage) is raised, never skipped.
        """
        self.wait_until_finished()
        self.resolve_step("latest")
        errors, unverified = [], []
        for step in reversed(self.all_steps()):
            try:
                if self.verify(step):
                    return self._resume_from(step, target, verified=True)
                _log.warning(
                    "checkpoint step %d has no %s (a run killed before writing it): its files "
                    "cannot be verified, so an older verified step is preferred",
                    *(step, MANIFEST_FILE),
                )
                unverified.append(step)
            except CheckpointCorruptError as e:
                _log.warning("skipping a damaged step: %s", e)
                errors.append(e)
        for step in unverified:  # No verified step restores: the newest unverified one.
            try:
                return self._resume_from(step, target, verified=False)
            except CheckpointCorruptError as e:
                _log.warning("skipping a damaged step: %s", e)
                errors.append(e)
        raise max(errors, key=lambda e: e.step).with_intact_steps(())

    def _resume_from(self, step: int, target: Any, verified: bool) -> tuple[int, Any, dict]:
        state, extra = self._restore_checked(step, target, verified)
        skipped = [s for s in self.all_steps() if s > step]
        if skipped:
            _log.warning(
                "resuming from step %d, the newest checkpoint that can be trusted (skipped: %s)",
                *(step, ", ".join(map(str, skipped))),
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
        """Checks `step`'s files against its manifest: True if they match, False if it has none;
        CheckpointCorruptError if a file is missing or changed or the manifest unreadable."""
        step_dir = os.path.join(self.directory, str(step))
        manifest = _read_manifest(self.directory, step)
        for name, expected in sorted((manifest or {}).items()):
            problem = _file_problem(os.path.join(step_dir, name), expected)
            if problem:
                raise CheckpointCorruptError(step, name, problem, directory=self.directory)
        return manifest is not None

    def intact_steps(self) -> tuple[int, ...]:
        """Steps whose files match their manifest, plus those without one (unverified)."""
        intact = []
        for step in self.all_steps():
            with contextlib.suppress(CheckpointCorruptError):
                self.verify(step)
                intact.append(step)
        return tuple(intact)

    def _restore_checked(self, step: int, target: Any, verified: bool):
        """One step, `verified` or not: compare trees, read, refuse non-finite values."""
        if not verified:
            why = "checkpoint step %d in %s has no %s: it is read unverified"
            self._warn_once(f"unverified {step}", why, step, self.directory, MANIFEST_FILE)
        abstract = jax.tree.map(_abstract_leaf, target)
        state_dir = epath.Path(self.directory) / str(step) / "state"
        with self._reading(step, "state/_METADATA", verified):
            # The handler's metadata: the manager's would also parse the metrics.
            item = ocp.handlers.StandardCheckpointHandler().metadata(state_dir)
        differences = _diff_trees(_specs(getattr(item, "tree", item)), _specs(abstract))
        if differences:
            shown = list(differences[:_MAX_DIFF_LINES])
            if len(differences) > _MAX_DIFF_LINES:
                shown.append(f"... and {len(differences) - _MAX_DIFF_LINES} more")
            raise CheckpointMismatchError(
                f"Checkpoint step {step} in {self.directory} does not match the restore target "
                f"({len(differences)} differing leaves). The likely cause is a model or "
                "optimizer config that differs from the run that wrote it (layer sizes, "
                "optimizer, param dtype).\n  " + "\n  ".join(shown),
                differences,
            )
        extra = self._read_extra(step, verified)  # First: an unreadable one is named exactly.
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        with self._reading(step, "state", verified):
            state = self._manager.restore(step, args=args).state
        bad = _nonfinite_leaves(state)
        if bad:
            listed = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more leaves" if bad[3:] else "")
            reason = f"non-finite values in {listed}"
            raise CheckpointCorruptError(step, "state", reason, directory=self.directory)
        return state, extra

    def _read_extra(self, step: int, verified: bool) -> dict:
        with self._reading(step, "extra/metadata", verified):
            args = ocp.args.Composite(extra=ocp.args.JsonRestore())
            return dict(self._manager.restore(step, args=args).extra or {})

    @contextlib.contextmanager
    def _reading(self, step: int, file: str, verified: bool):
        """An error reading `step` as one line: `CheckpointVanishedError` if the step was deleted
        meanwhile, else for an unverified step `CheckpointCorruptError` naming the file. Errors
        reading a verified step (its files are as saved) propagate unchanged."""
        try:
            yield
        except Exception as e:
            if _vanished(os.path.join(self.directory, str(step)), e):
                raise CheckpointVanishedError(
                    f"checkpoint step {step} in {self.directory} vanished while it was read "
                    f"(the training run deletes old steps); steps now: {self.all_steps() or 'none'}"
                ) from None
            if verified:
                raise
            reason = f"unreadable ({type(e).__name__}: {str(e).strip() or 'no detail'})"
            raise CheckpointCorruptError(step, file, reason, directory=self.directory) from None

    def _with_intact_steps(self, error: CheckpointCorruptError) -> CheckpointCorruptError:
        return error.with_intact_steps(tuple(s for s in self.intact_steps() if s != error.step))

    def _set_aside(self, steps: list[int]) -> None:
        """Renames `steps` to ``damaged-<step>-<time>`` (writers only; nothing is deleted); not
        a step name, so never listed."""
        if self.read_only:
            return
        if jax.process_index() == 0:
            stamp = time.strftime("%Y%m%dT%H%M%S")
            for step in steps:
                aside = os.path.join(self.directory, f"damaged-{step}-{stamp}")
                os.rename(os.path.join(self.directory, str(step)), aside)
                _log.warning("moved checkpoint step %d aside to %s", step, aside)
        self._barriers += 1  # Every process sets aside the same steps: the same barrier name.
        ocp.multihost.sync_global_processes(f"adamlab_set_aside_{self._barriers}")
        self._manager.close()  # orbax lists the steps when opened: reopen it.
        self._manager = self._open_manager()
        for step in steps:
            self._metrics.pop(step, None)

    def _warn_once(self, key: str, message: str, *args) -> None:
        if key not in self._warned:
            self._warned.add(key)
            _log.warning(message, *args)


def _manager_options(read_only: bool, save_interval_steps: int, async_save: bool):
    """A reader creates and removes nothing (an unfinished save may be a live trainer's), with
    the values read_only forces, set here to spare orbax's warnings. A writer saves at intervals
    or on preemption, keeps every step (retention is ours) and removes the unfinished saves a
    crash left when it opens the directory."""
    if read_only:
        return ocp.CheckpointManagerOptions(
            read_only=True, create=False, cleanup_tmp_directories=False, save_interval_steps=0,
            max_to_keep=None, lightweight_initialize=True,
        )  # fmt: skip
    policies = [
        ocp.checkpoint_managers.FixedIntervalPolicy(save_interval_steps),
        ocp.checkpoint_managers.PreemptionCheckpointingPolicy(),
    ]
    return ocp.CheckpointManagerOptions(
        save_decision_policy=ocp.checkpoint_managers.AnySavePolicy(policies),
        preservation_policy=ocp.checkpoint_managers.LatestN(n=None),
        cleanup_tmp_directories=True,
        enable_async_checkpointing=async_save,
        lightweight_initialize=True,  # orbax need not read the metrics: we do.
    )


# -- files --------------------------------------------------------------------------------------


def _digest(path: str) -> tuple[int, str]:
    """(size, sha256 hex) of a file."""
    with open(path, "rb") as f:
        return os.fstat(f.fileno()).st_size, hashlib.file_digest(f, "sha256").hexdigest()


def _write_manifest(step_dir: str) -> None:
    """Writes ``<step_dir>/adamlab_manifest.json``: {relative path: size, sha256} of every file."""
    files = {}
    for root, _, names in os.walk(step_dir):
        for name in names:
            relative = os.path.relpath(os.path.join(root, name), step_dir).replace(os.sep, "/")
            if relative != MANIFEST_FILE and not name.startswith(f".{MANIFEST_FILE}"):
                size, sha256 = _digest(os.path.join(root, name))
                files[relative] = {"size": size, "sha256": sha256}
    manifest = {"format": _MANIFEST_FORMAT, "files": dict(sorted(files.items()))}
    atomic_write(os.path.join(step_dir, MANIFEST_FILE), json.dumps(manifest, indent=1) + "\n")


def _read_manifest(directory: str, step: int) -> dict[str, dict] | None:
    """The ``files`` of a step's manifest, or None if it has none."""
    try:
        manifest = json.loads(pathlib.Path(directory, str(step), MANIFEST_FILE).read_bytes())
        files = manifest["files"]
        if manifest.get("format") != _MANIFEST_FORMAT or not all(
            isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str)
            for v in files.values()
        ):
            raise ValueError(f"not an adamlab manifest of format {_MANIFEST_FORMAT}")
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        reason = f"unreadable manifest ({e})"
        raise CheckpointCorruptError(step, MANIFEST_FILE, reason, directory=directory) from None
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


def _vanished(step_dir: str, error: BaseException) -> bool:
    """Whether `step_dir` is gone, waiting up to 1 s for a deletion that `error` suggests."""
    text = f"{type(error).__name__} {error}".lower()
    missing = any(w in text for w in ("not found", "no such file", "not_found", "missing"))
    deadline = time.monotonic() + (1.0 if missing else 0.0)
    while os.path.isdir(step_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not os.path.isdir(step_dir)


def _remove_unfinished(directory: str, step: int) -> None:
    """Removes ``<step>.orbax-checkpoint-tmp*`` until it stays away (tensorstore's writes in
    flight when the save failed may recreate it for a moment)."""
    prefix = f"{step}{ocp.utils.TMP_DIR_SUFFIX}"
    quiet, deadline = 0, time.monotonic() + 5
    while quiet < 3 and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            names = [n for n in os.listdir(directory) if n.startswith(prefix)]
            for name in names:
                shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
            quiet = 0 if names else quiet + 1
        time.sleep(0.05)


def _quiet_closed_loop() -> None:
    """After a failed save, tensorstore's writes still in flight call back into orbax's closed
    event loop; Python would print that RuntimeError's traceback. Only that one is dropped."""
    previous = sys.unraisablehook
    if getattr(previous, "_adamlab", False):
        return

    def hook(unraisable):
        if "Event loop is closed" not in str(unraisable.exc_value):
            previous(unraisable)

    hook._adamlab = True
    sys.unraisablehook = hook


def _chain(error: BaseException | None) -> Iterator[BaseException]:
    """`error`, then the exceptions it was raised from or while handling, innermost last."""
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def _file_of(error: BaseException) -> str | None:
    """The file an OSError in `error`'s chain names, or the last path a message quotes."""
    for chained in _chain(error):
        if isinstance(chained, OSError) and chained.filename:
            return os.fspath(chained.filename)
        if quoted := re.findall(r'"(/[^"]+)"', str(chained)):
            return quoted[-1]
    return None


def _cause(error: BaseException) -> str:
    """The OS's words for the errno in `error`'s chain (an OSError's, or the ``os_error_code``
    tensorstore reports), else the first line of its message."""
    for chained in _chain(error):
        found = re.search(r"os_error_code='(\d+)'", str(chained))
        code = getattr(chained, "errno", None) or (int(found.group(1)) if found else None)
        if code:
            return f"{os.strerror(code)} ({errno.errorcode.get(code, code)})"
    lines = str(error).strip().splitlines() or ["no detail"]
    return _one_line(f"{type(error).__name__}: {lines[0]}")


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())[:300]


# -- values -------------------------------------------------------------------------------------


def _is_int(x: Any) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _check_save(step: Any, metrics: Any, extra: Any, best_metric: str | None):
    """`save`'s (step, metrics, extra) checked before anything is written: an int step >= 0,
    {str: float} metrics holding `best_metric` unless empty (else most likely misspelt), and
    `extra` a JSON-serialisable dict (now rather than in a writer thread)."""
    try:
        step = operator.index(step)
    except TypeError:
        raise TypeError(f"step must be an int, got {type(step).__name__}: {step!r}") from None
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if not isinstance(metrics, Mapping | None):
        raise TypeError(f"metrics must be a dict of name -> scalar, got {type(metrics).__name__}")
    out = {}
    for name, value in (metrics or {}).items():
        if np.size(value) != 1:
            raise TypeError(f"metric {name!r} must be a scalar, got shape {np.shape(value)}")
        out[str(name)] = float(np.asarray(value).reshape(()))
    if out and best_metric is not None and best_metric not in out:
        raise ValueError(
            f"metrics lack best_metric {best_metric!r} (got {sorted(out)}); pass it, or save "
            "with metrics=None (or {}) to leave this step out of the best ranking."
        )
    if not isinstance(extra, Mapping | None):
        raise TypeError(f"extra must be a dict, got {type(extra).__name__}")
    try:
        json.dumps(dict(extra or {}))
    except (TypeError, ValueError) as e:
        raise TypeError(
            "extra must be JSON-serialisable (dicts, lists, str, int, float, bool, None; convert "
            f"numpy/jax scalars with int()/float()): {e}"
        ) from None
    return step, out, dict(extra or {})


def _nonfinite_leaves(tree: Any) -> list[str]:
    """Paths of the floating leaves of `tree` that hold a NaN or an infinity, checked by one
    small program for every leaf (sharded jax arrays included)."""
    flat = [
        (path_of(p), x)
        for p, x in jax.tree_util.tree_leaves_with_path(tree)
        if jnp.issubdtype(getattr(x, "dtype", None) or np.result_type(x), jnp.inexact)
    ]
    finite = jax.jit(lambda xs: [jnp.isfinite(x).all() for x in xs])([x for _, x in flat])
    return sorted(p for (p, _), ok in zip(flat, jax.device_get(finite), strict=True) if not ok)


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


def _specs(tree: Any) -> dict[str, tuple[tuple[int, ...], np.dtype | None]]:
    """{leaf path: (shape, dtype)} as orbax stores the leaves of a target or of its metadata: a
    typed PRNG key as its key data; dtype None (any) for a Python scalar, which restores into
    whatever scalar dtype the target asks for. A leaf is named by its path (`path_of`): orbax
    stores NamedTuples as dicts and tuples as lists, so the path (dict keys, attribute names,
    indices alike), not the node type, identifies a leaf."""
    specs = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if isinstance(leaf, bool | int | float | complex | ocp.metadata.ScalarMetadata):
            specs[path_of(path)] = (), None
            continue
        shape, dtype = tuple(getattr(leaf, "shape", ())), getattr(leaf, "dtype", None)
        if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(shape, dtype))
            shape, dtype = data.shape, data.dtype
        specs[path_of(path)] = tuple(shape), None if dtype is None else np.dtype(dtype)
    return specs


def _diff_trees(saved: dict, target: dict) -> tuple[str, ...]:
    """One line per leaf that is missing, unexpected, or of another shape or dtype."""
    fmt = lambda spec: f"{spec[1] or 'scalar'}{list(spec[0])}"
    lines = [f"missing from checkpoint (in target only): {p} {fmt(target[p])}"
             for p in sorted(target.keys() - saved.keys())]  # fmt: skip
    lines += [f"unexpected in checkpoint (not in target): {p} {fmt(saved[p])}"
              for p in sorted(saved.keys() - target.keys())]  # fmt: skip
    for path in sorted(saved.keys() & target.keys()):
        (s_shape, s_dtype), (t_shape, t_dtype) = saved[path], target[path]
        if s_shape != t_shape:
            lines.append(f"shape differs: {path} checkpoint {s_shape} vs target {t_shape}")
        elif None not in (s_dtype, t_dtype) and s_dtype != t_dtype:
            lines.append(f"dtype differs: {path} checkpoint {s_dtype} vs target {t_dtype}")
    return tuple(lines)
