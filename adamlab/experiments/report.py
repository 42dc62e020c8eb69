"""The one report writer (results.csv, summary.md, figures) of compare, sweep, the studies, the
benchmark and the AlgoPerf leaderboard; docs/internals.md describes it."""

from __future__ import annotations

import csv
import functools
import json
import logging
import math
import os
import pathlib
import platform
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import special  # Its t quantile: scipy.stats's, without importing all of stats.

from adamlab.diagnostics.figures import figure  # The one figure saver: `report.figure`.
from adamlab.training import run_io

CONFIDENCE = 0.95
RESULTS = "results.csv"
SUMMARY = "summary.md"


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
    quantile = special.stdtrit(x.size - 1, 0.5 + confidence / 2)  # = stats.t.ppf
    return mean, float(quantile * np.std(x, ddof=1) / math.sqrt(x.size))


def format_interval(mean: float, half: float) -> str:
    """`0.9861 ± 0.0042`; `0.9861 (n=1, no interval)` for one value (`half` NaN); `nan (a run
    diverged)` when the mean is NaN (`t_interval` keeps a diverged run's NaN)."""
    if math.isnan(mean):
        return "nan (a run diverged)"
    if math.isnan(half):
        return f"{mean:.4f} (n=1, no interval)"
    return f"{mean:.4f} ± {half:.4f}"


def summarize(
    rows: Sequence[Mapping[str, Any]],
    *,
    by: Sequence[str],
    metrics: Sequence[str],
    maxima: Sequence[str] = (),
    count: str | None = None,
) -> list[dict[str, Any]]:
    """One row per distinct value of the `by` columns (in first-seen order).

    Each row holds the `by` values, `n` (rows in the group), `<metric>_mean` and
    `<metric>_half` (95% t-interval half-width) for every metric, `<column>_max` for every
    column of `maxima` (e.g. the parity: the worst case matters, not the mean), and under
    `count` the number of the group's rows whose `count` column is true (e.g. "diverged").
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
        if count:
            summary[count] = sum(bool(m[count]) for m in members)
        out.append(summary)
    return out


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A markdown table of `header` and one line per row of cells (no final newline)."""
    line = lambda cells: "| " + " | ".join(cells) + " |"
    return "\n".join([line(header), "|" + "---|" * len(header), *map(line, rows)])


def summary_table(
    rows: Sequence[Mapping[str, Any]],
    *,
    by: Sequence[str],
    metrics: Mapping[str, str],
    maxima: Mapping[str, str] | None = None,
    count: str | None = None,
) -> tuple[list[dict[str, Any]], str]:
    """`summarize` of `rows` and its markdown table: (summary rows, markdown).

    The table shows the `by` columns, the `count` column, `n`, then "mean ± half" per metric.

    Args:
      metrics: metric name -> column title.
      maxima: column name -> title, shown as `<column>_max` in scientific notation.
    """
    maxima = maxima or {}
    summary = summarize(rows, by=by, metrics=tuple(metrics), maxima=tuple(maxima), count=count)
    keys = (*by, count) if count else tuple(by)
    header = [*keys, "n", *metrics.values(), *maxima.values()]
    cells = [
        [f"{row[k]:.3g}" if isinstance(row[k], float) else str(row[k]) for k in keys]
        + [str(row["n"])]
        + [format_interval(row[f"{m}_mean"], row[f"{m}_half"]) for m in metrics]
        + [f"{row[f'{c}_max']:.1e}" for c in maxima]
        for row in summary
    ]
    return summary, table(header, cells) + "\n"


def machine() -> str:
    """The machine a report's times were measured on, for its summary."""
    import jax

    device = jax.devices()[0]
    return (
        f"{platform.machine()}, {os.cpu_count()} CPU threads, jax {jax.__version__} on "
        f"{device.platform}:{device.device_kind}"
    )


# ---------------------------------------------------------------------------- files


def write_csv(
    path: str | os.PathLike,
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
) -> pathlib.Path:
    """Writes `rows` as CSV with a header, floats at full precision.

    The columns are `columns`, by default every key of the rows in first-seen order (a key a
    row lacks, such as a hyperparameter another optimizer does not have, is left empty).
    """
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    columns = list(columns or dict.fromkeys(k for row in rows for k in row))
    path = pathlib.Path(path)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: _csv_value(row.get(k, "")) for k in columns} for row in rows)
    return path


