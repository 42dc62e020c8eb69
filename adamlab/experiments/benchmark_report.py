"""The benchmark's report: its tables, summary.md and figures, written by `report.write_report`;
docs/internals.md and docs/benchmark.md describe them."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from adamlab.experiments import algoperf, profiles, report, tuning
from adamlab.training import train

# The AlgoPerf score's measures: name -> the column of studies.csv.
MEASURES = {"steps": "steps_to_target", "seconds": "seconds_to_target"}
SCORE_TAUS = (1.0, 2.0, 3.0, 4.0)  # rho shown in summary.md: points of AlgoPerf's grid.


def medians(final_rows: Sequence[Mapping[str, Any]], column: str) -> dict[str, dict[str, float]]:
    """optimizer -> workload -> median over seeds of `column` (inf stays inf)."""
    out: dict[str, dict[str, list]] = {}
    for row in final_rows:
        out.setdefault(row["optimizer"], {}).setdefault(row["workload"], []).append(row[column])
    return {o: {w: float(np.median(v)) for w, v in per.items()} for o, per in out.items()}


def algoperf_scores(plan, study_rows: Sequence[Mapping[str, Any]]) -> dict[str, algoperf.Scores]:
    """The AlgoPerf score of every optimizer from its per-study times, in steps and seconds:
    `algoperf.score` over the plan's workloads (the profile's fixed n), no held-out variants."""
    out = {}
    for measure, column in MEASURES.items():
        times = {o: {w: [] for w in plan.workloads} for o in plan.optimizers}
        for row in study_rows:
            times[row["optimizer"]][row["workload"]].append(float(row[column]))
        out[measure] = algoperf.score(times, tuple(plan.workloads))
    return out


def scores_json(scores: Mapping[str, algoperf.Scores]) -> dict[str, Any]:
    """benchmark.json's "score": per measure the scores, the medians over studies, the ratios
    to the fastest (null: inf, no credit), the grid and rho on it."""
    finite = lambda x: float(x) if math.isfinite(x) else None  # JSON has no infinity.
    table = lambda t: {o: {w: finite(x) for w, x in per.items()} for o, per in t.items()}
    return {
        measure: {
            "scores": dict(board.scores),
            "medians": table(board.medians),
            "ratios": table(board.ratios),
            "taus": board.taus.tolist(),
            "rho": {o: r.tolist() for o, r in board.rho.items()},
        }
        for measure, board in scores.items()
    }


def write_report(plan, workdir, final_rows, tables, scores, finals, heatmap, wall) -> str:
    """trials.csv, studies.csv, results.csv, stages.csv, summary.md, score.png, profiles.png,
    curves.png, heatmap.png; `tables`: file name -> rows (trials.csv, studies.csv,
    stages.csv); `scores`: `algoperf_scores`; `finals`: (workload, optimizer) -> the final
    stage's `train.RunsResult`."""
    seconds = medians(final_rows, "seconds_to_target")
    steps = medians(final_rows, "steps_to_target")
    rho = {
        "seconds to target": profiles.performance_profile(seconds),
        "steps to target": profiles.performance_profile(steps),
    }
    title = f"performance profiles over {len(plan.workloads)} workload(s), final seeds' medians"
    figures = {
        "score.png": functools.partial(_plot_score, plan, scores),
        "profiles.png": functools.partial(profiles.plot_profiles, panels=rho, title=title),
        "curves.png": functools.partial(_plot_training_curves, plan, finals),
    }
    trial_rows, stages = tables["trials.csv"], tables["stages.csv"]
    sections = [_summary(plan, trial_rows, final_rows, stages, scores, rho, seconds, steps, wall)]
    if heatmap:
        section, figures["heatmap.png"] = _heatmap(plan, heatmap)
        sections.append(section)
    return report.write_report(
        workdir,
        final_rows,
        title="Optimizer benchmark",
        sections=sections,
        tables=tables,
        figures=figures,
    )


def _plot_score(plan, scores: Mapping[str, algoperf.Scores], path) -> None:
    """score.png: rho(tau) of the AlgoPerf score on its grid, a panel per measure (the
    optimizers in the plan's order, so that each keeps its colour; the scores: summary.md)."""
    panels = {
        f"{measure} to target (score: summary.md)": {o: b.rho[o] for o in plan.optimizers}
        for measure, b in scores.items()
    }
    title = (
        f"AlgoPerf score ({plan.ruleset}, {plan.studies} studies): profiles of the medians "
        f"over studies, {len(plan.workloads)} workload(s)"
    )
    taus = next(iter(scores.values())).taus
    profiles.plot_profiles(path, panels, taus, title=title)


