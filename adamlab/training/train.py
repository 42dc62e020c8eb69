"""The one training loop: every run, comparison, sweep and study trains through `run`.

    config = config_dict.load_config("digits")
    final = train_and_evaluate(config, "runs/digits")    # one run: {"test_accuracy": ...}
    result = run(config, "runs/grid")                    # N >= 1 members: RunsResult

A run trains a grid of members in one compiled program (`adamlab.training.members`), in chunks
ending at the log, eval and checkpoint points. It resumes from the newest intact checkpoint
and reads every result back from the persisted metrics records, so an interrupted run reports
what an uninterrupted one does (docs/training.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import math
import os
import pathlib
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm

from adamlab import data, runtime
from adamlab.training import (
    curvature,
    distributed,
    engines,
    evaluate,
    members,
    restore,
    run_io,
    transfer,
)
from adamlab.training.experiment import (
    ConfigError,
    Experiment,
    abstract_members,
    build_experiment,
    initial_members,
    make_checkpointer,
    read_members,  # noqa: F401  (re-exported: train.read_members)
    validate_config,  # noqa: F401  (re-exported: train.validate_config)
)

_WATCHED = ("loss", "grad_norm", "update_norm")  # Blamed for a divergence, in this order.
RESULT_FILE = "result.json"
_WINDOW = "train_window"  # A checkpoint's extra: the train metrics since the last log point.
# RunsResult.phases: seconds of a run, disjoint (docs/training.md#phases-of-a-run).
PHASES = ("setup", "data", "compile", "train", "evaluate", "save", "test", "teardown")
# The phases within `wall_time_s` that are not training steps.
OVERHEAD_PHASES = ("setup", "data", "compile", "evaluate", "save", "test")
CURVATURE_FILE = "curvature.jsonl"  # Spectral densities (diagnostics.density_probes > 0).


class NonFiniteError(FloatingPointError):
    """A single run produced a non-finite loss, gradient or update; nothing after it was saved."""

    def __init__(self, step: int, quantity: str, values: dict[str, float], last_checkpoint):
        self.step, self.quantity, self.values = step, quantity, values
        shown = ", ".join(f"{k}={values[k]:.4g}" for k in _WATCHED if k in values)
        kept = (
            f"the last good checkpoint (step {last_checkpoint}) is kept"
            if last_checkpoint is not None
            else "no checkpoint had been saved"
        )
        super().__init__(
            f"non-finite {quantity} at step {step} ({shown}); training stopped and {kept}. "
            "Try a lower optimizer.learning_rate, a warmup, or a larger optimizer.eps."
        )


# ---------------------------------------------------------------------------- loop helpers


class _StopOnSignal:
    """SIGTERM/SIGINT set `requested` (the loop stops after the current chunk); restored on exit.

    A second SIGINT raises KeyboardInterrupt, for a user who does not want to wait. Outside the
    main thread signals cannot be caught, and the loop runs without this protection.
    """

    _SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __enter__(self) -> _StopOnSignal:
        self.requested: str | None = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self._SIGNALS}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        name = signal.Signals(signum).name
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = name
        logging.warning("%s received: stopping after this chunk and saving a checkpoint", name)

    def __exit__(self, *exc_info) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def chunk_lengths(start: int, num_steps: int, every: Sequence[int], max_length: int) -> list[int]:
    """Lengths of the calls covering steps start+1..num_steps: each ends at a multiple of an
    interval in `every` (log, eval, checkpoint points) or at the end, none longer than
    `max_length`. Long gaps split at gap start + j * max_length, so a run resumed at any chunk
    end continues with exactly the chunks of an uninterrupted one."""
    ends = sorted(
        {s for e in every for s in range((start // e + 1) * e, num_steps, e)} | {num_steps}
    )
    lengths, position = [], start
    for end in ends:
        while end - position > max_length:
            lengths.append(max_length)
            position += max_length
        if end > position:
            lengths.append(end - position)
        position = end
    return lengths


def _draw_chunk(streams, length: int, first_step: int, nan_step: int | None, grid) -> dict:
    """The next `length` batches of every seed's stream: [K, B, ...] or [K, seeds, B, ...]."""
    steps = []
    for step in range(first_step, first_step + length):
        per_seed = [next(s) for s in streams]
        if step == nan_step:  # Testing: a batch of NaNs exercises the non-finite path.
            per_seed = [dict(b, image=np.full_like(b["image"], np.nan)) for b in per_seed]
        batch = jax.tree.map(lambda *xs: np.stack(xs), *per_seed) if grid else per_seed[0]
        steps.append(batch)
    return jax.tree.map(lambda *xs: np.stack(xs), *steps)


