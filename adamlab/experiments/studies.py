r"""The research studies: batch size, schedules, weight decay, Kingma & Ba 2015.

Each study is `<name>_study(config, report_dir) -> summary rows`: it trains a grid of settings x
`config.seeds` with `adamlab.study_run.fit` and writes a report directory (see
`adamlab.study_report`). The configs are `configs/study_*.py` and `configs/kingma_ba_*.py`; the
scripts in `experiments/` call `main` below. Run, e.g.

    python experiments/batch_size.py --report_dir reports/batch_size --seeds 3

The pieces a study is about are small public functions, tested on their own:

- `scaled_learning_rate`: the batch-size scaling rules (Goyal et al. 2017's linear rule,
  Krizhevsky 2014 / Hoffer et al. 2017's square root).
- `adam_l2` / `adamw`: Adam with an L2 penalty in the loss vs AdamW's decoupled decay
  (Loshchilov & Hutter 2019) at the same strength lambda.
"""

from __future__ import annotations

import logging
import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import optax

from adamlab import baselines, data, optim
from adamlab.experiments import report, study_report
from adamlab.training.study_run import RunResult, fit

SCALING_RULES: tuple[str, ...] = ("none", "linear", "sqrt")
WEIGHT_DECAY_METHODS: tuple[str, ...] = ("adam_l2", "adamw")


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


def adam_l2(learning_rate: Any, l2: float, **adam_hparams: Any) -> optax.GradientTransformation:
    r"""Adam on the loss plus :math:`\frac{\lambda}{2}\lVert\theta\rVert^2`: the penalty's gradient
    :math:`\lambda\theta` joins the data gradient *before* Adam's scaling, so the decay of a weight
    is divided by its :math:`\sqrt{\hat v}` (strong where gradients are small, weak where large).

    Adding :math:`\lambda\theta` to the gradient (`add_decayed_weights` ahead of `scale_by_adam`)
    is the exact gradient of the penalty, computed without changing the loss function.
    """
    if not l2 >= 0:
        raise ValueError(f"l2={l2!r} must be >= 0")
    return optax.chain(optim.add_decayed_weights(l2), optim.adam(learning_rate, **adam_hparams))


def adamw(learning_rate: Any, weight_decay: float, **adam_hparams: Any):
    r"""AdamW: the decay :math:`\alpha\lambda\theta` is added after Adam's scaling, not divided
    by :math:`\sqrt{\hat v}`: every weight shrinks at the same relative rate. With
    :math:`\hat v = 1` it equals `adam_l2` at the same lambda, which is what "matched
    strength" means in the weight-decay study.
    """
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay={weight_decay!r} must be >= 0")
    return optim.adamw(learning_rate, weight_decay=weight_decay, **adam_hparams)


# ---------------------------------------------------------------------------- one run


def _train(
    config: ml_collections.ConfigDict,
    seed: int,
    *,
    learning_rate: float,
    optimizer: Any = "adam",
    batch_size: int | None = None,
    schedule: str | None = None,
    model_config: Any = None,
    num_epochs: int | None = None,
    **hparams: Any,
) -> RunResult:
    """One run of a study: `optimizer` is a name (`baselines.make_optimizer`) or a function
    `schedule -> tx`; other arguments default to the study config's fields."""
    batch_size = batch_size or config.batch_size
    num_epochs = num_epochs or config.num_epochs
    schedule = schedule or config.schedule
    info = data.dataset_info(config.data)
    num_steps = data.steps_per_epoch(info, batch_size) * num_epochs
    warmup = round(config.warmup_fraction * num_steps) if schedule == "warmup_cosine" else 0
    lr = baselines.make_schedule(schedule, learning_rate, num_steps, warmup)
    if callable(optimizer):
        tx = optimizer(lr)
    else:
        tx = baselines.make_optimizer(optimizer, lr, **hparams)
    model = baselines.create_model(model_config or config.model, info.num_classes)
    return fit(
        data_config=config.data,
        model=model,
        tx=tx,
        schedule=lr,
        batch_size=batch_size,
        num_epochs=num_epochs,
        seed=seed,
    )


