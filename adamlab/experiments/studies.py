"""The research studies as configs: batch size, schedules, weight decay, Kingma & Ba, transfer.

A study turns its config's `study` section into groups, each one run of the one loop, and
maps the members' rows back to its settings for the report; docs/internals.md: each study.
"""

from __future__ import annotations

import functools
import logging
import math
import pathlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from adamlab import data
from adamlab.experiments import report
from adamlab.training import experiment, optimizers

# Study name -> its shipped config (`adamlab study <name>` loads it unless --config is given).
STUDIES: dict[str, str] = {
    "batch_size": "study_batch_size",
    "schedules": "study_schedules",
    "weight_decay": "study_weight_decay",
    "kingma_ba": "kingma_ba_digits",
    "transfer": "transfer_digits",
}
SCALING_RULES: tuple[str, ...] = ("none", "linear", "sqrt")
WEIGHT_DECAY_METHODS: dict[str, dict[str, str]] = {  # method -> the swept optimizer field
    "adam_l2": {"name": "adam", "field": "l2"},
    "adamw": {"name": "adamw", "field": "weight_decay"},
}
TRANSFER_MODES: tuple[str, ...] = ("frozen", "full", "scratch")
SHOWN = {  # The summary tables' columns (metric -> title).
    "final_train_loss": "final train loss",
    "test_accuracy": "test accuracy",
    "test_loss": "test loss",
}
# What the sweep figures show: a panel per metric, titled by its name.
_FIGURE_METRICS = {m: m for m in ("final_train_loss", "test_accuracy")}
# What a report row keeps of a member row (`train.RunsResult.rows` plus diverged, epoch_loss).
_COLUMNS = tuple(
    "seed steps final_train_loss validation_loss validation_accuracy test_loss test_accuracy "
    "test_f1 param_norm diverged diverged_at epoch_loss".split()
)


class StudyInterrupted(RuntimeError):
    """A group stopped on SIGTERM/SIGINT after saving a checkpoint; rerun the study to resume."""