def format_phases(result: RunsResult, run_seconds: float) -> str:
    """One line of a run's phases, its whole time (`run`'s start to now) and the time before
    its first step, e.g. "setup 2.10 s, data 0.40 s, ..., teardown 0.30 s; run 61.20 s;
    startup 4.10 s, first_step 7.30 s"."""
    parts = ", ".join(f"{k} {v:.2f} s" for k, v in result.phases.items())
    before = f"startup {result.startup_s:.2f} s, first_step {result.first_step_s:.2f} s"
    return f"{parts}; run {run_seconds:.2f} s; {before}"


_SHOWN = ("loss", "accuracy", "learning_rate", "grad_norm", "steps_per_sec", "f1")
_SHOWN += ("sharpness", "preconditioned_sharpness")  # The split "curvature".


def _log(step: int, split: str, per_member: Sequence[dict]) -> None:
    """One line of the shown metrics: a single run's values, or for a group of members (a
    sweep, seeds, a tune stage) each metric's median and range over the members whose value is
    finite (a diverged member is frozen at NaN and counted apart), so that a log file, where no
    progress bar is drawn, shows the group advancing."""
    if len(per_member) == 1:
        text = " ".join(f"{k}={per_member[0][k]:.4g}" for k in _SHOWN if k in per_member[0])
        logging.info("step %s %s: %s", step, split, text)
        return
    parts, diverged = [], 0
    for k in _SHOWN:
        values = np.asarray([m[k] for m in per_member if k in m], np.float64)
        finite = values[np.isfinite(values)]
        if k == "loss":
            diverged = values.size - finite.size
        if finite.size:
            parts.append(f"{k}={np.median(finite):.4g} [{finite.min():.4g}, {finite.max():.4g}]")
    logging.info(
        "step %s %s, median [min, max] over %d members%s: %s",
        step,
        split,
        len(per_member),
        f" ({diverged} not finite)" if diverged else "",
        " ".join(parts),
    )


@dataclasses.dataclass
class RunsResult:
    """What `run` returns.

    Attributes:
      rows: one dict per member: optimizer, implementation, swept values, seed, steps,
        final_train_{loss,accuracy}, validation_/test_{loss,accuracy,f1}, param_norm (final
        parameters), finite, diverged_at
        (0 if never), parity, steps_per_sec, wall_time_s, runs_in_program.
      finals: per member (row order) {"train_<metric>", "validation_<metric>", "test_<metric>"}
        with every metric (train: means of the last log interval).
      curves: implementation -> split ("train", "validation") -> (steps [T], {"loss",
        "accuracy": arrays [values, seeds, T]}).
      params: implementation -> final parameters with leading axes [values, seeds] (host), at
        the evaluation point (Schedule-Free's average x; `evaluated_at`).
      step, interrupted, num_steps, steps_per_sec, wall_time_s; phases: seconds per phase
        (`PHASES`, where they say what each counts).
      startup_s: the process's seconds before the run (interpreter, imports, flags, config)
        when the run is the process's first, else 0 (that time came before an earlier run).
      first_step_s: seconds before the first step: `startup_s` and, from the run's start,
        setup, data and compiling, until its first train call (nan if it trained no step).
    """

    rows: list[dict[str, Any]]
    finals: list[dict[str, Any]]
    curves: dict[str, Any]
    params: dict[str, Any]
    step: int
    interrupted: bool
    num_steps: int
    steps_per_sec: float
    wall_time_s: float
    phases: dict[str, float] = dataclasses.field(default_factory=dict)
    # Where the members were evaluated and exported: "params", or the optimizer's evaluation
    # point (`Entry.eval_params`'s name, e.g. "schedule_free_eval_params": Schedule-Free's x).
    evaluated_at: str = "params"
    startup_s: float = math.nan
    first_step_s: float = math.nan


# Runs started in this process: only the first is preceded by the process's start-up.
_runs_in_process = itertools.count()


# ---------------------------------------------------------------------------- the loop


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    stop_after_step: int | None = None,
) -> dict[str, Any]:
    """Trains (or resumes) the single run described by `config`; returns its final metrics.

    Returns:
      {"step", "interrupted", "train_<metric>" (means of the last log interval; absent when
      the run was already finished), "validation_<metric>", "test_<metric>" (not when
      interrupted)}: accuracy, loss, macro precision/recall/f1 per split.

    Raises:
      ConfigError: invalid config, or a config with several members (use `run`);
      run_io.ConfigMismatchError: the workdir holds a different run; NonFiniteError: a
      non-finite loss/gradient/update (the last good checkpoint stays).
    """
    result = run(config, workdir, stop_after_step=stop_after_step, single=True)
    return {"step": result.step, "interrupted": result.interrupted, **result.finals[0]}


