"""The training loop: `train_and_evaluate(config, workdir)`, the one readable loop of adamlab.

    config = config_dict.load_config_file("configs/digits.py")
    final = train_and_evaluate(config, "runs/digits")   # {"test_accuracy": ..., ...}

What a run does, in order:

1. Validates the whole config (`validate_config`) before anything is built or trained: a bad
   value raises `ConfigError` naming the field, the value and what is allowed.
2. Refuses a workdir that holds a run with a different config (`run_io.check_resumable`; only
   the training length may change, to extend a run), then writes `config.json`.
3. Builds dataset info, optimizer + schedule, model, engine and the initial state from the one
   seed; if the workdir has a checkpoint, restores the latest one (parameters, optimizer state,
   step, rng) and restarts the data at that step, so a resumed run ends bitwise equal to an
   uninterrupted one.
4. Trains. Metrics stay on the device and are fetched every log interval (and before every
   evaluation or checkpoint): train means go to `metrics.jsonl` and TensorBoard, and the first
   step whose `finite` flag is False stops the run with `NonFiniteError` naming the step and
   the quantity, before that state can be saved. Validation runs every `eval_every_steps` and
   at every checkpoint (it picks the best checkpoint); checkpoints are saved every
   `checkpoint_every_steps` and at the end.
5. SIGTERM/SIGINT (preemption, Ctrl-C) finish the current step, save a checkpoint and return
   with `"interrupted": True` (a second Ctrl-C aborts at once); previous handlers are restored.
6. At the end evaluates validation and test and returns the final metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import pathlib
import signal
import threading
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
import tqdm

from adamlab import data, models
from adamlab.training import distributed, engines, optimizer_factory, run_io
from adamlab.training.checkpoint import Checkpointer
from adamlab.training.evaluate import evaluate_split
from adamlab.training.train_state import TrainState, create_train_state

# The quantities the step checks for finiteness, in the order a non-finite value is blamed on.
_WATCHED = ("loss", "grad_norm", "update_norm")
BEST_METRICS = tuple(f"validation_{m}" for m in ("accuracy", "loss", "precision", "recall", "f1"))
_TRAIN_FIELDS = (
    "engine", "batch_size", "num_epochs", "num_steps", "eval_batch_size", "log_every_steps",
    "eval_every_steps", "checkpoint_every_steps", "keep_checkpoints", "best_metric",
    "progress_bar", "inject_nan_at_step",
)  # fmt: skip


class ConfigError(ValueError):
    """A config value is invalid; the message names the field, the value and what is allowed."""


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite loss, gradient or update; nothing after it was saved."""

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


# ---------------------------------------------------------------------------- config checks


