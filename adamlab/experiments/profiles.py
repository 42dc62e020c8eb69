"""Time-to-target, AlgoPerf-style performance profiles, speedups and the benchmark's figures;
docs/internals.md defines the profiles (Dolan & More 2002) and AlgoPerf's area."""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from adamlab.experiments import report

TAUS = np.linspace(1.0, 4.0, 61)  # AlgoPerf plots tau from 1 to 4.
R_MAX = 4.0  # AlgoPerf: no credit beyond 4x the fastest time.
# The grid AlgoPerf's score_submissions.py integrates over: np.linspace(min_tau=1, max_tau=4,
# num=100). Its trapezoid on this grid is the published score (not the exact integral).
ALGOPERF_TAUS = np.linspace(1.0, R_MAX, 100)


def steps_to_target(
    steps: Sequence[int], values: np.ndarray, target: float, *, higher_is_better: bool = True
) -> np.ndarray:
    """First step at which `values` (shape [..., T], evaluated at `steps` [T]) reaches `target`;
    inf where it never does. NaN (a diverged run) never reaches it."""
    steps = np.asarray(steps, np.float64)
    values = np.asarray(values, np.float64)
    if values.shape[-1:] != steps.shape:
        raise ValueError(f"values {values.shape} do not end with the {steps.shape} steps")
    with np.errstate(invalid="ignore"):
        reached = values >= target if higher_is_better else values <= target
    first = np.argmax(reached, axis=-1)
    hit = reached.any(axis=-1)
    return np.where(hit, steps[first] if steps.size else np.inf, np.inf)


def performance_ratios(
    times: Mapping[str, Mapping[str, float]], workloads: Sequence[str] | None = None
) -> dict[str, dict[str, float]]:
    """optimizer -> workload -> r = t / min over optimizers of t (inf: not solved).

    `workloads` fixes the set (default: every workload in `times`); a workload an optimizer
    has no time for counts as not solved, and one that no optimizer solves has no best time:
    it counts as unsolved for everyone.
    """
    if workloads is None:
        workloads = sorted({w for per in times.values() for w in per})
    best = {w: min(time_of(per, w) for per in times.values()) for w in workloads}
    return {o: {w: _ratio(time_of(per, w), best[w]) for w in workloads} for o, per in times.items()}