def prepare(config: ml_collections.ConfigDict) -> Experiment:
    """The config validated once and built once (`build_experiment`), after joining the
    other processes of a multi-host run (before anything touches a backend).

    Raises:
      ConfigError: naming the field, the value and what is allowed.
    """
    try:
        distributed.initialize(config.get("distributed"))
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return build_experiment(config)


def run(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    stop_after_step: int | None = None,
    single: bool = False,
    experiment: Experiment | None = None,
) -> RunsResult:
    """Trains (or resumes) every member of `config` in `workdir`; see the module docstring.

    Args:
      config: the experiment config (configs/digits.py documents every field).
      workdir: run directory; created if missing, resumed if it holds a checkpoint.
      stop_after_step: stop as a preemption would (checkpoint, `interrupted=True`) at the end
        of the first chunk that reaches this step; for splitting a run over time-limited jobs.
      single: raise ConfigError, before the workdir is touched, if `config` describes several
        members (`train_and_evaluate`'s check, on the config validated once).
      experiment: `prepare(config)`, where the caller already has it (a group of runs builds
        every group's first, so that a bad one fails before anything is written).

    Multi-host (`config.distributed.enabled`): every process calls this with the same config and
    workdir (a shared filesystem); each reads its slice of every batch, all save the
    checkpoints together (orbax), and process 0 alone writes config.json, metrics and the bar.
    """
    start_time = time.perf_counter()
    startup = runtime.process_age() if next(_runs_in_process) == 0 else 0.0
    experiment = experiment or prepare(config)
    if single and (experiment.who.grid or len(experiment.who.implementations) > 1):
        raise ConfigError(
            f"train_and_evaluate trains one run, but runs={experiment.who} describes several "
            "members; use adamlab.training.train.run"
        )
    workdir = pathlib.Path(workdir)
    run_io.prepare_workdir(workdir)  # A file, or a read-only directory: RunDirError now.
    primary = distributed.is_primary()
    with run_io.WorkdirLock(workdir, primary=primary):  # One writer; WorkdirBusyError names it.
        if run_io.check_resumable(workdir, config):
            _warn_if_extended(run_io.read_config(workdir), config)
        if primary:
            run_io.write_config(workdir, config)
        checkpointer = make_checkpointer(workdir, config)
        try:  # The checkpointer is closed on every exit, errors before the first step included.
            if checkpointer.latest_step() is None:
                carry, start = initial_members(experiment, _pretrained(config)), 0
                extra = {}
            else:
                target = abstract_members(experiment)
                start, carry, extra = checkpointer.restore_newest_intact(target)
                logging.info("resuming %s from step %d of %d", workdir, start, experiment.num_steps)
            finished = workdir / RESULT_FILE
            if start >= experiment.num_steps and finished.is_file():
                logging.info("%s is already trained to step %d", workdir, start)
                return _result_from_json(json.loads(finished.read_text()))
            loop = _Loop(config, experiment, workdir, checkpointer, start_time, startup)
            result = loop.train(
                experiment.engine.put_members(carry), start, stop_after_step, extra.get(_WINDOW)
            )
        finally:
            tick = time.perf_counter()
            checkpointer.close()  # After waiting for its last save.
            closing = time.perf_counter() - tick
        result.phases["teardown"] += closing
        if primary and not result.interrupted:
            run_io.write_json(workdir / RESULT_FILE, _result_to_json(result))
        logging.info("phases: %s", format_phases(result, time.perf_counter() - start_time))
        return result


def _warn_if_extended(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict):
    """A resumed run whose length changed continues on a different learning-rate schedule."""
    length = lambda c: (c.train.get("num_steps"), c.train.get("num_epochs"))
    if length(saved) != length(config) and config.optimizer.get("schedule") != "constant":
        logging.warning(
            "the run's length changed (train.num_steps/num_epochs %s -> %s): the %s schedule "
            "is recomputed for the new length, so the learning rate changes from the resumed "
            "step on",
            length(saved),
            length(config),
            config.optimizer.get("schedule"),
        )


def _pretrained(config: ml_collections.ConfigDict):
    """`params_for_seed` of `initial_members` for a config with an `init` run, else None."""
    init = config.get("init")
    if not transfer.enabled(init):
        return None
    pretrained = restore.restore(init.workdir, checkpoint=init.checkpoint)
    return lambda seed, params: transfer.merge_params(params, pretrained.params, init)


