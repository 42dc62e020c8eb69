"""Runs a study's grid of settings x seeds and writes its report directory.

A report directory holds:

    config.json    the study config as run (seeds included)
    results.csv    one row per run: the setting, the seed, final metrics, diverged
    results.json   the same rows plus each run's per-epoch training loss
    summary.md     mean and 95% Student-t interval over seeds per setting (`adamlab.report`)
    *.png          the study's figures

Tables and intervals come from `adamlab.report` (shared with `adamlab compare`/`sweep`).
"""

from __future__ import annotations

import json
import logging
import math
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tqdm

from adamlab.experiments import report
from adamlab.training import run_io
from adamlab.training.study_run import RunResult

METRICS = ("final_train_loss", "validation_accuracy", "test_accuracy", "test_loss", "param_norm")


def run_grid(
    settings: Sequence[Mapping[str, Any]],
    seeds: Sequence[int],
    run: Callable[[Mapping[str, Any], int], RunResult],
    *,
    desc: str,
    cache_key: Callable[[Mapping[str, Any]], Any] | None = None,
) -> list[dict[str, Any]]:
    """Runs every setting with every seed; returns one row per (setting, seed).

    Args:
      settings: dicts of the study's variables (e.g. {"batch_size": 64, "rule": "linear"}).
      run: `run(setting, seed) -> RunResult`.
      cache_key: settings with equal keys are the same computation (e.g. a batch size and
        learning rate reached by two scaling rules); they are run once and the row is reused.

    Returns:
      rows: the setting, "seed", the final metrics (`METRICS` and more), "diverged" and
      "epoch_loss" (a list; left out of the CSV).
    """
    rows, done = [], {}
    with tqdm.tqdm(total=len(settings) * len(seeds), desc=desc, unit="run") as bar:
        for setting in settings:
            for seed in seeds:
                key = None if cache_key is None else (cache_key(setting), seed)
                if key is None or key not in done:
                    bar.set_postfix_str(", ".join(f"{k}={v}" for k, v in setting.items()))
                    result = run(setting, seed)
                    if key is not None:
                        done[key] = result
                else:
                    result = done[key]
                rows.append(_row(setting, seed, result))
                bar.update(1)
    return rows


def _row(setting: Mapping[str, Any], seed: int, result: RunResult) -> dict[str, Any]:
    return {
        **setting,
        "seed": seed,
        "final_train_loss": result.epoch_loss[-1],
        **result.metrics,
        "diverged": result.diverged,
        "epoch_loss": list(result.epoch_loss),
    }


def write_report(
    report_dir: str | pathlib.Path,
    *,
    config: Any,
    rows: Sequence[Mapping[str, Any]],
    by: Sequence[str],
    metrics: Mapping[str, str],
    title: str,
    notes: str = "",
) -> list[dict[str, Any]]:
    """Writes config.json, results.csv/json and summary.md; returns the summary rows.

    Args:
      by: the setting columns that define a group (one table row per group).
      metrics: metric -> column title of the summary table (mean ± 95% interval over seeds).
      notes: markdown put under the table (what was run, how to read it).
    """
    report_dir = pathlib.Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    run_io.write_json(report_dir / "config.json", run_io.config_to_dict(config))
    flat = [{k: v for k, v in r.items() if k != "epoch_loss"} for r in rows]
    report.write_csv(report_dir / "results.csv", flat)
    (report_dir / "results.json").write_text(json.dumps(list(rows), indent=1, default=float))
    summary = report.summarize(rows, by=by, metrics=tuple(metrics))
    for group in summary:  # How many seeds of the group diverged (their metrics are NaN).
        members = [r for r in rows if all(r[k] == group[k] for k in by)]
        group["diverged"] = sum(bool(r["diverged"]) for r in members)
    table = report.markdown_table(summary, keys=(*by, "diverged"), metrics=metrics)
    text = f"# {title}\n\nMean ± 95% Student-t interval over seeds.\n\n{table}\n{notes}\n"
    (report_dir / "summary.md").write_text(text)
    logging.info("wrote %s", report_dir / "summary.md")
    return summary


def epoch_curves(rows: Sequence[Mapping[str, Any]], by: Sequence[str]) -> dict[str, np.ndarray]:
    """Label -> [seeds, epochs] training losses, grouping rows by the `by` columns."""
    curves: dict[str, list] = {}
    for row in rows:
        label = ", ".join(str(row[k]) for k in by)
        curves.setdefault(label, []).append(row["epoch_loss"])
    return {label: np.asarray(c, np.float64) for label, c in curves.items()}


def plot_epoch_curves(
    path: str | pathlib.Path,
    panels: Mapping[str, Mapping[str, np.ndarray]],
    *,
    title: str,
    ylabel: str = "training loss (NLL)",
) -> pathlib.Path:
    """Training loss against epochs, a line (mean over seeds, min-max band) per label.

    `panels`: panel title -> {line label: values [seeds, epochs]}.
    """
    curves = {
        panel: {label: (np.arange(1, v.shape[1] + 1), v) for label, v in lines.items()}
        for panel, lines in panels.items()
    }
    return report.plot_panels(path, curves, xlabel="epoch", ylabel=ylabel, log_y=True, title=title)


def sweep_panels(
    rows: Sequence[Mapping[str, Any]], *, x: str, line: str, metrics: Sequence[str]
) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """`adamlab.report.plot_sweep` panels: metric -> {line value: (xs, [seeds, xs])}."""
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