def performance_profile(
    times: Mapping[str, Mapping[str, float]],
    taus: Sequence[float] = TAUS,
    *,
    workloads: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """optimizer -> rho(tau) for each tau; `times` is optimizer -> workload -> time-to-target.

    rho_o(tau) = |{w : r_{o,w} <= tau}| / n over the n `workloads` (default: every workload
    in `times`); the ratios are `performance_ratios`'.
    """
    ratios = performance_ratios(times, workloads)
    if not any(ratios.values()):
        raise ValueError("performance_profile needs at least one workload")
    taus = np.asarray(taus, np.float64)
    out = {}
    for optimizer, per in ratios.items():
        r = np.array(list(per.values()))
        out[optimizer] = (r[None, :] <= taus[:, None]).mean(axis=1)
    return out


def profile_area(rho: Sequence[float], taus: Sequence[float] = ALGOPERF_TAUS) -> float:
    """AlgoPerf's benchmark score: the normalised area under rho over the grid `taus`,

        B = 1 / (tau_max - tau_min) * trapezoid(rho, taus),

    in [0, 1] (1: the fastest on every workload). AlgoPerf's docs define the exact integral of
    the step function over [1, r_max]; its code, which produced the published scores, takes
    this trapezoid over `ALGOPERF_TAUS`, and so does this function.
    """
    taus = np.asarray(taus, np.float64)
    return float(np.trapezoid(np.asarray(rho, np.float64), taus) / (taus[-1] - taus[0]))


def time_of(per: Mapping[str, float], workload: str) -> float:
    """The time as a float; missing or NaN (a diverged run) never reached the target."""
    time = float(per.get(workload, math.inf))
    return math.inf if math.isnan(time) else time


def _ratio(time: float, best: float) -> float:
    if not math.isfinite(time) or not math.isfinite(best):
        return math.inf
    return time / best if best > 0 else (1.0 if time == 0 else math.inf)


def speedups(
    times: Mapping[str, Mapping[str, float]], baseline: str = "adam"
) -> dict[str, dict[str, float]]:
    """optimizer -> workload -> t_baseline / t_optimizer (> 1: faster than the baseline).

    inf when only the optimizer reaches the target, 0 when only the baseline does, NaN when
    neither does (or the baseline was not run).
    """
    base = times.get(baseline, {})
    return {
        o: {w: _speedup(float(base.get(w, math.nan)), float(t)) for w, t in per.items()}
        for o, per in times.items()
    }


def _speedup(base: float, time: float) -> float:
    if math.isnan(base) or (math.isinf(base) and math.isinf(time)):
        return math.nan
    if math.isinf(time):
        return 0.0
    return base / time if time > 0 else math.inf


def median_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(low, high, coverage): the distribution-free interval of the median of `values`, order
    statistics x_(k) and x_(n+1-k) with the largest k whose coverage, 1 - 2 P(Binomial(n, 1/2)
    < k), is at least `level`, or k = 1 (min and max) when none is (5 seeds: 93.75%). A value
    of inf (never reached) is an ordinary largest value."""
    from scipy import stats  # Here: only reports need it.

    ordered = np.sort(np.asarray(values, np.float64))
    n = len(ordered)
    if n == 0:
        return math.nan, math.nan, math.nan
    coverage = lambda k: 1.0 - 2.0 * float(stats.binom.cdf(k - 1, n, 0.5))
    k = max([k for k in range(1, (n + 1) // 2 + 1) if coverage(k) >= level], default=1)
    return float(ordered[k - 1]), float(ordered[n - k]), coverage(k)


# ---------------------------------------------------------------------------- figures


def plot_profiles(
    path: str | os.PathLike,
    panels: Mapping[str, Mapping[str, np.ndarray]],
    taus: Sequence[float] = TAUS,
    *,
    title: str = "",
) -> pathlib.Path:
    """profiles.png: one panel per measure (title -> optimizer -> rho over `taus`)."""
    with report.figure(path, (5 * len(panels), 3.6), len(panels), title=title) as axes:
        for ax, (panel, rhos) in zip(axes, panels.items(), strict=True):
            for i, (optimizer, rho) in enumerate(rhos.items()):
                offset = 0.004 * (i - len(rhos) / 2)  # Lines on top of each other stay visible.
                ax.step(taus, np.asarray(rho) + offset, where="post", label=optimizer, lw=1.3)
            ax.set_xlabel("tau (time-to-target / best optimizer's)")
            ax.set_ylabel("fraction of workloads")
            ax.set_ylim(-0.05, 1.05)
            ax.set_xlim(taus[0], taus[-1])
            ax.set_title(panel)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
    return pathlib.Path(path)


def plot_heatmaps(
    path: str | os.PathLike,
    grids: Mapping[str, np.ndarray],
    grid_axes: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    metric: str,
    title: str = "",
) -> pathlib.Path:
    """heatmap.png: per method a learning rate (rows) x decay strength (columns) grid of
    `metric` (lower is better) on its own `grid_axes` (method -> (rates, strengths)), the best
    strength of each learning rate boxed, as in Loshchilov & Hutter 2019, Fig. 2."""
    finite = np.concatenate([g[np.isfinite(g)].ravel() for g in grids.values()])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    size = (4.6 * len(grids) + 1, 4)
    title = f"{title}: {metric} (red box: best strength per learning rate)"
    with report.figure(path, size, len(grids), title=title, layout="constrained") as axes:
        for ax, (method, grid) in zip(axes, grids.items(), strict=True):
            image = _heatmap(ax, grid, vmin, vmax)
            learning_rates, strengths = grid_axes[method]
            ax.set_xticks(range(len(strengths)), [f"{s:.0e}" for s in strengths], fontsize=7)
            ax.set_yticks(range(len(learning_rates)), [f"{r:.0e}" for r in learning_rates])
            ax.set_xlabel("decay strength (l2 / weight_decay)")
            ax.set_ylabel("learning rate")
            ax.set_title(method)
        ax.figure.colorbar(image, ax=axes.tolist(), label="lower is better")
    return pathlib.Path(path)


def _heatmap(ax, grid: np.ndarray, vmin: float, vmax: float):
    """`grid` drawn with its values written in and each row's least value boxed."""
    from matplotlib.patches import Rectangle

    image = ax.imshow(grid, origin="lower", cmap="viridis_r", vmin=vmin, vmax=vmax)
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            dark = value > (vmin + vmax) / 2  # viridis_r: high values are dark.
            color = "w" if dark else "k"
            ax.text(j, i, f"{value:.3g}", ha="center", va="center", fontsize=6, color=color)
        if np.isfinite(row).any():
            j = int(np.nanargmin(row))
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=1.5))
    return image