def _plot_training_curves(plan, finals: Mapping[tuple[str, str], train.RunsResult], path) -> None:
    """curves.png: the final runs' train loss per epoch (seeds' mean and range), a panel per
    workload: Kingma & Ba 2015's "training cost" figures."""
    panels = {}
    for name, workload in plan.workloads.items():
        lines = {}
        for optimizer in plan.optimizers:
            (per_split,) = finals[name, optimizer].curves.values()
            steps, values = per_split["train"]
            loss = np.asarray(values["loss"], np.float64)[0]  # [S, T]
            lines[optimizer] = (np.asarray(steps) / workload.steps_per_epoch, loss)
        panels[f"{name}: training loss"] = lines
    report.plot_panels(path, panels, xlabel="epoch", title="final runs", log_y=True)


def _heatmap(plan, results: Mapping[str, train.RunsResult]) -> tuple[str, Callable]:
    """The heatmap's section of summary.md and heatmap.png's drawing."""
    workload = next(iter(plan.workloads.values()))
    metric = workload.config.benchmark.heatmap.metric
    grids, axes, cells = {}, {}, []
    for method, result in results.items():
        rates, strengths = axes[method] = workload.heatmap_axes(method)
        values = np.array([row[metric] for row in result.rows], np.float64)
        seeds = len(result.rows) // (len(rates) * len(strengths))
        grids[method] = grid = values.reshape(len(rates), len(strengths), seeds).mean(axis=-1)
        cells += [
            [method, f"{r:.0e}", _best_strength(row, strengths)]
            for r, row in zip(rates, grid, strict=True)
        ]
    figure = functools.partial(
        profiles.plot_heatmaps,
        grids=grids,
        grid_axes=axes,
        metric=f"final {metric}, mean of {seeds} seed(s)",
        title=f"{workload.name}: {' vs '.join(grids)}",
    )
    best = [
        f"{m} lr {axes[m][0][i]:.0e}, strength {axes[m][1][j]:.0e} ({g[i, j]:.4f})"
        for m, g in grids.items()
        if np.isfinite(g).any()
        for i, j in [np.unravel_index(np.nanargmin(g), g.shape)]
    ]
    section = (
        f"## Learning rate x decay strength on {workload.name}: {' vs '.join(grids)}\n\n"
        f"Final {metric} (mean of {seeds} seed(s)) over learning rate x strength, one program "
        "per method; heatmap.png. If the best strength moves with the learning rate, the two "
        "are coupled (Loshchilov & Hutter 2019, Fig. 2: Adam + L2 against AdamW). Best cell: "
        + "; ".join(best)
        + ".\n\n"
        + report.table(["method", "learning rate", f"best strength ({metric})"], cells)
    )
    return section, figure


def _best_strength(row: np.ndarray, strengths: Sequence[float]) -> str:
    """`1e-03 (0.0371)`: the row's best strength and its value, or `diverged`."""
    if not np.isfinite(row).any():
        return "diverged"
    j = int(np.nanargmin(row))
    return f"{strengths[j]:.0e} ({row[j]:.4f})"


def _summary(plan, trial_rows, final_rows, stages, scores, rho, seconds, steps, wall) -> str:
    lines = [
        f"Workloads: {', '.join(plan.workloads)}. Optimizers: {', '.join(plan.optimizers)}.",
        f"Wall time {wall:.1f} s for this invocation; stages (their own wall times, compile "
        f"included) {sum(s['wall_time_s'] for s in stages):.1f} s "
        f"({report.machine()}, load average {_load()}).",
        "",
        "## Protocol",
        "",
        *_ruleset_protocol(plan),
        "* Selection for the final runs on the validation split only, over the trials of "
        "every study: the trial that reaches the target in the fewest steps; if none does, "
        "the best final validation accuracy (then loss).",
        f"* The selected setting is rerun with {plan.seeds} new seeds in one program; test "
        "metrics are those runs', reported once: mean ± 95% t-interval over the seeds.",
        "* Time-to-target: the first validation evaluation at or past the target (never: "
        "inf). Seconds = steps x the run's share of its program's time per step (1 / (steps/s "
        "x runs in the program); compile and evaluation excluded): see benchmark.py.",
        "* AlgoPerf score: from the studies, by AlgoPerf's rules (below).",
        "* Per workload and optimizer: medians over the final seeds. Performance profiles of "
        "the final runs: fraction of workloads on which an optimizer's median time-to-target "
        "is within tau of the best optimizer's (tau 1..4). Steps to target: the median and a "
        "distribution-free interval of it (order statistics of the seeds, its coverage shown). "
        f"Speedup: {plan.optimizers[0]}'s (the first optimizer named) median time / the "
        "optimizer's, in steps and in seconds.",
        "",
    ]
    for name, workload in plan.workloads.items():
        relation = ">=" if workload.higher_is_better else "<="
        config = workload.config
        lines += [
            f"## {name}",
            "",
            f"{config.data.name}, model {config.model.name}, {workload.budget} steps of "
            f"batch {config.train.batch_size} ({workload.budget / workload.steps_per_epoch:.1f}"
            f" epochs), schedule {config.optimizer.schedule}; target {workload.metric} "
            f"{relation} {workload.target}, evaluated every {config.train.eval_every_steps} "
            f"steps. {_seeds(plan, workload)}",
            "",
            *_settings(plan, workload),
            "",
            _workload_table(plan, name, trial_rows, final_rows, seconds, steps),
        ]
    lines += [_score_section(plan, scores), ""]
    lines += ["## Performance profiles of the final runs (profiles.png)", ""]
    lines += [_profile_table(rho), ""]
    lines += ["## Stages", "", _stage_table(stages)]
    return "\n".join(lines) + "\n"