class _Loop:
    """The steps start+1..num_steps of `run` and everything logged on the way."""

    def __init__(self, config, experiment: Experiment, workdir, checkpointer, start_time, startup):
        self.config, self.experiment, self.workdir = config, experiment, workdir
        self.checkpointer, self.start_time, self.startup = checkpointer, start_time, startup
        self.first_step = math.nan  # `RunsResult.first_step_s`
        self.who, self.engine = experiment.who, experiment.engine
        self.names = self.who.names()
        self.single = len(self.names) == 1
        self.phases = dict.fromkeys(PHASES, 0.0)
        self.timed_steps, self.timed_seconds = 0, 0.0  # Since the last log point.
        self.eval_cache: dict[str, list] = {}
        self.reported: set[int] = set()  # Members whose divergence was logged.
        point = self.engine.eval_params
        self.evaluated_at = "params" if point is None else point.__name__
        if point is not None:
            logging.info(
                "%s is evaluated, checkpointed for inference and exported at %s (its "
                "evaluation point), not at the params it trains",
                config.optimizer.name,
                self.evaluated_at,
            )
        diag = config.get("diagnostics") or {}
        self.layers_every = diag.get("layer_stats_every_steps")
        self.curvature_every = diag.get("curvature_every_steps")
        self.curvature = None
        if self.curvature_every:
            self.curvature = curvature.CurvatureProbe(
                config, experiment.model, experiment.info.num_train
            )

    # -------------------------------------------------------------------- writers

    def _member_dir(self, name: str) -> pathlib.Path:
        return self.workdir if self.single else self.workdir / "members" / name

    def _open_writers(self, start: int) -> dict[int, run_io.MetricWriter]:
        """Each member's writer, its files cut back to what the checkpoint at `start` had seen:
        the records after `start`, and the "test" records (written only after the final
        checkpoint, by an attempt that did not live to write result.json)."""
        if not distributed.is_primary():
            return {}
        writers = {}
        for i, (_, _, name) in enumerate(self.names):
            path = self._member_dir(name)
            path.mkdir(parents=True, exist_ok=True)
            writers[i] = run_io.MetricWriter(path, resume_step=start, drop_splits=("test",))
            run_io.drop_records_after(path / CURVATURE_FILE, start)  # As metrics.jsonl's.
        return writers

    def _write(self, step: int, split: str, per_member: list[dict], show: bool = True) -> None:
        for i, values in enumerate(per_member):
            if i in self.writers:
                self.writers[i].write(step, split, values)
        if show and (self.single or distributed.is_primary()):
            _log(step, split, per_member)

    # -------------------------------------------------------------------- diagnostics

    def _write_layers(self, step: int, layers: tuple[dict, ...]) -> None:
        """Per-layer statistics of the step just taken ({name: [*grid]} per implementation)."""
        host = jax.device_get(layers)  # Under pmap too: one copy (out_axes=None), no device axis.
        per_member = [
            {k: float(np.asarray(v)[index]) for k, v in host[m].items()}
            for m, index, _ in self.names
        ]
        self._write(step, "layers", per_member, show=False)

    def _write_curvature(self, carry, step: int) -> None:
        """Hessian eigenvalues of every member at `step` (and SLQ densities, if asked)."""
        results = self.curvature.evaluate(self.engine.get_members(carry), self.names, step)
        for i, ((_, _, name), values) in enumerate(zip(self.names, results, strict=True)):
            density = values.pop("density", None)
            if density is not None and i in self.writers:
                path = self._member_dir(name) / CURVATURE_FILE
                with path.open("a") as f:
                    f.write(json.dumps({"step": step, **density}) + "\n")
        self._write(step, "curvature", results)

    # -------------------------------------------------------------------- metrics

    def _logged_learning_rates(self) -> list[float] | None:
        """Each member's mean learning rate over the window's steps, from its swept value's
        schedule; None where the members follow the config's (`Experiment.sweep_schedule`)."""
        if self.experiment.sweep_schedule is None:
            return None
        # The optimizer's step count at each update: what its schedule was evaluated at.
        counts = np.concatenate([np.arange(len(c["loss"])) + first - 1 for first, c in self.window])
        means = [np.mean(row) for row in np.asarray(self.experiment.sweep_schedule(counts[None]))]
        return [float(means[index[0]]) for _, index, _ in self.names]

    def _train_summary(self) -> list[dict[str, float]]:
        """Means over the window's steps of every LOGGED metric, per member (row order)."""
        stacked = {k: np.concatenate([c[k] for _, c in self.window]) for k in members.LOGGED}
        grid_means = {k: v.mean(axis=0) for k, v in stacked.items()}  # [*grid, implementations]
        means = [{k: float(v[(*i, m)]) for k, v in grid_means.items()} for m, i, _ in self.names]
        rates = self._logged_learning_rates()
        for i, values in enumerate(means):
            if rates is not None:
                values["learning_rate"] = rates[i]
            if self.timed_steps and self.timed_seconds > 0:
                values["steps_per_sec"] = self.timed_steps / self.timed_seconds
        self.timed_steps, self.timed_seconds = 0, 0.0
        return means

    def _check_divergence(self, carry) -> bool:
        """Logs newly diverged members; raises NonFiniteError for a single run; returns whether
        every member has diverged."""
        alive, diverged_at = jax.device_get((carry.alive, carry.diverged_at))
        if self.engine.pmap:
            alive, diverged_at = alive[0], diverged_at[0]
        for i, (m, index, name) in enumerate(self.names):
            at = int(diverged_at[(*index, m)])
            if alive[(*index, m)] or i in self.reported:
                continue
            self.reported.add(i)
            values = self._values_at(at, m, index)
            if self.single:
                quantity = next((k for k in _WATCHED if not math.isfinite(values[k])), "update")
                raise NonFiniteError(at, quantity, values, self.checkpointer.latest_step())
            logging.warning(
                "member %s diverged at step %d (%s); frozen, the others go on",
                name,
                at,
                ", ".join(f"{k}={values[k]:.4g}" for k in _WATCHED),
            )
        return not alive.any()

    def _values_at(self, step: int, m: int, index: tuple) -> dict[str, float]:
        """Member (m, index)'s train metrics at `step`, from the window (NaN if outside it)."""
        for first, chunk in self.window:
            k = step - first
            if 0 <= k < len(chunk["loss"]):
                return {key: float(v[(k, *index, m)]) for key, v in chunk.items()}
        return {key: math.nan for key in (*members.LOGGED, "finite")}

    # -------------------------------------------------------------------- evaluation

    def _evaluate(self, carry, split: str) -> list[dict[str, Any]]:
        """Metrics of every member on `split` (eval batches cached on the host)."""
        if split not in self.eval_cache:
            self.eval_cache[split] = list(
                data.eval_batches(
                    self.config.data,
                    split=split,
                    global_batch_size=self.config.train.eval_batch_size,
                )
            )
        if "batch_stats" not in self.eval_cache:  # at the evaluation point (none: [])
            self.eval_cache["batch_stats"] = evaluate.batch_stats_batches(
                self.config, self.engine, carry
            )
        return evaluate.evaluate_members(
            self.engine, carry, self.eval_cache[split], self.names, self.eval_cache["batch_stats"]
        )

    def _validate(self, carry, step: int) -> dict[str, float] | None:
        """Validation of every member at `step` (logged); the mean ranks the checkpoints."""
        if not self.experiment.info.num_validation:
            return None
        results = self._evaluate(carry, "validation")
        self._write(step, "validation", results)
        keys = [k for k in results[0] if k != "confusion"]
        return {f"validation_{k}": float(np.mean([r[k] for r in results])) for k in keys}

    # -------------------------------------------------------------------- the loop

    def train(self, carry, start: int, stop_after_step: int | None, window=None) -> RunsResult:
        """Steps start+1..num_steps; `window`: the train metrics since the last log point,
        as the checkpoint at `start` holds them (`_window_to_json`)."""
        engine, train_cfg, num_steps = self.engine, self.config.train, self.experiment.num_steps
        with self._timed("data"):
            sources = data.train_streams(  # One per seed, sharing one in-memory copy of the data.
                self.config.data,
                global_batch_size=train_cfg.batch_size,
                seeds=self.who.seeds,
                start_step=start,
            )
            # Each stream's first batch drawn now: tf.data fills its shuffle buffer on the first
            # draw, which is start-up (the phase "data"), not training.
            streams = [itertools.chain([next(s)], s) for s in sources]
        profile = tuple(train_cfg.get("profile_steps") or ())
        lengths, first_log = self._chunk_lengths(start, profile)
        # Where the engine pads chunks, every chunk has the longest one's rows: one train program
        # (two with layer statistics) whatever the gaps between log, eval and checkpoint points.
        capacity = max(lengths, default=1) if engine.padded_chunks else None
        compiled: set[tuple[int, bool]] = set()  # (rows, layer_stats) of the programs so far
        # The train metrics since the last log point, (first step, host metrics) per chunk; the
        # chunks since the last point are still on the device: (first step, steps, metrics).
        self.window = _window_from_json(window)
        self.pending: list[tuple[int, int, dict]] = []
        step, interrupted = start, False
        nan_step = train_cfg.get("inject_nan_at_step")  # Testing: a batch of NaNs at this step.
        self.bar = tqdm.tqdm(
            total=num_steps,
            initial=start,
            unit="step",
            dynamic_ncols=True,
            mininterval=1.0,
            desc=None if self.single else f"{len(self.names)} members",
            disable=None if train_cfg.progress_bar and distributed.is_primary() else True,
        )
        self.writers = self._open_writers(start)
        self.phases["setup"] = time.perf_counter() - self.start_time - self.phases["data"]
        self._restart_interval()
        try:
            with _StopOnSignal() as stop:
                for length in lengths:
                    if profile and step + 1 == profile[0]:
                        jax.profiler.start_trace(str(self.workdir / "profile"))
                    chunk = _draw_chunk(streams, length, step + 1, nan_step, self.who.grid)
                    rows = capacity or length
                    device_chunk = engine.put_chunk(engines.pad_rows(chunk, rows), length)
                    layers_due = (
                        bool(self.layers_every) and (step + length) % self.layers_every == 0
                    )
                    if (rows, layers_due) not in compiled:
                        # Compiled ahead of its first call: compiling is not throughput, the
                        # steps of that call are.
                        with self._timed("compile", untimed=True):
                            engine.compile_train(carry, device_chunk, layer_stats=layers_due)
                        compiled.add((rows, layers_due))
                    if math.isnan(self.first_step):
                        self.first_step = time.perf_counter() - self.start_time + self.startup
                    carry, metrics = engine.train(carry, device_chunk, layer_stats=layers_due)
                    layers = metrics.pop("layers", None)
                    self.pending.append((step + 1, length, metrics))
                    step += length
                    self.bar.update(length)
                    self._diagnose(carry, step, metrics, layers)
                    if profile and step == profile[1]:
                        jax.block_until_ready(carry)
                        jax.profiler.stop_trace()
                        logging.info(
                            "profile of steps %d-%d written to %s",
                            *profile,
                            self.workdir / "profile",
                        )
                    stopping = stop.requested is not None or (
                        stop_after_step is not None and step >= stop_after_step
                    )
                    log, evaluate, save = self._points(step, stopping, first_log)
                    if not (log or evaluate or save):
                        continue
                    all_diverged = self._at_point(carry, step, log, evaluate, save)
                    if all_diverged and step < num_steps and (log or evaluate):
                        logging.warning("every member diverged by step %d; stopping", step)
                        break
                    if stopping:
                        interrupted = True
                        logging.warning(
                            "stopped at step %d/%d (%s); checkpoint saved, run again to resume",
                            step,
                            num_steps,
                            stop.requested or "stop_after_step",
                        )
                        break
                if not interrupted:
                    with self._timed("test"):
                        self._write(step, "test", self._evaluate(carry, "test"))
        finally:
            with self._timed("teardown"):
                self.bar.close()
                for writer in self.writers.values():
                    writer.close()
                # The streams are generators over tf.data: stopped now, not at a later garbage
                # collection (quick: they run without tf.data's autotuning thread).
                for source in sources:
                    source.close()
        return self._result(engine.get_members(carry), start, step, interrupted)

    def _chunk_lengths(self, start: int, profile: tuple[int, ...]) -> tuple[list[int], int]:
        """The lengths of the chunks after `start` (`chunk_lengths`), and the end of an
        uninterrupted run's first chunk, which logs too (early progress, wherever it resumes)."""
        train_cfg = self.config.train
        every = [
            train_cfg.log_every_steps,
            train_cfg.eval_every_steps,
            train_cfg.checkpoint_every_steps,
        ]
        every += [p - 1 for p in profile[:1] if p > 1] + list(profile[1:])
        every += [e for e in (self.layers_every, self.curvature_every) if e]
        num_steps, dispatch = self.experiment.num_steps, self.experiment.steps_per_dispatch
        first_log = chunk_lengths(0, num_steps, every, dispatch)[0]
        return chunk_lengths(start, num_steps, every, dispatch), first_log

    def _points(self, step: int, stopping: bool, first_log: int) -> tuple[bool, bool, bool]:
        """(log, evaluate, save) at `step`: the points of an uninterrupted run, whatever the
        run's history. A stop between them saves a checkpoint but writes no record, and the
        train metrics since the last log point travel in that checkpoint."""
        train_cfg = self.config.train
        natural_save = (
            step % train_cfg.checkpoint_every_steps == 0 or step == self.experiment.num_steps
        )
        evaluate = natural_save or step % train_cfg.eval_every_steps == 0
        log = natural_save or step % train_cfg.log_every_steps == 0 or step == first_log
        return log, evaluate, natural_save or stopping

    # Throughput leaves out compiles, diagnostics and evaluations: the timed interval restarts
    # after each log/eval/save point, and the compiles and diagnostics within it are left out.
    def _restart_interval(self) -> None:
        self.interval_start, self.untimed = time.perf_counter(), 0.0

    @contextlib.contextmanager
    def _timed(self, phase: str, untimed: bool = False):
        """Adds the block's seconds to `phase`; `untimed`: and leaves them out of the interval."""
        tick = time.perf_counter()
        yield
        seconds = time.perf_counter() - tick
        self.phases[phase] += seconds
        if untimed:
            self.untimed += seconds

    def _diagnose(self, carry, step: int, metrics: dict, layers: tuple[dict, ...] | None) -> None:
        """The per-layer statistics (`layers`, of the chunk's last step) and curvature due at
        `step`: evaluation time, not training time."""
        curvature_due = self.curvature is not None and step % self.curvature_every == 0
        if layers is None and not curvature_due:
            return
        jax.block_until_ready(metrics)
        with self._timed("evaluate", untimed=True):
            if layers is not None:
                self._write_layers(step, layers)
            if curvature_due:
                self._write_curvature(carry, step)

    def _at_point(self, carry, step: int, log: bool, evaluate: bool, save: bool) -> bool:
        """At a log, eval or checkpoint point: fetches the train metrics of the chunks since the
        last one, checks for divergence, writes what is due; returns whether every member has
        diverged."""
        self.timed_steps += sum(length for _, length, _ in self.pending)
        for first, length, metrics in jax.device_get(self.pending):
            self.window.append((first, jax.tree.map(lambda x, n=length: x[:n], metrics)))
        self.pending = []
        elapsed = time.perf_counter() - self.interval_start - self.untimed
        self.phases["train"] += elapsed
        self.timed_seconds += elapsed
        all_diverged = self._check_divergence(carry)
        if log:
            summary = self._train_summary()
            self._write(step, "train", summary)
            loss = np.nanmean([s["loss"] for s in summary])
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            self.window = []
        with self._timed("evaluate"):
            validation = self._validate(carry, step) if evaluate else None
        if save:
            with self._timed("save"):
                self.checkpointer.save(
                    step,
                    self.engine.get_members(carry),
                    metrics=validation,
                    extra={
                        "data_start_step": step,
                        _WINDOW: _window_to_json(self.window),
                    },
                    force=True,
                )
        self._restart_interval()
        return all_diverged

    def _result(self, host, start: int, step: int, interrupted: bool) -> RunsResult:
        """The run's result, its metrics read back from what was persisted (each member's
        metrics.jsonl), never from what this process held: a resumed run reports what an
        uninterrupted one does."""
        distributed.sync("metrics written")  # Process 0 wrote them; a shared filesystem.
        records = [run_io.read_metrics(self._member_dir(name)) for _, _, name in self.names]
        finals = [finals_from_records(r) for r in records]
        wall = time.perf_counter() - self.start_time
        # Every chunk ends before a point, which times it. A process that timed no step (resumed
        # at the final step) reports what its attempts measured, from the records.
        trained = step - start
        steps_per_sec = trained / self.phases["train"] if trained else recorded_rate(records[0])
        impls, grid = self.who.implementations, self.who.grid or (1, 1)
        rows = []
        for (m, index, _), final in zip(self.names, finals, strict=True):
            v, s = index or (0, 0)
            own = jax.tree.map(lambda x, i=index: np.asarray(x)[i], host.states[m].params)
            scores = {
                f"{split}_{k}": float(final.get(f"{split}_{k}", math.nan))
                for split in ("validation", "test")
                for k in ("loss", "accuracy", "f1")
            }
            rows.append(
                {
                    "optimizer": self.config.optimizer.name,
                    "implementation": impls[m],
                    **{k: vals[v] for k, vals in self.who.sweep.items()},
                    "seed": self.who.seeds[s],
                    "steps": step,
                    "final_train_loss": final.get("train_loss", math.nan),
                    "final_train_accuracy": final.get("train_accuracy", math.nan),
                    **scores,
                    "finite": bool(np.asarray(host.alive)[(*index, m)]),
                    "diverged_at": int(np.asarray(host.diverged_at)[(*index, m)]),
                    "parity": float(np.asarray(host.parity)[index])
                    if len(impls) == 2
                    else math.nan,
                    "param_norm": _host_norm(own),
                    "steps_per_sec": steps_per_sec,
                    "wall_time_s": wall,
                    "runs_in_program": len(self.names),
                }
            )
        params = {
            impl: jax.tree.map(
                lambda x: np.reshape(x, (*grid, *np.shape(x)[len(self.who.grid) :])),
                members.evaluation_point(host.states[m], self.engine.eval_params, self.who.grid),
            )
            for m, impl in enumerate(impls)
        }
        curves = {
            impl: {
                split: curves_from_records(
                    [
                        (index, r)
                        for (n, index, _), r in zip(self.names, records, strict=True)
                        if n == m
                    ],
                    split,
                    grid,
                )
                for split in ("train", "validation")
            }
            for m, impl in enumerate(impls)
        }
        return RunsResult(
            rows=rows,
            finals=finals,
            curves=curves,
            params=params,
            step=step,
            interrupted=interrupted,
            num_steps=self.experiment.num_steps,
            steps_per_sec=steps_per_sec,
            wall_time_s=wall,
            phases=self.phases,
            evaluated_at=self.evaluated_at,
            startup_s=self.startup,
            first_step_s=self.first_step,
        )


