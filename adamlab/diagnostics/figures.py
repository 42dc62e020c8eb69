"""The figures of a run with diagnostics, drawn from its `metrics.jsonl` and `config.json`
(docs/internals.md lists them), and `figure`, which saves every PNG of adamlab: these and the
experiments' reports."""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
from collections.abc import Iterator
from typing import Any

import numpy as np

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
_DPI = 120  # The diagnostics figures' resolution.


def read_records(run_dir: pathlib.Path) -> list[dict[str, Any]]:
    """The records of `metrics.jsonl`; a torn last line (a crash mid-write) is skipped."""
    records = []
    for line in (run_dir / METRICS_FILE).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def threshold(optimizer: dict[str, Any], learning_rate: float) -> tuple[str, float] | None:
    """(quantity, value) of the optimizer's stability threshold at step size `learning_rate`.

    Gradient descent with heavy-ball momentum m on a quadratic is stable while the sharpness is
    below (2 + 2m) / eta (2 / eta without momentum; Cohen et al. 2021). Adam with b1 behaves as
    momentum m = b1 with the preconditioned step: the preconditioned sharpness's threshold is
    (2 + 2 b1) / ((1 - b1) eta), 38 / eta for b1 = 0.9 (Cohen et al. 2022, their EMA-style
    momentum carries the factor 1 / (1 - b1)). None for other optimizers.
    """
    name = optimizer.get("name")
    if name == "sgd":
        m = optimizer.get("momentum") or 0.0
        return "sharpness", (2 + 2 * m) / learning_rate
    if name in ("adam", "adamw"):
        b1 = optimizer.get("b1")
        b1 = 0.9 if b1 is None else b1
        return "preconditioned_sharpness", (2 + 2 * b1) / ((1 - b1) * learning_rate)
    return None