def _ruleset_protocol(plan) -> list[str]:
    """The protocol's lines on the ruleset, the studies and their trials."""
    studies = (
        f"{plan.studies} independent studies per optimizer and workload, study k with the "
        "workload's tuning seed + k"
        if plan.studies > 1
        else "1 study per optimizer and workload, with the workload's tuning seed"
    )
    if plan.ruleset == "self_tuning":
        return [
            "* Ruleset: self_tuning (AlgoPerf's self-tuning track): no search; each optimizer "
            "runs its declared default setting (its constructor's defaults and its paper's "
            "learning rate, below) with the workload's schedule, on a step budget 3x the "
            "workload's.",
            f"* Budget: {studies}, one trial each.",
        ]
    return [
        "* Ruleset: external_tuning (AlgoPerf's external-tuning track): a search over each "
        "optimizer's space within the workload's step budget.",
        f"* Budget: {studies}; per study {plan.trials} trials, points of a scrambled Halton "
        "sequence (scipy.stats.qmc.Halton, seeded per workload and study: Halton seed + k) "
        "over the search spaces below, all trials of one study trained in one compiled "
        "program (one runs.sweep).",
    ]


def _seeds(plan, workload) -> str:
    bench = workload.config.benchmark
    last = plan.studies - 1
    seeds = ", ".join(map(str, (workload.tuning_seed(k) for k in range(plan.studies))))
    halton = (
        f", Halton seed{'s' if last else ''} {bench.halton_seed}"
        + (f"..{workload.halton_seed(last)}" if last else "")
        if plan.ruleset == "external_tuning"
        else ""
    )
    final = ", ".join(map(str, workload.final_seeds(plan.seeds)))
    return f"Tuning seed{'s' if last else ''} {seeds}{halton}, final seeds {final}."


def _settings(plan, workload) -> list[str]:
    """The search spaces (external tuning) or the default settings (self-tuning)."""
    if plan.ruleset == "self_tuning":  # The one trial of each study: the default setting.
        return [
            "Default settings:",
            "",
            *[
                f"* {o}: {', '.join(f'{k}={v}' for k, v in workload.spaces[o].fixed.items())}; "
                + " ".join(f"{k}={v:g}" for k, v in tuning.trial_values(trials[0], 0).items())
                for o, trials in workload.trials.items()
            ],
        ]
    return [
        "Search spaces:",
        "",
        *[f"* {o}: {s.describe()}" for o, s in workload.spaces.items()],
    ]


def _score_section(plan, scores: Mapping[str, algoperf.Scores]) -> str:
    """The AlgoPerf score of the studies, a table per measure; score.png."""
    board = next(iter(scores.values()))
    shown = [int(np.argmin(np.abs(board.taus - t))) for t in SCORE_TAUS]
    workloads = list(board.workloads)
    lines = [
        "## AlgoPerf score (score.png)",
        "",
        f"Ruleset {plan.ruleset}, {plan.studies} stud{'ies' if plan.studies > 1 else 'y'} per "
        "optimizer and workload (studies.csv). Per study the time of the trial that reaches "
        "the target at the earliest evaluation (AlgoPerf's rule; none: inf); per workload the "
        "median over the studies (a miss is inf), no credit beyond "
        f"{board.taus[-1]:g}x the fastest optimizer's; rho(tau) is the fraction of the "
        f"{len(workloads)} workload(s) within tau of the fastest, on AlgoPerf's grid of "
        f"{board.taus.size} taus from {board.taus[0]:g} to {board.taus[-1]:g}, and the score "
        "its normalised area (a trapezoid on that grid; 1: the fastest on every workload), as "
        "`adamlab algoperf-score` scores AlgoPerf's logs (docs/algoperf.md). Cells: the "
        "median over studies (its ratio to the fastest; -: no credit).",
    ]
    for measure, board in scores.items():
        taus = [f"rho({board.taus[i]:g})" for i in shown]
        fmt = "{:g}" if measure == "steps" else "{:.3g}"
        rows = [
            [o, f"{board.scores[o]:.4f}"]
            + [f"{board.rho[o][i]:.2f}" for i in shown]
            + [_score_cell(board, o, w, fmt) for w in workloads]
            for o in board.ranked()
        ]
        table = report.table(["optimizer", "score", *taus, *workloads], rows)
        lines += ["", f"{measure} to target:", "", table]
    return "\n".join(lines)


