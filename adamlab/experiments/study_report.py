"""The report directory of a study (`adamlab.experiments.studies`), one function per study.

    config.json    the study config as run (seeds included)
    results.csv    one row per run: the setting, the seed, final metrics, diverged
    results.json   the same rows plus each run's per-epoch training loss ("epoch_loss")
    summary.md     mean and 95% Student-t interval over seeds per setting (`report`)
    *.png          the study's figures (mean over seeds, band: range over seeds)

The training runs themselves (metrics.jsonl, TensorBoard, checkpoints) stay in the group
directories beside these files.
"""

from __future__ import annotations

import json
import logging
import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from adamlab.experiments import report

SHOWN = {
    "final_train_loss": "final train loss",
    "test_accuracy": "test accuracy",
    "test_loss": "test loss",
}


def write_report(
    directory: pathlib.Path,
    *,
    rows: Sequence[Mapping[str, Any]],
    by: Sequence[str],
    metrics: Mapping[str, str],
    title: str,
    notes: str = "",
) -> list[dict[str, Any]]:
    """Writes results.csv/json and summary.md (`groups.run_groups` wrote config.json); returns
    the summary rows.

    Args:
      by: the setting columns that define a group (one table row per group).
      metrics: metric -> column title of the summary table (mean ± 95% interval over seeds).
      notes: markdown put under the table (what was run, how to read it).
    """
    report.write_csv(
        directory / "results.csv", [{k: v for k, v in r.items() if k != "epoch_loss"} for r in rows]
    )
    (directory / "results.json").write_text(json.dumps(list(rows), indent=1, default=float))
    summary = report.summarize(rows, by=by, metrics=tuple(metrics))
    for group in summary:  # How many seeds of the group diverged (frozen at their last step).
        members = [r for r in rows if all(r[k] == group[k] for k in by)]
        group["diverged"] = sum(bool(r["diverged"]) for r in members)
    table = report.markdown_table(summary, keys=(*by, "diverged"), metrics=metrics)
    text = f"# {title}\n\nMean ± 95% Student-t interval over seeds.\n\n{table}\n{notes}\n"
    (directory / "summary.md").write_text(text)
    logging.info("wrote %s", directory / "summary.md")
    return summary


def epoch_curves(rows: Sequence[Mapping[str, Any]], by: Sequence[str]) -> dict[str, np.ndarray]:
    """Label -> [seeds, epochs] training losses, grouping rows by the `by` columns."""
    curves: dict[str, list] = {}
    for row in rows:
        curves.setdefault(", ".join(str(row[k]) for k in by), []).append(row["epoch_loss"])
    return {label: np.asarray(c, np.float64) for label, c in curves.items()}


def plot_epoch_curves(
    path: pathlib.Path, panels: Mapping[str, Mapping[str, np.ndarray]], *, title: str
) -> pathlib.Path:
    """Training loss against epochs; `panels`: title -> {line label: values [seeds, epochs]}."""
    curves = {
        panel: {label: (np.arange(1, v.shape[1] + 1), v) for label, v in lines.items()}
        for panel, lines in panels.items()
    }
    return report.plot_panels(
        path, curves, xlabel="epoch", ylabel="training loss (NLL)", log_y=True, title=title
    )


def sweep_panels(
    rows: Sequence[Mapping[str, Any]], *, x: str, line: str, metrics: Sequence[str]
) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """`report.plot_sweep` panels: metric -> {line value: (xs, [seeds, xs])}."""
    panels: dict[str, dict] = {}
    for metric in metrics:
        lines: dict[str, tuple] = {}
        for value in dict.fromkeys(r[line] for r in rows):
            members = [r for r in rows if r[line] == value]
            xs = sorted(dict.fromkeys(r[x] for r in members))
            seeds = sorted(dict.fromkeys(r["seed"] for r in members))
            grid = np.full((len(seeds), len(xs)), math.nan)
            for r in members:
                grid[seeds.index(r["seed"]), xs.index(r[x])] = r[metric]
            lines[str(value)] = (np.asarray(xs, np.float64), grid)
        panels[metric] = lines
    return panels


def _setup(config) -> str:
    return (
        f"{config.train.num_epochs:g} epochs, batch {config.train.batch_size}, schedule "
        f"{config.optimizer.schedule}"
    )