def stability_summary(run_dir: str | pathlib.Path) -> dict[str, Any] | None:
    """{"quantity", "threshold", "plateau" (median over the second half of the curvature
    evaluations), "ratio", "steps"}, or None without curvature or a known threshold."""
    run_dir = pathlib.Path(run_dir)
    _, found = _optimizer(run_dir)
    curvature = [r for r in read_records(run_dir) if r["split"] == "curvature"]
    if not curvature or found is None:
        return None
    quantity, value = found
    series = [r[quantity] for r in curvature if quantity in r]
    if not series:
        return None
    plateau = float(np.median(series[len(series) // 2 :]))
    return {
        "quantity": quantity,
        "threshold": value,
        "plateau": plateau,
        "ratio": plateau / value,
        "steps": (curvature[len(series) // 2]["step"], curvature[-1]["step"]),
    }


def _optimizer(run_dir: pathlib.Path) -> tuple[dict[str, Any], tuple[str, float] | None]:
    """The optimizer config of the run in `run_dir` (a member's directory, members/<name>, has
    its run's config.json two levels up) and its `threshold`."""
    config_dir = run_dir if (run_dir / CONFIG_FILE).is_file() else run_dir.parents[1]
    optimizer = json.loads((config_dir / CONFIG_FILE).read_text())["optimizer"]
    return optimizer, threshold(optimizer, float(optimizer["learning_rate"]))


@contextlib.contextmanager
def figure(
    path: str | os.PathLike,
    figsize: tuple[float, float],
    panels: int = 1,
    *,
    rows: int = 1,
    sharex: bool = False,
    title: str | None = None,
    dpi: int = 90,
    layout: str | None = None,
) -> Iterator[np.ndarray]:
    """A grid of `rows` x `panels` axes to draw on (in reading order), saved as the PNG `path`
    when the block ends: with the suptitle `title`, laid out tight unless another `layout` is
    given."""
    import matplotlib

    matplotlib.use("Agg")  # Files only: works without a display, in tests and on servers.
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        rows, panels, figsize=figsize, squeeze=False, sharex=sharex, layout=layout
    )
    try:
        yield axes.ravel()
        if title is not None:
            fig.suptitle(title, fontsize=9)
        if layout is None:
            fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:  # Also when drawing failed: pyplot keeps every open figure otherwise.
        plt.close(fig)


def _leaves(layer_records: list[dict], statistic: str) -> list[str]:
    return sorted({k.rpartition("/")[0] for r in layer_records for k in r if k.endswith(statistic)})


def _heatmap(layers: list[dict], path: pathlib.Path) -> None:
    leaves = _leaves(layers, "/update_param_ratio")
    steps = [r["step"] for r in layers]
    values = np.array(
        [[r.get(f"{leaf}/update_param_ratio", np.nan) for r in layers] for leaf in leaves]
    )
    half = (steps[-1] - steps[0]) / max(len(steps) - 1, 1) / 2  # Columns centred on their step.
    size = (max(6, len(steps) * 0.08 + 3), 0.4 * len(leaves) + 2)
    with figure(path, size, dpi=_DPI) as (ax,):
        image = ax.imshow(
            np.log10(np.maximum(values, 1e-30)),
            aspect="auto",
            interpolation="nearest",
            extent=(steps[0] - half, steps[-1] + half, len(leaves) - 0.5, -0.5),
        )
        ax.set_yticks(range(len(leaves)), leaves)
        ax.set_xlabel("step")
        ax.set_title("log10 update / parameter norm, per leaf")
        ax.figure.colorbar(image, ax=ax)


def _effective_step(layers: list[dict], path: pathlib.Path) -> bool:
    leaves = _leaves(layers, "/step_q50")
    if not leaves:
        return False
    steps = [r["step"] for r in layers]
    with figure(path, (8, 7), rows=2, sharex=True, dpi=_DPI) as (top, bottom):
        for i, leaf in enumerate(leaves):
            color = f"C{i % 10}"
            get = lambda key, leaf=leaf: [r.get(f"{leaf}/{key}", np.nan) for r in layers]
            top.plot(steps, get("step_q50"), color=color, label=leaf)
            top.fill_between(steps, get("step_q05"), get("step_q95"), color=color, alpha=0.15)
            bottom.plot(steps, get("eps_fraction"), color=color)
        top.set_yscale("log")
        top.set_ylabel("lr / (sqrt(v_hat) + eps)\nmedian, 5-95% band")
        top.legend(fontsize=7)
        bottom.set_ylabel("fraction eps > sqrt(v_hat)")
        bottom.set_xlabel("step")
    return True


def _sharpness(run_dir: pathlib.Path, curvature: list[dict], path: pathlib.Path) -> None:
    optimizer, found = _optimizer(run_dir)
    steps = [r["step"] for r in curvature]
    with figure(path, (8, 4.5), dpi=_DPI) as (ax,):
        for key, label in (("sharpness", "sharpness"), ("preconditioned_sharpness", "P^-1 H")):
            if any(key in r for r in curvature):
                values = [r.get(key, np.nan) for r in curvature]
                ax.plot(steps, values, label=f"top eigenvalue of {label}")
        if found is not None:
            quantity, value = found
            label = f"threshold of {quantity}: {value:.4g}"
            ax.axhline(value, color="k", linestyle="--", label=label)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(f"{optimizer['name']}, lr={optimizer['learning_rate']:g}")
        ax.legend(fontsize=8)


def write_figures(run_dir: str | pathlib.Path) -> list[pathlib.Path]:
    """Writes the figures of `run_dir` (each member's, for a run of several) and returns them."""
    run_dir = pathlib.Path(run_dir)
    members = sorted(p.parent for p in run_dir.glob("members/**/" + METRICS_FILE))
    written = []
    for member in members or [run_dir]:
        records = read_records(member)
        layers = [r for r in records if r["split"] == "layers"]
        curvature = [r for r in records if r["split"] == "curvature"]
        if layers:
            _heatmap(layers, member / "layer_ratio_heatmap.png")
            written.append(member / "layer_ratio_heatmap.png")
            if _effective_step(layers, member / "effective_step.png"):
                written.append(member / "effective_step.png")
        if curvature:
            _sharpness(member, curvature, member / "sharpness.png")
            written.append(member / "sharpness.png")
    return written


def write_overlay(run_dirs: list[str | pathlib.Path], path: str | pathlib.Path) -> pathlib.Path:
    """One figure of several runs' tracked sharpness (solid) and thresholds (dashed), e.g. the
    step sizes of an edge-of-stability reproduction."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with figure(path, (8, 4.5), dpi=_DPI) as (ax,):
        for i, run_dir in enumerate(run_dirs):
            run_dir = pathlib.Path(run_dir)
            optimizer, found = _optimizer(run_dir)
            curvature = [r for r in read_records(run_dir) if r["split"] == "curvature"]
            if found is None or not curvature:
                continue
            quantity, value = found
            steps = [r["step"] for r in curvature if quantity in r]
            series = [r[quantity] for r in curvature if quantity in r]
            label = f"lr={float(optimizer['learning_rate']):g}"
            ax.plot(steps, series, color=f"C{i}", label=label)
            ax.axhline(value, color=f"C{i}", linestyle="--", linewidth=1)
            ax.set_ylabel(quantity.replace("_", " ") + " (dashed: threshold)")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    return path


def format_summary(summary: dict[str, Any]) -> str:
    low, high = summary["steps"]
    ratio = summary["ratio"]
    off = "n/a" if not math.isfinite(ratio) else f"{100 * (ratio - 1):+.1f}%"
    return (
        f"{summary['quantity']}: plateau {summary['plateau']:.4g} (median, steps {low}-{high}) "
        f"vs threshold {summary['threshold']:.4g} ({off})"
    )