def finals_from_records(records: Sequence[dict]) -> dict[str, Any]:
    """{"train_<metric>", "validation_<metric>", "test_<metric>"}: each split's last record."""
    return {
        f"{record['split']}_{k}": v
        for record in records
        if record["split"] in ("train", "validation", "test")
        for k, v in record.items()
        if k not in ("step", "split", "confusion")
    }


def recorded_rate(records: Sequence[dict]) -> float:
    """The steps/s of a member's train records: each log window's rate, weighted by its
    steps (NaN without one)."""
    steps = seconds = 0.0
    last = 0
    for record in records:
        if record["split"] != "train":
            continue
        window, last = record["step"] - last, record["step"]
        rate = record.get("steps_per_sec", math.nan)
        if rate > 0 and math.isfinite(rate):
            steps, seconds = steps + window, seconds + window / rate
    return steps / seconds if seconds else math.nan


def curves_from_records(members_records, split: str, grid: tuple[int, ...]):
    """(steps [T], {"loss", "accuracy": [values, seeds, T]}) of one implementation's members,
    from `members_records`: (grid index, that member's metrics records) pairs. The members
    train in lockstep, so they log at the same steps."""
    steps, out = None, {}
    for index, records in members_records:
        mine = [r for r in records if r["split"] == split]
        at = np.asarray([r["step"] for r in mine], int)
        if steps is None:
            steps = at
            out = {k: np.full((*grid, len(at)), np.nan) for k in ("loss", "accuracy")}
        elif not np.array_equal(at, steps):
            raise run_io.RunDirError(f"members logged {split} at different steps: {at} vs {steps}")
        for k in out:
            out[k][index or (0, 0)] = [r.get(k, math.nan) for r in mine]
    return steps, out


