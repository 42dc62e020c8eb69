"""Reports of multi-run studies: 95% intervals over seeds, CSV and markdown tables, figures.

    mean, half = t_interval([0.98, 0.99, 0.97])          # mean +- half is the 95% interval
    rows = summarize(results, by=("optimizer", "implementation"), metrics=("test_accuracy",))
    write_csv(path, results); path.write_text(markdown_table(rows, columns))

Intervals are Student-t intervals over seeds, `mean +- t_{0.975, n-1} * s / sqrt(n)` with `s`
the sample standard deviation (ddof=1): seeds are few (2-5), where the normal quantile 1.96
would be far too narrow (t_{0.975, 1} = 12.7, t_{0.975, 2} = 4.30). With one seed there is no
interval (`half` is NaN and tables say "n=1, no interval").

Figures show the mean and the range (min to max) over seeds: with 2-3 seeds a t band is mostly
quantile (12.7x or 4.3x the standard error) and leaves the axis (accuracy > 1, loss < 0); the
tables carry the intervals. Only numpy, scipy (for the t quantile) and matplotlib (lazily, with
the Agg backend: files only, no display needed).
"""

from __future__ import annotations

import csv
import math
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


def t_interval(values: Iterable[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Mean and half-width of the two-sided Student-t interval of the mean of `values`.

    NaNs (diverged runs) are kept: they make the mean and interval NaN rather than silently
    dropping a run. Returns (mean, NaN) for a single value.

    Raises:
      ValueError: for no values or a confidence outside (0, 1).
    """
    x = np.asarray(list(values), np.float64)
    if x.size == 0:
        raise ValueError("t_interval needs at least one value")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r} must be in (0, 1)")
    mean = float(np.mean(x))
    if x.size == 1:
        return mean, math.nan
    quantile = stats.t.ppf(0.5 + confidence / 2, df=x.size - 1)
    return mean, float(quantile * np.std(x, ddof=1) / math.sqrt(x.size))


def format_interval(mean: float, half: float, digits: int = 4) -> str:
    """`0.9861 ± 0.0042`; `0.9861 (n=1, no interval)` for one value (`half` NaN); `nan (a run
    diverged)` when the mean is NaN (`t_interval` keeps a diverged run's NaN)."""
    if math.isnan(mean):
        return "nan (a run diverged)"
    if math.isnan(half):
        return f"{mean:.{digits}f} (n=1, no interval)"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def summarize(
    rows: Sequence[Mapping[str, Any]],
    *,
    by: Sequence[str],
    metrics: Sequence[str],
    maxima: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """One row per distinct value of the `by` columns (in first-seen order).

    Each row holds the `by` values, `n` (rows in the group), `<metric>_mean` and
    `<metric>_half` (95% t-interval half-width) for every metric, and `<column>_max` for every
    column of `maxima` (e.g. the parity: the worst case matters, not the mean).
    """
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in by), []).append(row)
    out = []
    for key, members in groups.items():
        summary: dict[str, Any] = dict(zip(by, key, strict=True))
        summary["n"] = len(members)
        for metric in metrics:
            summary[f"{metric}_mean"], summary[f"{metric}_half"] = t_interval(
                float(m[metric]) for m in members
            )
        for column in maxima:
            # np.max, not max(): a NaN (a diverged run) must win wherever it is in the group.
            summary[f"{column}_max"] = float(np.max([float(m[column]) for m in members]))
        out.append(summary)
    return out


def markdown_table(
    summary: Sequence[Mapping[str, Any]],
    *,
    keys: Sequence[str],
    metrics: Mapping[str, str],
    maxima: Mapping[str, str] | None = None,
    digits: int = 4,
) -> str:
    """A markdown table: the `keys` columns, `n`, then "mean ± half" per metric.

    Args:
      summary: rows of `summarize`.
      keys: group columns shown as they are.
      metrics: metric name -> column title.
      maxima: column name -> title, shown as `<column>_max` in scientific notation.
    """
    maxima = maxima or {}
    header = [*keys, "n", *metrics.values(), *maxima.values()]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in summary:
        cells = [_cell(row[k]) for k in keys] + [str(row["n"])]
        cells += [format_interval(row[f"{m}_mean"], row[f"{m}_half"], digits) for m in metrics]
        cells += [f"{row[f'{c}_max']:.1e}" for c in maxima]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> pathlib.Path:
    """Writes `rows` (dicts with the same keys) as CSV with a header; floats at full precision."""
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    path = pathlib.Path(path)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: _csv_value(v) for k, v in row.items()} for row in rows)
    return path