def _seeds(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    seeds = tuple(config.seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"seeds={seeds!r} must be a non-empty sequence of ints >= 0")
    return seeds


_SHOWN = {
    "final_train_loss": "final train loss",
    "test_accuracy": "test accuracy",
    "test_loss": "test loss",
}


# ---------------------------------------------------------------------------- the studies


def batch_size_study(config: ml_collections.ConfigDict, report_dir) -> list[dict]:
    """Batch sizes x scaling rules at a fixed budget of epochs (larger batch: fewer steps).

    Config fields: batch_sizes, rules (of SCALING_RULES), base_batch_size, base_learning_rate,
    plus the shared ones (data, model, seeds, num_epochs, schedule, warmup_fraction).
    """
    for rule in config.rules:
        scaled_learning_rate(1.0, 1, 1, rule)  # Checks the names before anything runs.
    settings = [
        {
            "rule": rule,
            "batch_size": b,
            "learning_rate": scaled_learning_rate(
                config.base_learning_rate, config.base_batch_size, b, rule
            ),
        }
        for rule in config.rules
        for b in config.batch_sizes
    ]
    rows = study_report.run_grid(
        settings,
        _seeds(config),
        lambda s, seed: _train(
            config, seed, learning_rate=s["learning_rate"], batch_size=s["batch_size"]
        ),
        desc="batch size",
        cache_key=lambda s: (s["batch_size"], s["learning_rate"]),
    )
    summary = study_report.write_report(
        report_dir,
        config=config,
        rows=rows,
        by=("rule", "batch_size", "learning_rate"),
        metrics=_SHOWN,
        title="Batch size and learning-rate scaling (Adam)",
        notes=(
            f"Base: batch {config.base_batch_size}, learning rate {config.base_learning_rate}; "
            f"{config.num_epochs} epochs for every batch size (larger batches take fewer steps); "
            f"schedule {config.schedule}. A rule's learning rate at the base batch size is the "
            "base one, so those rows are the same runs."
        ),
    )
    panels = study_report.sweep_panels(
        rows, x="batch_size", line="rule", metrics=("final_train_loss", "test_accuracy")
    )
    report.plot_sweep(
        pathlib.Path(report_dir) / "batch_size.png",
        panels,
        xlabel="batch size",
        title="Adam: batch size with learning-rate scaling rules",
    )
    return summary


def schedules_study(config: ml_collections.ConfigDict, report_dir) -> list[dict]:
    """Constant learning rate vs linear warmup + cosine decay, over `learning_rates`."""
    settings = [
        {"schedule": s, "learning_rate": lr}
        for s in config.schedules
        for lr in config.learning_rates
    ]
    rows = study_report.run_grid(
        settings,
        _seeds(config),
        lambda s, seed: _train(
            config, seed, learning_rate=s["learning_rate"], schedule=s["schedule"]
        ),
        desc="schedules",
    )
    summary = study_report.write_report(
        report_dir,
        config=config,
        rows=rows,
        by=("schedule", "learning_rate"),
        metrics=_SHOWN,
        title="Learning-rate schedules (Adam): constant vs warmup + cosine",
        notes=(
            f"{config.num_epochs} epochs, batch {config.batch_size}; warmup_cosine warms up "
            f"linearly over {config.warmup_fraction:.0%} of the steps, then decays to 0."
        ),
    )
    directory = pathlib.Path(report_dir)
    report.plot_sweep(
        directory / "schedules.png",
        study_report.sweep_panels(
            rows, x="learning_rate", line="schedule", metrics=("final_train_loss", "test_accuracy")
        ),
        xlabel="peak learning rate",
        title="Adam: constant vs warmup + cosine",
    )
    panels = {
        f"lr={lr:g}": study_report.epoch_curves(
            [r for r in rows if r["learning_rate"] == lr], ("schedule",)
        )
        for lr in config.learning_rates
    }
    study_report.plot_epoch_curves(
        directory / "training_loss.png", panels, title="training loss per schedule"
    )
    return summary


def weight_decay_study(config: ml_collections.ConfigDict, report_dir) -> list[dict]:
    """Adam + L2 penalty vs AdamW at the same strengths lambda (0 = plain Adam, run once)."""
    strengths = sorted(set(config.strengths))
    if any(not s >= 0 for s in strengths):
        raise ValueError(f"strengths={config.strengths!r} must be >= 0")
    build = {"adam_l2": adam_l2, "adamw": adamw}
    settings = [{"method": m, "strength": s} for m in config.methods for s in strengths]
    for s in settings:
        if s["method"] not in build:
            raise ValueError(
                f"method {s['method']!r} is unknown; allowed: {', '.join(WEIGHT_DECAY_METHODS)}"
            )
    rows = study_report.run_grid(
        settings,
        _seeds(config),
        lambda s, seed: _train(
            config,
            seed,
            learning_rate=config.learning_rate,
            optimizer=lambda lr: build[s["method"]](lr, s["strength"]),
        ),
        desc="weight decay",
        cache_key=lambda s: ("adam", 0.0) if s["strength"] == 0 else (s["method"], s["strength"]),
    )
    summary = study_report.write_report(
        report_dir,
        config=config,
        rows=rows,
        by=("method", "strength"),
        metrics={**_SHOWN, "param_norm": "parameter norm"},
        title="Weight decay: Adam + L2 in the loss vs AdamW (decoupled), same lambda",
        notes=(
            f"Learning rate {config.learning_rate} ({config.schedule}), {config.num_epochs} "
            f"epochs, batch {config.batch_size}. adam_l2 adds lambda*theta to the gradient before "
            "Adam's scaling (decay divided by sqrt(v)); adamw subtracts lr*lambda*theta after it. "
            "Strength 0 is plain Adam (one run, shown under both methods)."
        ),
    )
    report.plot_sweep(
        pathlib.Path(report_dir) / "weight_decay.png",
        study_report.sweep_panels(
            [r for r in rows if r["strength"] > 0],
            x="strength",
            line="method",
            metrics=("test_accuracy", "param_norm"),
        ),
        xlabel="lambda",
        title="Adam + L2 vs AdamW",
    )
    return summary


def kingma_ba_study(config: ml_collections.ConfigDict, report_dir) -> list[dict]:
    """Kingma & Ba 2015, Figures 1-2: Adam vs SGD-Nesterov, AdaGrad, RMSProp.

    For each model of `config.models` (name -> model config, with its `schedule`) every
    optimizer's learning rate is tuned on the grid `config.learning_rates[optimizer]` with the
    first seed, by the final `config.select_by` metric; the chosen rate then runs every seed.
    Rows: phase "tune" (the grid, first seed) and "final" (the chosen rate, all seeds).
    """
    seeds = _seeds(config)
    rows: list[dict] = []
    chosen: dict[tuple[str, str], float] = {}
    for model_name, model_cfg in config.models.items():
        model_cfg = model_cfg.to_dict()
        schedule = model_cfg.pop("schedule")
        run = lambda s, seed, mc=model_cfg, sch=schedule: _train(
            config,
            seed,
            learning_rate=s["learning_rate"],
            optimizer=s["optimizer"],
            model_config=mc,
            schedule=sch,
        )
        grid = [
            {"model": model_name, "optimizer": opt, "learning_rate": lr}
            for opt in config.optimizers
            for lr in config.learning_rates[opt]
        ]
        tuned = study_report.run_grid(grid, seeds[:1], run, desc=f"tune {model_name}")
        rows += [dict(r, phase="tune") for r in tuned]
        final = []
        for opt in config.optimizers:
            candidates = [r for r in tuned if r["optimizer"] == opt]
            best = min(candidates, key=lambda r: _nan_last(r[config.select_by]))
            chosen[model_name, opt] = best["learning_rate"]
            final.append(dict(best, phase="final"))
            logging.info("%s %s: learning rate %g", model_name, opt, best["learning_rate"])
        settings = [
            {"model": model_name, "optimizer": opt, "learning_rate": chosen[model_name, opt]}
            for opt in config.optimizers
        ]
        more = study_report.run_grid(settings, seeds[1:], run, desc=f"seeds {model_name}")
        rows += final + [dict(r, phase="final") for r in more]
    final_rows = [r for r in rows if r["phase"] == "final"]
    summary = study_report.write_report(
        report_dir,
        config=config,
        rows=rows,
        by=("phase", "model", "optimizer", "learning_rate"),
        metrics={**_SHOWN, "validation_loss": "validation loss"},
        title="Kingma & Ba 2015: Adam vs SGD-Nesterov, AdaGrad, RMSProp",
        notes=(
            f"Minibatch {config.batch_size}, {config.num_epochs} epochs. Learning rate tuned per "
            f"model and optimizer on the grid with seed {seeds[0]} by final {config.select_by}; "
            "'final' rows are the chosen rate over all seeds, 'tune' rows the grid."
        ),
    )
    panels = {
        model_name: study_report.epoch_curves(
            [r for r in final_rows if r["model"] == model_name], ("optimizer",)
        )
        for model_name in config.models
    }
    study_report.plot_epoch_curves(
        pathlib.Path(report_dir) / "training_loss.png",
        panels,
        title="Kingma & Ba 2015 Figures 1-2 on " + config.data.name,
    )
    return summary


def _nan_last(value: float) -> float:
    return math.inf if math.isnan(value) else value


STUDY_FUNCTIONS = {
    "batch_size": batch_size_study,
    "schedules": schedules_study,
    "weight_decay": weight_decay_study,
    "kingma_ba": kingma_ba_study,
}


# ---------------------------------------------------------------------------- entry point


def run_study(
    name: str,
    config: ml_collections.ConfigDict,
    report_dir: str | pathlib.Path,
    seeds: int | Sequence[int] | None = None,
) -> list[dict]:
    """Runs study `name` (of STUDY_FUNCTIONS or "transfer"), optionally with seeds 0..n-1.

    Args:
      seeds: None keeps `config.seeds`; an int n uses seeds 0..n-1; a sequence uses those.
    """
    from adamlab.experiments import (
        transfer,  # Its own module; imported here to keep this one light.
    )

    functions: Mapping[str, Any] = {**STUDY_FUNCTIONS, "transfer": transfer.transfer_study}
    if name not in functions:
        raise ValueError(f"study {name!r} is unknown; allowed: {', '.join(functions)}")
    if seeds is not None:
        if isinstance(seeds, int):
            if seeds < 1:
                raise ValueError(f"seeds={seeds} must be >= 1 (the number of seeds)")
            seeds = range(seeds)
        config = ml_collections.ConfigDict(config.to_dict())
        config.seeds = tuple(int(s) for s in seeds)
    report_dir = pathlib.Path(report_dir)
    print(f"{name}: seeds {tuple(config.seeds)}; writing the report to {report_dir}", flush=True)
    summary = functions[name](config, report_dir)
    print(f"{name}: done; see {report_dir / 'summary.md'}", flush=True)
    return summary


def main(name: str, default_config: str, argv: Sequence[str] | None = None) -> int:
    """Command line of `experiments/<name>.py`: --config, --report_dir, --seeds."""
    import sys

    from absl import flags
    from ml_collections import config_flags

    argv = list(sys.argv if argv is None else argv)
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", default_config, "Study config file; override fields with --config.<field>=.",
        flag_values=fv, sys_argv=argv,
    )  # fmt: skip
    flags.DEFINE_string("report_dir", f"reports/{name}", "Report directory.", flag_values=fv)
    flags.DEFINE_integer(
        "seeds", None, "Number of seeds (0..n-1); default: the config's.", flag_values=fv
    )
    fv(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for noisy in ("absl", "orbax", "jax", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    run_study(name, fv["config"].value, fv["report_dir"].value, fv["seeds"].value)
    return 0