def _csv_value(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return repr(float(value))  # Round-trips exactly.
    return value


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a CSV written by `write_csv` (values as strings)."""
    with pathlib.Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


def write_report(
    workdir: str | os.PathLike,
    rows: Sequence[Mapping[str, Any]],
    *,
    title: str,
    sections: Sequence[str],
    columns: Sequence[str] | None = None,
    tables: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    figures: Mapping[str, Callable[[pathlib.Path], Any]] | None = None,
    rows_file: str = RESULTS,
) -> str:
    """Writes the report of `rows` (one dict per run) into `workdir`; returns summary.md.

    `rows_file` (results.csv) holds `rows` (their `columns`; default: all); `tables` are more
    files, name -> rows (CSV, or JSON for a name ending in ".json": rows whole, lists
    included); summary.md is `# title` then each non-empty section; `figures`: file name -> a
    function drawing into it.
    """
    workdir = pathlib.Path(workdir)
    write_csv(workdir / rows_file, rows, columns)
    for name, table in (tables or {}).items():
        if name.endswith(".json"):
            (workdir / name).write_text(json.dumps(list(table), indent=1, default=float))
        else:
            write_csv(workdir / name, table)
    for name, draw in (figures or {}).items():
        draw(workdir / name)
    text = "\n\n".join([f"# {title}", *(s.strip("\n") for s in sections if s)]) + "\n"
    (workdir / SUMMARY).write_text(text)
    logging.info("wrote %s", workdir / SUMMARY)
    return text


def check_request(
    workdir: str | os.PathLike,
    holds: Mapping[str, Sequence[Any]],
    asked: Mapping[str, Sequence[Any]],
) -> None:
    """Refuses a request whose report would replace `workdir`'s without some of what it holds
    (`holds`, `asked`: flag -> values), before anything is written: asking for all it holds
    resumes it, more names as well extend it (finished groups are reused as saved).

    Raises:
      run_io.ConfigMismatchError: one line: what the workdir holds, what was asked, what would
        be lost and what to do.
    """
    lost = {f: [v for v in held if v not in asked[f]] for f, held in holds.items()}
    lost = {f: values for f, values in lost.items() if values}
    if lost:
        show = lambda flags: " ".join(f"{f}={','.join(map(str, v))}" for f, v in flags.items())
        raise run_io.ConfigMismatchError(
            f"workdir {str(workdir)!r} holds the report of {show(holds)}; asked for "
            f"{show(asked)}, it would lose {show(lost)}: give another --workdir, or ask for "
            f"{show(holds)} to resume it (with more names to extend it)"
        )


# ---------------------------------------------------------------------------- figures


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
    """Line plots of the mean over seeds with the range over seeds, one panel per quantity.

    Args:
      path: the PNG to write.
      panels: panel title -> {line label: (xs [points], values [seeds, points])}, drawn by
        `_lines`.
      log_y: None puts the panels whose title says "loss" on a log y axis.
      marker: "o" for a metric against a hyperparameter (`sweep_figure`).
    """
    title += " (mean over seeds; band: range over seeds)"
    with figure(path, (5 * len(panels), 3.6), len(panels), title=title) as axes:
        for ax, (panel, lines) in zip(axes, panels.items(), strict=True):
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
        axes[0].legend(fontsize=7)
    return pathlib.Path(path)


def sweep_figure(
    rows: Sequence[Mapping[str, Any]],
    *,
    x: str,
    line: Callable[[Mapping[str, Any]], str],
    metrics: Mapping[str, str],
    xlabel: str,
    title: str,
    log_x: bool = True,
) -> Callable[[pathlib.Path], pathlib.Path]:
    """A `write_report` figure of final metrics against the setting `x` (`plot_panels`): a
    panel per metric of `metrics` (column -> title), a line per distinct `line(row)`, values
    [seeds, xs] (NaN where a seed lacks a run)."""
    panels: dict[str, dict] = {}
    for metric, panel in metrics.items():
        lines: dict[str, tuple] = {}
        for label in dict.fromkeys(map(line, rows)):
            members = [r for r in rows if line(r) == label]
            xs = sorted(dict.fromkeys(float(r[x]) for r in members))
            seeds = sorted(dict.fromkeys(r["seed"] for r in members))
            grid = np.full((len(seeds), len(xs)), math.nan)
            for r in members:
                grid[seeds.index(r["seed"]), xs.index(float(r[x]))] = r[metric]
            lines[label] = (np.asarray(xs), grid)
        panels[panel] = lines
    return functools.partial(
        plot_panels, panels=panels, xlabel=xlabel, title=title, log_x=log_x, marker="o"
    )