def _csv_value(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return repr(float(value))  # Round-trips exactly.
    return value


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a CSV written by `write_csv` (values as strings)."""
    with pathlib.Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------- figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # Files only: works without a display, in tests and on servers.
    import matplotlib.pyplot as plt

    return plt


def _lines(ax, lines: Mapping[str, tuple[np.ndarray, np.ndarray]], marker: str = "") -> None:
    """Mean over seeds (axis 0) as a line, the range over seeds as a band.

    One colour per optimizer (the label before " ("); a label ending in "(optax)" is drawn
    dashed and without a band: it is the twin of the solid line of the same colour.
    """
    colors: dict[str, Any] = {}
    for label, (xs, values) in lines.items():
        values = np.asarray(values, np.float64)
        group = label.split(" (")[0]
        twin = label.endswith("(optax)")
        color = colors.setdefault(group, f"C{len(colors) % 10}")
        ax.plot(
            xs,
            values.mean(axis=0),
            marker + ("--" if twin else "-"),
            color=color,
            label=label,
            lw=1.2,
            ms=3,
        )
        if not twin and values.shape[0] > 1:
            ax.fill_between(xs, values.min(axis=0), values.max(axis=0), color=color, alpha=0.15)


def plot_curves(
    path: str | os.PathLike,
    curves: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
    *,
    title: str = "",
) -> pathlib.Path:
    """Line plots of the mean over seeds with the range over seeds, one panel per quantity.

    Args:
      path: the PNG to write.
      curves: panel title -> {line label: (steps [points], values [seeds, points])}.
      title: figure title.
    """
    return plot_panels(path, curves, xlabel="step", title=title)


def plot_sweep(
    path: str | os.PathLike,
    panels: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
    *,
    xlabel: str,
    log_x: bool = True,
    title: str = "",
) -> pathlib.Path:
    """Final metric against a hyperparameter: mean and range over seeds, a line per optimizer.

    Args:
      path: the PNG to write.
      panels: panel title (metric) -> {line label: (values of the hyperparameter [points],
        metric [seeds, points])}.
      xlabel: the hyperparameter's name.
      log_x: log-scaled x axis (learning rates).
    """
    return plot_panels(path, panels, xlabel=xlabel, log_x=log_x, marker="o", title=title)


def plot_panels(
    path: str | os.PathLike,
    panels: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
    *,
    xlabel: str,
    title: str,
    ylabel: str | None = None,
    log_x: bool = False,
    log_y: bool | None = None,
    marker: str = "",
) -> pathlib.Path:
    """One panel per entry of `panels` ({line label: (xs, values [seeds, xs])}), lines drawn
    by `_lines`; `log_y` None puts the panels whose title says "loss" on a log y axis."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (panel, lines) in zip(axes[0], panels.items(), strict=True):
        _lines(ax, lines, marker=marker)
        ax.set_xlabel(xlabel)
        if ylabel:
            ax.set_ylabel(ylabel)
        ax.set_title(panel)
        ax.grid(alpha=0.3)
        if log_x:
            ax.set_xscale("log")
        if log_y or (log_y is None and "loss" in panel):
            ax.set_yscale("log")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title + " (mean over seeds; band: range over seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return pathlib.Path(path)


def persisted_rate(path: pathlib.Path) -> float:
    """The steps/s of the program in run directory `path`, from its first member's train
    records (each log window's rate, weighted by its steps); NaN if none has one. For a run
    whose own process timed no step (resumed at its final step): what the attempts measured."""
    from adamlab.training import run_io  # Imports jax: kept out of the report's import.

    member = min(path.glob(f"members/**/{run_io.METRICS_FILE}"), default=path / run_io.METRICS_FILE)
    steps = seconds = 0.0
    last = 0
    for record in run_io.read_metrics(member.parent, "train"):
        window, last = record["step"] - last, record["step"]
        if record.get("steps_per_sec", 0) > 0 and math.isfinite(record["steps_per_sec"]):
            steps, seconds = steps + window, seconds + window / record["steps_per_sec"]
    return steps / seconds if seconds else math.nan