def _score_cell(board: algoperf.Scores, optimizer: str, workload: str, fmt: str) -> str:
    median, ratio = board.medians[optimizer][workload], board.ratios[optimizer][workload]
    shown = "inf" if math.isinf(median) else fmt.format(median)
    return f"{shown} ({ratio:.2f})" if math.isfinite(ratio) else f"{shown} (-)"


def _load() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _workload_table(plan, name, trial_rows, final_rows, seconds, steps) -> str:
    baseline = plan.optimizers[0]
    speed = {m: profiles.speedups(t, baseline) for m, t in (("steps", steps), ("s", seconds))}
    rows = [r for r in final_rows if r["workload"] == name]
    summary = report.summarize(
        rows,
        by=("optimizer",),
        metrics=("validation_accuracy", "test_accuracy", "test_loss"),
    )
    header = (
        "optimizer|selected setting|trials reaching target|seeds reaching target|"
        "median steps to target [interval, coverage]|median seconds to target|"
        f"speedup vs {baseline} (steps / seconds)|validation accuracy|test accuracy|test loss"
    ).split("|")
    body = []
    for s in summary:
        o = s["optimizer"]
        mine = [r for r in rows if r["optimizer"] == o]
        tried = [r for r in trial_rows if r["workload"] == name and r["optimizer"] == o]
        low, high, coverage = profiles.median_interval([r["steps_to_target"] for r in mine])
        body.append(
            [
                o,
                mine[0]["setting"],
                f"{sum(math.isfinite(r['steps_to_target']) for r in tried)}/{len(tried)}",
                f"{sum(math.isfinite(r['steps_to_target']) for r in mine)}/{len(mine)}",
                f"{_number(steps[o][name], '{:.0f}')} [{low:g}, {high:g}, {coverage:.0%}]",
                _number(seconds[o][name], "{:.3g}"),
                " / ".join(_speedup_cell(speed[m][o][name], baseline) for m in speed),
                *[
                    report.format_interval(s[f"{m}_mean"], s[f"{m}_half"])
                    for m in ("validation_accuracy", "test_accuracy", "test_loss")
                ],
            ]
        )
    return report.table(header, body) + "\n"


def _speedup_cell(value: float, baseline: str) -> str:
    """The baseline's time to target over the optimizer's (`profiles.speedups`): 0 and inf
    only when one of the two never reached the target, which the cell says."""
    if value == 0:
        return "0 (not reached)"
    return f"inf ({baseline} did not reach it)" if math.isinf(value) else _number(value, "{:.2f}x")


def _number(value: float, fmt: str) -> str:
    if math.isnan(value):
        return "-"
    return "inf (not reached)" if math.isinf(value) else fmt.format(value)


def _profile_table(rho: Mapping[str, Mapping[str, np.ndarray]]) -> str:
    shown = (1.0, 1.5, 2.0, 3.0, 4.0)
    index = [int(np.argmin(np.abs(profiles.TAUS - t))) for t in shown]
    header = ["measure", "optimizer", *(f"tau={t:g}" for t in shown)]
    rows = [
        [measure, optimizer, *(f"{values[i]:.2f}" for i in index)]
        for measure, per in rho.items()
        for optimizer, values in per.items()
    ]
    return report.table(header, rows)


def _stage_table(stages: Sequence[Mapping[str, Any]]) -> str:
    header = "workload optimizer stage runs steps".split()
    rows = [
        [str(s[k]) for k in header]
        + [f"{s[k]:.1f}" for k in ("wall_time_s", "compile_s", "steps_per_sec")]
        for s in stages
    ]
    return report.table([*header, "wall s", "compile s", "program steps/s"], rows) + "\n"