def _fail(field: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{field}={value!r} is invalid: {allowed}")


def _check_int(section: Any, prefix: str, name: str, minimum: int, optional: bool = False):
    value = section[name]
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        _fail(f"{prefix}.{name}", value, f"must be an int >= {minimum}" + (" or None" * optional))


def validate_config(config: ml_collections.ConfigDict) -> int:
    """Checks every field before training; returns the run's total number of steps.

    Raises:
      ConfigError: naming the field, the value and what is allowed (unknown dataset, model,
        optimizer and engine names list the valid ones).
    """
    return _validated(config)[0]


def _validated(config: ml_collections.ConfigDict):
    """`validate_config`, returning what checking needed to build: (num_steps, dataset info,
    (tx, schedule)), so that `build_experiment` does not build them twice."""
    for section in ("data", "model", "optimizer", "train"):
        if section not in config:
            raise ConfigError(f"config has no {section!r} section; see configs/digits.py")
    missing = [f for f in _TRAIN_FIELDS if f not in config.train]
    if missing:
        raise ConfigError(f"config.train lacks {missing}; see configs/digits.py for every field")
    seed = config.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        _fail("seed", seed, "must be an int >= 0")
    if config.data.get("name") not in data.DATASETS:
        _fail("data.name", config.data.get("name"), f"allowed: {', '.join(data.DATASETS)}")
    train = config.train
    epochs = train.num_epochs
    if isinstance(epochs, bool) or not isinstance(epochs, int | float) or not epochs > 0:
        _fail("train.num_epochs", epochs, "must be a number > 0")
    if not math.isfinite(epochs):
        _fail("train.num_epochs", epochs, "must be finite")
    _check_int(train, "train", "num_steps", 1, optional=True)
    for name in (
        "log_every_steps",
        "eval_every_steps",
        "checkpoint_every_steps",
        "keep_checkpoints",
    ):
        _check_int(train, "train", name, 1)
    _check_int(train, "train", "inject_nan_at_step", 1, optional=True)
    if not isinstance(train.progress_bar, bool):
        _fail("train.progress_bar", train.progress_bar, "must be True or False")
    if train.best_metric is not None and train.best_metric not in BEST_METRICS:
        _fail("train.best_metric", train.best_metric, f"allowed: None, {', '.join(BEST_METRICS)}")
    if not isinstance(train.get("shard_optimizer", False), bool):
        _fail("train.shard_optimizer", train.shard_optimizer, "must be True or False")
    try:
        models.validate_model_config(config.model)
        if config.get("distributed") is not None and config.distributed.get("enabled", False):
            distributed.resolve_parameters(config.distributed)  # As `initialize` will read it.
        engines.validate_engine_config(train)
        info = data.dataset_info(config.data)
        num_steps = total_steps(config, info)
        optimizer = optimizer_factory.make_optimizer(config.optimizer, num_steps)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from e
    if train.best_metric is not None and not info.num_validation:
        _fail(
            "train.best_metric",
            train.best_metric,
            f"needs a validation split, but data.validation_fraction="
            f"{config.data.get('validation_fraction')} leaves none; set best_metric=None",
        )
    return num_steps, info, optimizer


def total_steps(config: ml_collections.ConfigDict, info: Any) -> int:
    """`train.num_steps` if set, else `ceil(num_epochs * steps_per_epoch)`."""
    if config.train.num_steps is not None:
        return int(config.train.num_steps)
    per_epoch = data.steps_per_epoch(info, config.train.batch_size)
    return max(1, math.ceil(config.train.num_epochs * per_epoch))


# ---------------------------------------------------------------------------- building a run


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything a config builds before the first step (shared by training and evaluation)."""

    info: Any  # adamlab.data.DatasetInfo
    num_steps: int
    model: Any
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    engine: engines.Engine


def build_experiment(config: ml_collections.ConfigDict) -> Experiment:
    """Validates `config` and builds dataset info, model, optimizer, schedule and engine.

    Mixed precision: the models compute in `config.model.dtype` themselves (Flax casts each
    layer's float32 parameters to it; BatchNorm statistics and scales stay float32), so no
    `precision.Policy` is passed to the engine and bfloat16 configs keep their numbers. The
    engine shards the optimizer state if `config.train.shard_optimizer` (ZeRO-1,
    `adamlab.zero`).
    """
    num_steps, info, (tx, schedule) = _validated(config)
    model = models.create_model(config.model, info.num_classes)
    engine = engines.make_engine(
        config.train.engine,
        model,
        tx,
        schedule,
        info.num_classes,
        shard_optimizer=config.train.get("shard_optimizer", False),
    )
    return Experiment(info, num_steps, model, tx, schedule, engine)


def initial_state(config: ml_collections.ConfigDict, experiment: Experiment) -> TrainState:
    """The step-0 state from `config.seed` (host/single-device layout)."""
    return create_train_state(
        jax.random.key(config.seed), experiment.model, experiment.tx, experiment.info.image_shape
    )


def abstract_state(config: ml_collections.ConfigDict, experiment: Experiment) -> TrainState:
    """Shapes and dtypes of `initial_state` (no compilation): the target of a restore."""
    return jax.eval_shape(lambda: initial_state(config, experiment))


def make_checkpointer(
    workdir: str | os.PathLike, config: ml_collections.ConfigDict
) -> Checkpointer:
    """The run's checkpointer: the last `keep_checkpoints` plus the best by `best_metric`."""
    best = config.train.best_metric
    return Checkpointer(
        pathlib.Path(workdir).absolute() / run_io.CHECKPOINT_DIR,
        max_to_keep=config.train.keep_checkpoints,
        best_metric=best,
        best_mode="min" if best and best.endswith("loss") else "max",
    )


# ---------------------------------------------------------------------------- loop helpers


class _StopOnSignal:
    """SIGTERM/SIGINT set `requested` (the loop stops after the current step); restored on exit.

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
        logging.warning("%s received: stopping after this step and saving a checkpoint", name)

    def __exit__(self, *exc_info) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


class _TrainMetrics:
    """Per-step metrics kept on device until `fetch`, which checks them for finiteness.

    Throughput (`steps_per_sec`) is timed between fetches, so it leaves out the first step
    (compilation) and, via `restart_clock`, the time spent evaluating and saving.
    """

    def __init__(self):
        self._device: list[tuple[int, dict]] = []
        self._host: list[dict] = []
        self._clock: float | None = None  # Start of the timed stretch; None before 1st fetch.
        self._timed_steps, self._seconds = 0, 0.0

    def add(self, step: int, metrics: dict) -> None:
        self._device.append((step, metrics))

    def fetch(self, last_checkpoint: int | None) -> None:
        """Copies pending metrics to the host; raises NonFiniteError at the first bad step."""
        for step, values in jax.device_get(self._device):
            if not bool(values["finite"]):
                values = {k: float(v) for k, v in values.items()}
                quantity = next((k for k in _WATCHED if not math.isfinite(values[k])), "update")
                raise NonFiniteError(step, quantity, values, last_checkpoint)
            self._host.append(values)
        now = time.perf_counter()
        if self._clock is not None:
            self._timed_steps += len(self._device)
            self._seconds += now - self._clock
        self._device, self._clock = [], now

    def restart_clock(self) -> None:
        self._clock = time.perf_counter()

    def summary(self) -> dict[str, float]:
        """Means over the steps fetched since the last summary."""
        keys = [k for k in self._host[0] if k != "finite"]
        out = {k: float(np.mean([m[k] for m in self._host])) for k in keys}
        if self._timed_steps:
            out["steps_per_sec"] = self._timed_steps / self._seconds
        self._host, self._timed_steps, self._seconds = [], 0, 0.0
        return out


def _prefixed(prefix: str, metrics: dict) -> dict:
    return {f"{prefix}_{k}": v for k, v in metrics.items() if k != "confusion"}


def _log(step: int | None, split: str, metrics: dict) -> None:
    shown = ("loss", "accuracy", "learning_rate", "grad_norm", "steps_per_sec", "f1")
    text = " ".join(f"{k}={metrics[k]:.4g}" for k in shown if k in metrics)
    logging.info("step %s %s: %s", "final" if step is None else step, split, text)


# ---------------------------------------------------------------------------- the loop


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    stop_after_step: int | None = None,
) -> dict[str, Any]:
    """Trains (or resumes) the run described by `config` in `workdir`; returns final metrics.

    Args:
      config: the experiment config (see configs/digits.py for every field).
      workdir: run directory; created if missing, resumed if it holds a checkpoint.
      stop_after_step: stop as a preemption would (checkpoint, `"interrupted": True`) once this
        step is done; for splitting a run over time-limited jobs, and for testing resumption.

    Returns:
      {"step", "interrupted", "train_<metric>" (means of the last log interval; absent when
      the run was already finished and nothing was trained), "validation_<metric>",
      "test_<metric>" (not when interrupted)}: accuracy, loss, macro precision/recall/f1 per
      split.

    Raises:
      ConfigError: invalid config; run_io.ConfigMismatchError: the workdir holds a different
      run; NonFiniteError: a non-finite loss/gradient/update (the last good checkpoint stays).

    Multi-host (`config.distributed.enabled`, see `adamlab.distributed`): every process calls
    this with the same config and workdir (a shared filesystem); each reads its slice of every
    batch, all save the checkpoints together (orbax), and process 0 alone writes config.json,
    metrics and the progress bar.
    """
    try:
        distributed.initialize(config.get("distributed"))  # Before anything touches a backend.
    except ValueError as e:
        raise ConfigError(str(e)) from e
    experiment = build_experiment(config)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    run_io.check_resumable(workdir, config)
    if distributed.is_primary():
        run_io.write_config(workdir, config)

    checkpointer = make_checkpointer(workdir, config)
    try:  # The checkpointer is closed on every exit, errors before the first step included.
        if checkpointer.latest_step() is None:
            state, start = initial_state(config, experiment), 0
        else:
            state, extra = checkpointer.restore(abstract_state(config, experiment), step="latest")
            start = int(state.step)
            if extra["data_start_step"] != start:  # Saved together; guard the invariant.
                raise RuntimeError(
                    f"checkpoint {start} has data position {extra['data_start_step']}"
                )
            logging.info("resuming %s from step %d of %d", workdir, start, experiment.num_steps)
        state = experiment.engine.put_state(state)
        if start < experiment.num_steps:
            return _train_loop(config, experiment, workdir, checkpointer, state, start,
                               stop_after_step)  # fmt: skip
        # A finished run (or one asked for fewer steps): its metrics, logging nothing twice.
        logging.info("%s is already trained to step %d", workdir, start)
        final: dict[str, Any] = {"step": start, "interrupted": False}
        splits = ("validation", "test") if experiment.info.num_validation else ("test",)
        for split in splits:
            result = _evaluate(experiment.engine, state, config, split, None, None)
            final.update(_prefixed(split, result))
        return final
    finally:
        checkpointer.wait_until_finished()
        checkpointer.close()


def _train_loop(
    config: ml_collections.ConfigDict,
    experiment: Experiment,
    workdir: pathlib.Path,
    checkpointer: Checkpointer,
    state: Any,
    start: int,
    stop_after_step: int | None,
) -> dict[str, Any]:
    """Steps start+1 .. num_steps of `train_and_evaluate` (see its docstring), from `state`
    placed by the engine; logs, evaluates and checkpoints on the way."""
    info, num_steps, engine = experiment.info, experiment.num_steps, experiment.engine
    train_cfg = config.train
    primary = distributed.is_primary()
    final: dict[str, Any] = {"step": start, "interrupted": False}
    # The data restarts exactly where the checkpoint left it: batch i is the same in every run.
    batches = data.train_batches(
        config.data,
        global_batch_size=train_cfg.batch_size,
        seed=config.seed,
        start_step=start,
        layout=engine.batch_layout,
    )
    last_saved = checkpointer.latest_step()
    pending = _TrainMetrics()
    bar = tqdm.tqdm(
        total=num_steps,
        initial=start,
        unit="step",
        dynamic_ncols=True,
        mininterval=1.0,
        disable=None if train_cfg.progress_bar and primary else True,  # None: on a terminal.
    )
    try:
        with (
            run_io.MetricWriter(workdir, resume_step=start)
            if primary
            else contextlib.nullcontext(None) as writer,
            _StopOnSignal() as stop,
        ):
            for step in range(start + 1, num_steps + 1):
                batch = next(batches)
                if step == train_cfg.inject_nan_at_step:
                    batch = dict(batch, image=np.full_like(batch["image"], np.nan))
                state, metrics = engine.train_step(state, engine.put_batch(batch))
                pending.add(step, metrics)
                bar.update(1)

                stopping = stop.requested is not None or step == stop_after_step
                save = step % train_cfg.checkpoint_every_steps == 0 or step == num_steps or stopping
                evaluate = save or step % train_cfg.eval_every_steps == 0
                log = save or step % train_cfg.log_every_steps == 0 or step == start + 1
                if not (log or evaluate):
                    continue
                pending.fetch(last_saved)  # Raises NonFiniteError before anything is saved.
                final["step"] = step
                if log:
                    summary = pending.summary()
                    if writer is not None:
                        writer.write(step, "train", summary)
                    _log(step, "train", summary)
                    bar.set_postfix(loss=f"{summary['loss']:.4f}", refresh=False)
                    final.update(_prefixed("train", summary))
                validation = None  # Validation metrics rank the checkpoints ("best").
                if evaluate and info.num_validation:
                    result = _evaluate(engine, state, config, "validation", step, writer)
                    validation = _prefixed("validation", result)
                    final.update(validation)
                if save:
                    checkpointer.save(
                        step,
                        engine.get_state(state),
                        metrics=validation,
                        extra={"data_start_step": step},
                        force=True,
                    )
                    last_saved = step
                pending.restart_clock()
                if stopping:
                    final["interrupted"] = True
                    logging.warning(
                        "stopped at step %d/%d (%s); checkpoint saved, run again to resume",
                        step, num_steps, stop.requested or "stop_after_step",
                    )  # fmt: skip
                    break
            if not final["interrupted"]:
                result = _evaluate(engine, state, config, "test", num_steps, writer)
                final.update(_prefixed("test", result))
    finally:
        bar.close()
    return final


def _evaluate(engine, state, config, split: str, step: int | None, writer) -> dict[str, Any]:
    """Evaluates `split`; logs it at `step` (and to `writer` unless it is None)."""
    result = evaluate_split(
        engine, state, config.data, split=split, batch_size=config.train.eval_batch_size
    )
    if writer is not None:
        writer.write(step, split, result)
    _log(step, split, result)
    return result