def scaled_learning_rate(
    base_learning_rate: float, base_batch_size: int, batch_size: int, rule: str
) -> float:
    r"""The learning rate for `batch_size` under a scaling rule from a tuned (base) pair.

    "none": :math:`\alpha`; "linear": :math:`\alpha B / B_0` (Goyal et al. 2017);
    "sqrt": :math:`\alpha \sqrt{B / B_0}` (Hoffer et al. 2017; the rule that keeps the variance
    of an SGD step constant, often argued for Adam).
    """
    if rule not in SCALING_RULES:
        raise ValueError(f"rule={rule!r} is unknown; allowed: {', '.join(SCALING_RULES)}")
    for name, value in (("base_batch_size", base_batch_size), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be an int >= 1")
    if not base_learning_rate > 0:
        raise ValueError(f"base_learning_rate={base_learning_rate!r} must be > 0")
    ratio = batch_size / base_batch_size
    return base_learning_rate * {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[rule]


# ---------------------------------------------------------------------------- groups


def group_config(
    config: ml_collections.ConfigDict, changes: Mapping[str, Any]
) -> ml_collections.ConfigDict:
    """A training config of a study: `config` without its `study` section, with `changes`
    ("section.field" -> value) applied.

    Train metrics are logged once an epoch (the per-epoch loss curves), validation and
    checkpoints fall on epoch ends, and a schedule with a warmup warms up over
    `study.warmup_fraction` of the steps (if set; the other schedules take no warmup).
    """
    group = config.copy_and_resolve_references().unlock()  # The command line's is locked.
    fraction = group.study.get("warmup_fraction")
    del group.study
    for path, value in changes.items():
        *sections, field = path.split(".")
        functools.reduce(getattr, sections, group)[field] = value
    train, optimizer = group.train, group.optimizer
    info = data.dataset_info(group.data)
    per_epoch = data.steps_per_epoch(info, train.batch_size)
    train.log_every_steps = per_epoch
    train.eval_every_steps = train.checkpoint_every_steps = per_epoch * math.ceil(
        train.checkpoint_every_steps / per_epoch
    )
    if optimizer.schedule not in optimizers.WARMUP_SCHEDULES:
        optimizer.warmup_steps = 0
    elif fraction is not None:
        optimizer.warmup_steps = round(fraction * experiment.total_steps(group, info))
    return group


def train_groups(
    config: ml_collections.ConfigDict,
    groups: Mapping[str, ml_collections.ConfigDict],
    workdir: pathlib.Path,
) -> dict[str, list[dict[str, Any]]]:
    """Trains (resumes, or reads back) each group in `workdir/<name>` with
    `groups.run_groups` (the study `config` is the workdir's config.json); name -> member rows.

    A member row is `train.RunsResult.rows`' (param_norm: the global L2 norm of the final
    parameters) plus "diverged" and "epoch_loss" (mean training loss of each epoch).
    """
    from adamlab.experiments import groups as groups_lib  # Imports the loop: kept out of --help.

    results = groups_lib.run_groups(groups, workdir, config)
    stopped = [name for name in groups if name not in results or results[name].interrupted]
    if stopped:
        raise StudyInterrupted(
            f"group {stopped[0]} was stopped (checkpoint saved); run the study again to resume it"
        )
    return {name: _member_rows(groups[name], r) for name, r in results.items()}


def _member_rows(group, result) -> list[dict[str, Any]]:
    """`result.rows` with "diverged" and "epoch_loss": the training loss logged at each epoch's
    end, found by its recorded step (NaN if none was recorded), never by its position in the
    curve, so that a curve starting late (after a resume) cannot shift the epochs."""
    (curves,) = result.curves.values()  # A study group trains one implementation.
    steps, values = curves["train"]
    at = {int(step): i for i, step in enumerate(steps)}
    every = group.train.log_every_steps
    ends = sorted({*range(every, result.num_steps + 1, every), result.num_steps})
    loss = np.asarray(values["loss"], np.float64)  # [values, seeds, T]
    rows = []
    for i, row in enumerate(result.rows):
        v, s = divmod(i, loss.shape[1])
        epoch_loss = [float(loss[v, s, at[e]]) if e in at else math.nan for e in ends]
        rows.append(row | {"diverged": not row["finite"], "epoch_loss": epoch_loss})
    return rows


def _pick(setting: Mapping[str, Any], member: Mapping[str, Any]) -> dict[str, Any]:
    return {**setting, **{k: member[k] for k in _COLUMNS}}


def _with_prefix(prefix: str, section: Mapping[str, Any]) -> dict[str, Any]:
    return {f"{prefix}.{k}": v for k, v in section.items()}


# ---------------------------------------------------------------------------- reports


def _report(workdir, rows, *, by, metrics, title, notes, figures) -> list[dict[str, Any]]:
    """Writes a study's report (`groups.run_groups` wrote config.json): results.csv (a row per
    run: the setting, seed, final metrics, diverged), results.json (the same rows with
    "epoch_loss"), summary.md (mean ± 95% t-interval over seeds of `metrics` per setting `by`,
    with how many seeds diverged, then `notes`) and `figures`; returns the summary rows."""
    summary, table = report.summary_table(rows, by=by, metrics=metrics, count="diverged")
    report.write_report(
        workdir,
        rows,
        columns=[k for k in rows[0] if k != "epoch_loss"],
        tables={"results.json": rows},
        title=title,
        sections=["Mean ± 95% Student-t interval over seeds.", table, notes],
        figures=figures,
    )
    return summary


def _epoch_figure(panels: Mapping[str, Sequence[Mapping[str, Any]]], *, line: str, title: str):
    """Training loss against epochs: a panel per title -> rows, a line per value of `line`
    (its rows' "epoch_loss": [seeds, epochs])."""
    curves: dict[str, dict] = {}
    for panel, rows in panels.items():
        losses: dict[str, list] = {}
        for row in rows:
            losses.setdefault(str(row[line]), []).append(row["epoch_loss"])
        curves[panel] = {
            label: (np.arange(1, len(v[0]) + 1), np.asarray(v, np.float64))
            for label, v in losses.items()
        }
    return functools.partial(
        report.plot_panels,
        panels=curves,
        xlabel="epoch",
        ylabel="training loss (NLL)",
        log_y=True,
        title=title,
    )


def _setup(config) -> str:
    return (
        f"{config.train.num_epochs:g} epochs, batch {config.train.batch_size}, schedule "
        f"{config.optimizer.schedule}"
    )


# ---------------------------------------------------------------------------- the studies


def batch_size(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> list[dict]:
    """Batch sizes x scaling rules at a fixed number of epochs (a larger batch: fewer steps)."""
    study = config.study
    rate = lambda b, rule: scaled_learning_rate(
        study.base_learning_rate, study.base_batch_size, b, rule
    )
    for rule in study.rules:
        rate(study.base_batch_size, rule)  # Checks the names before anything trains.
    groups = {}
    for b in study.batch_sizes:
        rates = tuple(sorted({rate(b, rule) for rule in study.rules}))
        groups[f"batch{b}"] = group_config(
            config, {"train.batch_size": b, "runs.sweep.learning_rate": rates}
        )
    trained = train_groups(config, groups, workdir)
    rows = [
        _pick({"rule": rule, "batch_size": b, "learning_rate": rate(b, rule)}, m)
        for rule in study.rules
        for b in study.batch_sizes
        for m in trained[f"batch{b}"]
        if m["learning_rate"] == rate(b, rule)
    ]
    figure = report.sweep_figure(
        rows,
        x="batch_size",
        line=lambda r: r["rule"],
        metrics=_FIGURE_METRICS,
        xlabel="batch size",
        title="Adam: batch size with learning-rate scaling rules",
    )
    return _report(
        workdir,
        rows,
        by=("rule", "batch_size", "learning_rate"),
        metrics=SHOWN,
        title="Batch size and learning-rate scaling (Adam)",
        notes=(
            f"Base: batch {study.base_batch_size}, learning rate {study.base_learning_rate}; "
            f"{config.train.num_epochs:g} epochs for every batch size (larger batches take "
            f"fewer steps); schedule {config.optimizer.schedule}. A rule's learning rate at the "
            "base batch size is the base one, so those rows are the same runs. One compiled "
            "program per batch size trains all its learning rates and seeds."
        ),
        figures={"batch_size.png": figure},
    )


def schedules(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> list[dict]:
    """Each schedule of `study.schedules` at each peak rate of `study.learning_rates`."""
    study = config.study
    rates = tuple(study.learning_rates)
    groups = {
        s: group_config(config, {"optimizer.schedule": s, "runs.sweep.learning_rate": rates})
        for s in study.schedules
    }
    trained = train_groups(config, groups, workdir)
    rows = [
        _pick({"schedule": schedule, "learning_rate": m["learning_rate"]}, m)
        for schedule in study.schedules
        for m in trained[schedule]
    ]
    panels = {f"lr={lr:g}": [r for r in rows if r["learning_rate"] == lr] for lr in rates}
    figure = report.sweep_figure(
        rows,
        x="learning_rate",
        line=lambda r: r["schedule"],
        metrics=_FIGURE_METRICS,
        xlabel="peak learning rate",
        title="Adam: constant vs warmup + cosine",
    )
    return _report(
        workdir,
        rows,
        by=("schedule", "learning_rate"),
        metrics=SHOWN,
        title="Learning-rate schedules (Adam): constant vs warmup + cosine",
        notes=(
            f"{_setup(config)}; warmup_cosine warms up linearly over "
            f"{study.warmup_fraction:.0%} of the steps, then decays to 0. One compiled "
            "program per schedule trains all its learning rates and seeds."
        ),
        figures={
            "schedules.png": figure,
            "training_loss.png": _epoch_figure(
                panels, line="schedule", title="training loss per schedule"
            ),
        },
    )


def weight_decay(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> list[dict]:
    """Adam + L2 vs AdamW at the same strengths (0 = plain Adam, one group for both)."""
    study = config.study
    strengths = sorted(set(study.strengths))
    if any(not s >= 0 for s in strengths):
        raise ValueError(f"study.strengths={tuple(study.strengths)!r} must be >= 0")
    for method in study.methods:
        if method not in WEIGHT_DECAY_METHODS:
            raise ValueError(
                f"method {method!r} is unknown; allowed: {', '.join(WEIGHT_DECAY_METHODS)}"
            )
    positive = tuple(s for s in strengths if s > 0)
    groups = {"adam": group_config(config, {"optimizer.name": "adam"})} if 0 in strengths else {}
    for method in study.methods if positive else ():
        spec = WEIGHT_DECAY_METHODS[method]
        groups[method] = group_config(
            config,
            {
                "optimizer.name": spec["name"],
                f"runs.sweep.{spec['field']}": positive,
            },
        )
    trained = train_groups(config, groups, workdir)
    rows = []
    for method in study.methods:
        field = WEIGHT_DECAY_METHODS[method]["field"]
        for s in strengths:
            members = trained["adam"] if s == 0 else [m for m in trained[method] if m[field] == s]
            rows += [_pick({"method": method, "strength": s}, m) for m in members]
    figure = report.sweep_figure(
        [r for r in rows if r["strength"] > 0],
        x="strength",
        line=lambda r: r["method"],
        metrics={m: m for m in ("test_accuracy", "param_norm")},
        xlabel="lambda",
        title="Adam + L2 vs AdamW",
    )
    return _report(
        workdir,
        rows,
        by=("method", "strength"),
        metrics={**SHOWN, "param_norm": "parameter norm"},
        title="Weight decay: Adam + L2 in the loss vs AdamW (decoupled), same lambda",
        notes=(
            f"Learning rate {config.optimizer.learning_rate}, {_setup(config)}. adam_l2 "
            "(optimizer.l2) adds lambda*theta to the gradient before Adam's scaling (decay "
            "divided by sqrt(v)); adamw subtracts lr*lambda*theta after it. Strength 0 is plain "
            "Adam (one run per seed, shown under both methods)."
        ),
        figures={"weight_decay.png": figure},
    )


def kingma_ba(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> list[dict]:
    """Per model and optimizer: tune the learning rate with the first seed, then every seed.

    Rows: phase "tune" (the grid, first seed) and "final" (the chosen rate, every seed).
    """
    study = config.study
    seeds = tuple(experiment.read_members(config).seeds)

    def group(model: str, optimizer: str, rates, seeds) -> ml_collections.ConfigDict:
        model_config = study.models[model].to_dict()
        changes = {
            "optimizer.schedule": model_config.pop("schedule"),
            "runs.sweep.learning_rate": tuple(rates),
            "runs.seeds": seeds,
        }
        changes |= _with_prefix("model", model_config)
        changes |= _with_prefix("optimizer", study.optimizers[optimizer])
        return group_config(config, changes)

    pairs = [(model, opt) for model in study.models for opt in study.optimizers]
    tune = train_groups(
        config,
        {f"tune_{m}_{o}": group(m, o, study.learning_rates[o], seeds[:1]) for m, o in pairs},
        workdir,
    )
    chosen = {}
    for m, o in pairs:
        best = min(tune[f"tune_{m}_{o}"], key=lambda r: _nan_last(r[study.select_by]))
        chosen[m, o] = best["learning_rate"]
        logging.info("%s %s: learning rate %g", m, o, chosen[m, o])
    final = train_groups(
        config, {f"{m}_{o}": group(m, o, (chosen[m, o],), seeds) for m, o in pairs}, workdir
    )
    rows = []
    for phase, trained, prefix in (("tune", tune, "tune_"), ("final", final, "")):
        for m, o in pairs:
            setting = {"phase": phase, "model": m, "optimizer": o}
            rows += [
                _pick(setting | {"learning_rate": r["learning_rate"]}, r)
                for r in trained[f"{prefix}{m}_{o}"]
            ]
    final = [r for r in rows if r["phase"] == "final"]
    panels = {m: [r for r in final if r["model"] == m] for m in study.models}
    return _report(
        workdir,
        rows,
        by=("phase", "model", "optimizer", "learning_rate"),
        metrics={**SHOWN, "validation_loss": "validation loss"},
        title="Kingma & Ba 2015: Adam vs SGD-Nesterov, AdaGrad, RMSProp",
        notes=(
            f"Minibatch {config.train.batch_size}, {config.train.num_epochs:g} epochs. Learning "
            f"rate tuned per model and optimizer on its grid with the first seed by final "
            f"{study.select_by} (one program per grid); 'final' rows are the chosen rate over "
            "all seeds (one program each), 'tune' rows the grid."
        ),
        figures={
            "training_loss.png": _epoch_figure(
                panels,
                line="optimizer",
                title="Kingma & Ba 2015 Figures 1-2 on " + config.data.name,
            )
        },
    )


def _nan_last(value: float) -> float:
    return math.inf if math.isnan(value) else value


def transfer(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> list[dict]:
    """Pretrains once (mode "pretrain", on the source task), then each of `study.modes`, which
    differ only in their `init` section (docs/internals.md); the optimizer state always starts
    fresh (adamlab/training/transfer.py states the policy)."""
    study = config.study
    for mode in study.modes:
        if mode not in TRANSFER_MODES:
            raise ValueError(f"mode={mode!r} is unknown; allowed: {', '.join(TRANSFER_MODES)}")
    source = (workdir / "pretrain").absolute()
    head, not_head = f"^{study.head}/", f"^(?!{study.head}/)"
    init = {
        "full": {"init.dont_load": (head,)},
        "scratch": {},
        "frozen": {"init.dont_load": (head,), "init.frozen": (not_head,)},
    }
    loads = {"init.workdir": str(source), "init.checkpoint": "latest"}
    groups = {
        "pretrain": group_config(
            config,
            {
                **_with_prefix("data", study.pretrain_data),
                "optimizer.learning_rate": study.pretrain_learning_rate,
                "train.num_epochs": study.pretrain_epochs,
                "runs.seeds": (study.pretrain_seed,),
            },
        )
    }
    for mode in study.modes:
        groups[mode] = group_config(
            config,
            {
                "optimizer.learning_rate": study.learning_rates[mode],
                **(loads if init[mode] else {}),
                **init[mode],
            },
        )
    trained = train_groups(config, groups, workdir)
    rows = [_pick({"mode": mode}, m) for mode in ("pretrain", *study.modes) for m in trained[mode]]
    pretrain = {**config.data.to_dict(), **study.pretrain_data.to_dict()}
    finetuned = [r for r in rows if r["mode"] != "pretrain"]
    return _report(
        workdir,
        rows,
        by=("mode",),
        metrics=SHOWN,
        title="Transfer learning: frozen backbone vs full fine-tune vs from scratch",
        notes=(
            f"'pretrain': {pretrain['name']} classes {pretrain['classes'] or 'all'}, "
            f"{study.pretrain_epochs:g} epochs at lr {study.pretrain_learning_rate} (seed "
            f"{study.pretrain_seed}; its metrics are on those classes). Target: "
            f"{config.data.name} classes {config.data.classes or 'all'}, {_setup(config)}, "
            f"learning rates {study.learning_rates.to_dict()}. 'full' and 'frozen' start from "
            f"the pretrained parameters but the head ({study.head}, re-initialised); 'frozen' "
            "trains the head only. The optimizer state starts fresh for every parameter."
        ),
        figures={
            "training_loss.png": _epoch_figure(
                {"target task": finetuned}, line="mode", title="transfer learning"
            )
        },
    )


# ---------------------------------------------------------------------------- entry point


def run_study(
    name: str,
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    num_seeds: int | None = None,
) -> list[dict]:
    """Runs study `name` (of STUDIES) and writes its report in `workdir`; returns the summary.

    Args:
      num_seeds: None keeps `config.runs.seeds`; n uses seeds 0..n-1.

    Raises:
      StudyInterrupted: a SIGTERM/SIGINT stopped a group (checkpointed): rerun to resume.
    """
    if name not in STUDIES:
        raise ValueError(f"study {name!r} is unknown; allowed: {', '.join(STUDIES)}")
    if num_seeds is not None:
        if num_seeds < 1:
            raise ValueError(f"num_seeds={num_seeds} must be >= 1")
        config = config.copy_and_resolve_references()
        config.runs.seeds = tuple(range(num_seeds))
    workdir = pathlib.Path(workdir)
    seeds = experiment.read_members(config).seeds
    print(f"{name}: seeds {seeds}; writing the report to {workdir}", flush=True)
    start = time.perf_counter()
    study = {
        "batch_size": batch_size,
        "schedules": schedules,
        "weight_decay": weight_decay,
        "kingma_ba": kingma_ba,
        "transfer": transfer,
    }[name]
    summary = study(config, workdir)
    print(
        f"{name}: done in {time.perf_counter() - start:.0f} s; see {workdir / 'summary.md'}",
        flush=True,
    )
    return summary
