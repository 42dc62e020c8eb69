"""From a config to everything a run builds before its first step: one place, checked.

    num_steps = validate_config(config)  # ConfigError: the field, the value, what is allowed
    experiment = build_experiment(config)  # model, optimizers, engine, who trains
    carry = initial_members(experiment)  # every member's step-0 state (host)

Who trains, the grid of members of one program, is the `runs` section's (`read_members`).
Used by the loop (`adamlab.training.train`), evaluation and `restore`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from adamlab import config_dict, data, models
from adamlab.diagnostics import layer_stats
from adamlab.optim import validation
from adamlab.training import distributed, engines, members, optimizers, run_io, steps, transfer
from adamlab.training.checkpoint import Checkpointer
from adamlab.training.train_state import create_train_state

BEST_METRICS = tuple(f"validation_{m}" for m in ("accuracy", "loss", "precision", "recall", "f1"))
_MAX_DISPATCH = 100  # Most steps per call when train.steps_per_dispatch is None (auto).
_TRAIN_FIELDS = (
    "engine",
    "batch_size",
    "num_epochs",
    "num_steps",
    "eval_batch_size",
    "log_every_steps",
    "eval_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "best_metric",
    "progress_bar",
)


class ConfigError(ValueError):
    """A config value is invalid; the message names the field, the value and what is allowed."""


# ---------------------------------------------------------------------------- config checks


def _fail(field: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{field}={value!r} is invalid: {allowed}")


def _is_int(value: Any, minimum: int) -> bool:
    """An int (numpy's too, not a bool) >= `minimum`."""
    return not isinstance(value, bool) and isinstance(value, int | np.integer) and value >= minimum


def _check_int(section: Any, prefix: str, name: str, minimum: int, optional: bool = False):
    value = section.get(name)
    if optional and value is None:
        return
    if not _is_int(value, minimum):
        _fail(f"{prefix}.{name}", value, f"must be an int >= {minimum}" + (" or None" * optional))


@dataclasses.dataclass(frozen=True)
class MemberGrid:
    """Who trains: the seeds, the implementations and the swept values (name -> values)."""

    seeds: tuple[int, ...]
    implementations: tuple[str, ...]
    sweep: dict[str, tuple[float, ...]]

    @property
    def grid(self) -> tuple[int, ...]:
        """() for a single run, else (values, seeds)."""
        if not self.sweep and len(self.seeds) == 1:
            return ()
        return (len(next(iter(self.sweep.values()))) if self.sweep else 1, len(self.seeds))

    def names(self) -> list[tuple[int, tuple[int, ...], str]]:
        """(implementation index, grid index, member name) of every member, in row order."""
        out = []
        num_values = self.grid[0] if self.grid else 1
        for m, impl in enumerate(self.implementations):
            for v in range(num_values):
                for i, seed in enumerate(self.seeds):
                    values = "".join(f"{k}={self.sweep[k][v]:.4g}_" for k in self.sweep)
                    out.append((m, (v, i) if self.grid else (), f"{impl}/{values}seed{seed}"))
        return out


def read_members(config: ml_collections.ConfigDict) -> MemberGrid:
    """The `runs` section (optional), checked: the seeds (default: `config.seed`), the
    implementations (default: `optimizer.implementation`) and the swept hyperparameters
    (name -> values, all equally long), whose product is the grid of members."""
    runs = config.get("runs") or {}
    seeds = tuple(runs.get("seeds") or (config.seed,))
    if not all(_is_int(s, 0) for s in seeds):
        _fail("runs.seeds", seeds, "must be a non-empty sequence of ints >= 0")
    if len(set(seeds)) != len(seeds):
        _fail("runs.seeds", seeds, "must be distinct")
    implementations = tuple(
        runs.get("implementations") or (config.optimizer.get("implementation", "ours"),)
    )
    known = optimizers.IMPLEMENTATIONS
    distinct = len(set(implementations)) == len(implementations)
    if not distinct or any(i not in known for i in implementations):
        _fail("runs.implementations", implementations, f"distinct names from {', '.join(known)}")
    sweep_section = config_dict.as_dict(runs.get("sweep") or {}, "runs.sweep")
    sweep = {k: tuple(float(x) for x in v) for k, v in sweep_section.items()}
    lengths = {len(v) for v in sweep.values()}
    if len(lengths) > 1 or 0 in lengths:
        _fail("runs.sweep", sweep, "swept values must be non-empty and equally long")
    return MemberGrid(seeds, implementations, sweep)


def validate_config(config: ml_collections.ConfigDict) -> int:
    """Checks every field before training; returns the run's total number of steps.

    Raises:
      ConfigError: naming the field, the value and what is allowed (unknown dataset, model,
        optimizer and engine names list the valid ones).
    """
    return _validated(config)[0]


def _validated(config: ml_collections.ConfigDict, num_devices: int = 1):
    """`validate_config`, the batches split over `num_devices`; returns what checking built:
    (num_steps, info, members, per implementation the optimizer with its swept
    hyperparameters injected and the schedule, and the model)."""
    for section in ("data", "model", "optimizer", "train"):
        if section not in config:
            raise ConfigError(f"config has no {section!r} section; see configs/digits.py")
    missing = [f for f in _TRAIN_FIELDS if f not in config.train]
    if missing:
        raise ConfigError(f"config.train lacks {missing}; see configs/digits.py for every field")
    seed = config.get("seed")
    if not validation.is_int(seed, 0):
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
    for name in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps"):
        _check_int(train, "train", name, 1)
    _check_int(train, "train", "keep_checkpoints", 1)
    _check_int(train, "train", "steps_per_dispatch", 1, optional=True)
    _check_int(train, "train", "inject_nan_at_step", 1, optional=True)
    for flag in ("progress_bar", "shard_optimizer"):
        if not isinstance(train.get(flag, False), bool):
            _fail(f"train.{flag}", train.get(flag), "must be True or False")
    if train.best_metric is not None and train.best_metric not in BEST_METRICS:
        _fail("train.best_metric", train.best_metric, f"allowed: None, {', '.join(BEST_METRICS)}")
    profile = train.get("profile_steps")
    if profile is not None and (
        len(profile) != 2
        or not all(isinstance(s, int) and s >= 1 for s in profile)
        or profile[0] > profile[1]
    ):
        _fail(
            "train.profile_steps",
            profile,
            "must be None or (first, last) steps, 1 <= first <= last",
        )
    who = read_members(config)
    _check_diagnostics(config)
    try:
        models.validate_model_config(config.model)
        if config.get("distributed") is not None and config.distributed.get("enabled", False):
            distributed.resolve_parameters(config.distributed)  # As `initialize` will read it.
        engines.validate_engine_name(train.engine)
        engines.validate_batch_size(train.batch_size, num_devices)
        engines.validate_batch_size(
            train.eval_batch_size, num_devices, what="train.eval_batch_size"
        )
        info = data.dataset_info(config.data)
        num_steps = total_steps(config, info)
        transfer.validate_init(config.get("init"))
        frozen = transfer.frozen_patterns(config.get("init"))
        built = tuple(
            optimizers.make_optimizer(
                config.optimizer.to_dict() | {"implementation": impl},
                num_steps,
                frozen=frozen,
                swept=tuple(who.sweep),
            )
            for impl in who.implementations
        )
        _check_sweep(config, who)
        model = models.create_model(config.model, info.num_classes)
        if frozen or optimizers.groups_of(config.optimizer):
            # The groups' and init.frozen's regexes against the parameter paths, before any
            # step: initialising an optimizer labels them (`optimizers.param_labels`).
            first = {k: v[0] for k, v in who.sweep.items()}
            txs = [optimizers.with_values(tx, first) for tx, _ in built]
            _abstract_states(model, txs, info.image_shape)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from e
    point = optimizers.eval_params(config.optimizer)
    if point and train.engine == "pmap" and train.get("shard_optimizer"):
        _fail(
            "train.shard_optimizer",
            True,
            "cannot be combined with engine='pmap' for an optimizer evaluated at a point "
            f"formed from its whole state ({point.__name__}: Schedule-Free's average x), "
            "which pmap's ZeRO-1 holds in slices: use train.engine='jit' or "
            "shard_optimizer=False",
        )
    if train.best_metric is not None and not info.num_validation:
        _fail(
            "train.best_metric",
            train.best_metric,
            f"needs a validation split, but data.validation_fraction="
            f"{config.data.get('validation_fraction')} leaves none; set best_metric=None",
        )
    return num_steps, info, who, built, model


def _abstract_states(model: Any, txs: Sequence, image_shape: Sequence[int]) -> tuple:
    """Each optimizer's step-0 train state as shapes and dtypes (`jax.eval_shape`: nothing is
    allocated or computed)."""
    init = lambda tx: create_train_state(jax.random.key(0), model, tx, image_shape)
    return tuple(jax.eval_shape(lambda tx=tx: init(tx)) for tx in txs)


def _check_diagnostics(config: ml_collections.ConfigDict) -> None:
    """`train.loss` and the optional `diagnostics` section (configs/digits.py documents it)."""
    loss = config.train.get("loss", "cross_entropy")
    if loss not in steps.LOSSES:
        _fail("train.loss", loss, f"allowed: {', '.join(steps.LOSSES)}")
    diag = config.get("diagnostics")
    if diag is None:
        return
    for name in ("layer_stats_every_steps", "curvature_every_steps"):  # None: off
        _check_int(diag, "diagnostics", name, 1, optional=True)
    for name in ("curvature_examples", "top_k", "lanczos_steps", "density_probes", "density_steps"):
        minimum = 0 if name == "density_probes" else 1
        _check_int(diag, "diagnostics", name, minimum, optional=name not in diag)
    if diag.get("lanczos_steps", 20) < diag.get("top_k", 1):
        _fail("diagnostics.lanczos_steps", diag.lanczos_steps, "must be >= diagnostics.top_k")
    if not isinstance(diag.get("preconditioned", True), bool):
        _fail("diagnostics.preconditioned", diag.get("preconditioned"), "must be True or False")
    groups = config.optimizer.get("groups")  # Checked with the optimizer.
    if groups and diag.get("layer_stats_every_steps"):
        _fail(
            "diagnostics.layer_stats_every_steps",
            diag.layer_stats_every_steps,
            "reads one optimizer's state for every parameter: None with optimizer.groups",
        )
    if groups and diag.get("curvature_every_steps") and diag.get("preconditioned", True):
        _fail(
            "diagnostics.preconditioned",
            True,
            "needs one optimizer's second moment for every parameter: False with optimizer.groups",
        )
    if diag.get("layer_stats_every_steps") and config.train.get("shard_optimizer", False):
        _fail(
            "diagnostics.layer_stats_every_steps",
            diag.layer_stats_every_steps,
            "needs the full optimizer state: None with train.shard_optimizer=True",
        )


def optimizer_spec(config: ml_collections.ConfigDict) -> layer_stats.AdamSpec:
    """What the diagnostics need of `config.optimizer` (b2, eps, convention, peak rate)."""
    hparams = optimizers.optimizer_hparams(config.optimizer)
    hparams["convention"] = config.optimizer.get("convention") or "optax"
    return layer_stats.AdamSpec.from_hparams(
        config.optimizer.name, hparams, float(config.optimizer.learning_rate)
    )


def layer_stats_for(config: ml_collections.ConfigDict, who: MemberGrid) -> list | None:
    """Per implementation the per-layer statistics function, or None when they are off."""
    if not (config.get("diagnostics") or {}).get("layer_stats_every_steps"):
        return None
    return [layer_stats.make_layer_stats(optimizer_spec(config)) for _ in who.implementations]


def _check_sweep(config: ml_collections.ConfigDict, who: MemberGrid) -> None:
    """Every run's swept values obey their rules (`validation.RULES`, and `RELATIONS` beside
    the config's other values): inside the program they are traced, so the optimizer's checks
    at construction see none of them. Nothing is built."""
    fixed = optimizers.optimizer_hparams(config.optimizer)
    fixed["learning_rate"] = config.optimizer.learning_rate
    num_values = who.grid[0] if who.sweep else 0
    for v in range(num_values):
        values = {name: swept[v] for name, swept in who.sweep.items()}
        for name, value, allowed in validation.violations(fixed | values):
            raise ConfigError(f"runs.sweep optimizer.{name}={value!r}: must be {allowed}")


def _sweep_schedule(config: ml_collections.ConfigDict, who: MemberGrid, num_steps: int):
    """The learning-rate schedule of every swept value at once (`schedule(counts)` has a row
    per value), where a sweep makes it differ from the config's (a swept peak or warmup
    fraction); None otherwise."""
    swept = {
        k: np.asarray(who.sweep[k])[:, None]
        for k in ("learning_rate", "warmup_fraction")
        if k in who.sweep
    }
    if not swept:
        return None
    return optimizers.make_schedule(
        config.optimizer,
        num_steps,
        peak=swept.get("learning_rate"),
        warmup_fraction=swept.get("warmup_fraction"),
    )


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
    txs: tuple[optax.GradientTransformation, ...]  # One per implementation.
    schedule: optax.Schedule
    # Per implementation: the optimizer taking the swept values (`optimizers.with_values`).
    sweepable_txs: tuple[Any, ...]
    engine: engines.Engine
    who: MemberGrid
    steps_per_dispatch: int
    # The schedule of every swept value (`_sweep_schedule`), or None when they share `schedule`.
    sweep_schedule: optax.Schedule | None = None


def build_experiment(
    config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None
) -> Experiment:
    """Validates `config` and builds dataset info, model, optimizers, schedule and engine.

    The global batches split over `devices` (evaluation may use fewer than training)."""
    devices = tuple(devices or jax.devices())
    num_steps, info, who, built, model = _validated(config, len(devices))
    first = {k: v[0] for k, v in who.sweep.items()}
    txs = [optimizers.with_values(tx, first) for tx, _ in built]
    schedule = built[0][1]
    dispatch = config.train.get("steps_per_dispatch")
    on_cpu = devices[0].platform == "cpu"
    if dispatch is None:  # One step per call for one run on CPU (jax-ml/jax#12868), else chunks.
        dispatch = 1 if (on_cpu and not who.grid) else _MAX_DISPATCH
    engine = engines.Engine(
        config.train.engine,
        model,
        txs,
        schedule,
        info.num_classes,
        grid=who.grid,
        devices=devices,
        shard_optimizer=config.train.get("shard_optimizer", False),
        conv_matmul=on_cpu and (bool(who.grid) or dispatch > 1),
        loss=config.train.get("loss", "cross_entropy"),
        layer_stats=layer_stats_for(config, who),
        eval_params=optimizers.eval_params(config.optimizer),
        program_key=program_key(config),
    )
    sweepable = tuple(tx for tx, _ in built)
    return Experiment(
        info,
        num_steps,
        model,
        tuple(txs),
        schedule,
        sweepable,
        engine,
        who,
        dispatch,
        _sweep_schedule(config, who, num_steps),
    )


def program_key(config: ml_collections.ConfigDict) -> str:
    """What of `config` its train programs depend on, as text: all of it but the values of
    `runs.seeds` and `runs.sweep`, which reach the programs as data (the members' initial
    states, the swept hyperparameters held in their optimizer states; `optimizers.with_values`)
    and whose counts the engine's grid holds. Two stages that differ in those alone, such as
    a benchmark's tuning studies, share their programs (`engines.Engine`'s `program_key`)."""
    fields = config.to_dict()
    runs = fields.get("runs") or {}
    runs.pop("seeds", None)
    runs["sweep"] = sorted(runs.get("sweep") or {})
    return json.dumps(fields, sort_keys=True, default=repr)


def initial_members(
    experiment: Experiment,
    params_for_seed: Callable[[int, Any], Any] | None = None,
) -> Any:
    """Every member's step-0 state (host), from its seed; `params_for_seed(seed, params)` may
    replace a seed's parameters (a transfer's pretrained ones)."""
    who = experiment.who
    makers = [
        lambda values, tx=tx: optimizers.with_values(tx, values) for tx in experiment.sweepable_txs
    ]
    return members.initial_members(
        experiment.model,
        experiment.txs,
        experiment.info.image_shape,
        who.seeds,
        {k: np.asarray(v, np.float32) for k, v in who.sweep.items()},
        makers,
        params_for_seed=params_for_seed,
    )


def abstract_members(experiment: Experiment) -> members.Members:
    """Shapes and dtypes of `initial_members` (no initialisation): the target of a restore."""
    grid = experiment.who.grid
    with_grid = lambda x: jax.ShapeDtypeStruct((*grid, *x.shape), x.dtype)
    states = _abstract_states(experiment.model, experiment.txs, experiment.info.image_shape)
    states = jax.tree.map(with_grid, states)
    m = len(states)
    return members.Members(
        states=states,
        alive=jax.ShapeDtypeStruct((*grid, m), np.bool_),
        diverged_at=jax.ShapeDtypeStruct((*grid, m), np.int32),
        parity=jax.ShapeDtypeStruct(grid, np.float32),
    )


def make_checkpointer(
    workdir: str | os.PathLike, config: ml_collections.ConfigDict, *, read_only: bool = False
) -> Checkpointer:
    """The run's checkpointer: the last `keep_checkpoints` plus the best by `best_metric`."""
    best = config.train.best_metric
    return Checkpointer(
        pathlib.Path(workdir).absolute() / run_io.CHECKPOINT_DIR,
        max_to_keep=config.train.keep_checkpoints,
        best_metric=best,
        best_mode="min" if best and best.endswith("loss") else "max",
        read_only=read_only,
    )