# ---------------------------------------------------------------------------- one per study


def batch_size(config, rows, directory: pathlib.Path) -> list[dict]:
    study = config.study
    summary = write_report(
        directory,
        rows=rows,
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
    )
    report.plot_sweep(
        directory / "batch_size.png",
        sweep_panels(
            rows, x="batch_size", line="rule", metrics=("final_train_loss", "test_accuracy")
        ),
        xlabel="batch size",
        title="Adam: batch size with learning-rate scaling rules",
    )
    return summary


def schedules(config, rows, directory: pathlib.Path) -> list[dict]:
    summary = write_report(
        directory,
        rows=rows,
        by=("schedule", "learning_rate"),
        metrics=SHOWN,
        title="Learning-rate schedules (Adam): constant vs warmup + cosine",
        notes=(
            f"{_setup(config)}; warmup_cosine warms up linearly over "
            f"{config.study.warmup_fraction:.0%} of the steps, then decays to 0. One compiled "
            "program per schedule trains all its learning rates and seeds."
        ),
    )
    report.plot_sweep(
        directory / "schedules.png",
        sweep_panels(
            rows, x="learning_rate", line="schedule", metrics=("final_train_loss", "test_accuracy")
        ),
        xlabel="peak learning rate",
        title="Adam: constant vs warmup + cosine",
    )
    panels = {
        f"lr={lr:g}": epoch_curves([r for r in rows if r["learning_rate"] == lr], ("schedule",))
        for lr in dict.fromkeys(r["learning_rate"] for r in rows)
    }
    plot_epoch_curves(directory / "training_loss.png", panels, title="training loss per schedule")
    return summary


def weight_decay(config, rows, directory: pathlib.Path) -> list[dict]:
    summary = write_report(
        directory,
        rows=rows,
        by=("method", "strength"),
        metrics={**SHOWN, "param_norm": "parameter norm"},
        title="Weight decay: Adam + L2 in the loss vs AdamW (decoupled), same lambda",
        notes=(
            f"Learning rate {config.optimizer.learning_rate}, {_setup(config)}. adam_l2 "
            "(optimizer.l2) adds lambda*theta to the gradient before Adam's scaling (decay "
            "divided by sqrt(v)); adamw subtracts lr*lambda*theta after it. Strength 0 is plain "
            "Adam (one run per seed, shown under both methods)."
        ),
    )
    report.plot_sweep(
        directory / "weight_decay.png",
        sweep_panels(
            [r for r in rows if r["strength"] > 0],
            x="strength",
            line="method",
            metrics=("test_accuracy", "param_norm"),
        ),
        xlabel="lambda",
        title="Adam + L2 vs AdamW",
    )
    return summary


def kingma_ba(config, rows, directory: pathlib.Path) -> list[dict]:
    study = config.study
    summary = write_report(
        directory,
        rows=rows,
        by=("phase", "model", "optimizer", "learning_rate"),
        metrics={**SHOWN, "validation_loss": "validation loss"},
        title="Kingma & Ba 2015: Adam vs SGD-Nesterov, AdaGrad, RMSProp",
        notes=(
            f"Minibatch {config.train.batch_size}, {config.train.num_epochs:g} epochs. Learning "
            f"rate tuned per model and optimizer on its grid with the first seed by final "
            f"{study.select_by} (one program per grid); 'final' rows are the chosen rate over "
            "all seeds (one program each), 'tune' rows the grid."
        ),
    )
    final = [r for r in rows if r["phase"] == "final"]
    panels = {
        model: epoch_curves([r for r in final if r["model"] == model], ("optimizer",))
        for model in study.models
    }
    plot_epoch_curves(
        directory / "training_loss.png",
        panels,
        title="Kingma & Ba 2015 Figures 1-2 on " + config.data.name,
    )
    return summary


def transfer(config, rows, directory: pathlib.Path) -> list[dict]:
    study = config.study
    pretrain = {**config.data.to_dict(), **study.pretrain_data.to_dict()}
    summary = write_report(
        directory,
        rows=rows,
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
    )
    finetuned = [r for r in rows if r["mode"] != "pretrain"]
    plot_epoch_curves(
        directory / "training_loss.png",
        {"target task": epoch_curves(finetuned, ("mode",))},
        title="transfer learning",
    )
    return summary