def _window_to_json(window: Sequence[tuple[int, dict]]) -> dict[str, Any]:
    """The per-step train metrics not yet logged, as a checkpoint's JSON extra (exact: float32
    values are exact as JSON's doubles)."""
    chunks = [
        {k: [str(v.dtype), list(v.shape), v.ravel().tolist()] for k, v in chunk.items()}
        for _, chunk in window
    ]
    return {"first_steps": [int(first) for first, _ in window], "chunks": chunks}


def _window_from_json(window: dict[str, Any] | None) -> list[tuple[int, dict]]:
    """The inverse of `_window_to_json` ([] for None: a window that starts empty)."""
    if not window:
        return []
    chunks = [
        {k: np.asarray(values, dtype).reshape(shape) for k, (dtype, shape, values) in c.items()}
        for c in window["chunks"]
    ]
    return [(int(first), c) for first, c in zip(window["first_steps"], chunks, strict=True)]


def _host_norm(tree: Any) -> float:
    """The global L2 norm of a tree of host arrays, in NumPy (float64): `optax.tree.norm`
    here would compile a few small programs per leaf shape for one number."""
    leaves = jax.tree.leaves(tree)
    return math.sqrt(sum(float(np.sum(np.square(np.asarray(x, np.float64)))) for x in leaves))


def _result_to_json(result: RunsResult) -> dict[str, Any]:
    """`result.json`: everything of a finished run but its parameters (in the checkpoint)."""
    curves = {
        impl: {
            split: {"steps": steps.tolist(), **{k: v.tolist() for k, v in values.items()}}
            for split, (steps, values) in per_split.items()
        }
        for impl, per_split in result.curves.items()
    }
    fields = dataclasses.asdict(result) | {"curves": curves}
    fields.pop("params")
    return fields


def _result_from_json(saved: dict[str, Any]) -> RunsResult:
    curves = {
        impl: {
            split: (
                np.asarray(values.pop("steps"), int),
                {k: np.asarray(v, float) for k, v in values.items()},
            )
            for split, values in per_split.items()
        }
        for impl, per_split in saved["curves"].items()
    }
    return RunsResult(**(saved | {"curves": curves, "params": {}}))
