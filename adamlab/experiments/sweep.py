"""`adamlab sweep`: a hyperparameter grid x seeds trained in one compiled program per optimizer;
docs/internals.md describes the spec, the groups and the report."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from adamlab.experiments import compare

DEFAULT_SEEDS = 2
GRAMMAR = (
    "path=start:stop:num (num log-spaced values, start and stop > 0, num an int >= 1) or "
    "path=v1,v2,... (explicit values), e.g. optimizer.learning_rate=1e-4:1e-1:8"
)
SUMMARY_METRICS = {k: v for k, v in compare.SUMMARY_METRICS.items() if k != "test_f1"}


class SweepSpecError(ValueError):
    """A --sweep spec does not parse or names a field that cannot be swept."""


def parse_sweep(spec: str, config: Any) -> tuple[str, tuple[float, ...]]:
    """`"optimizer.learning_rate=1e-4:1e-1:4"` -> ("learning_rate", (1e-4, 1e-3, 1e-2, 1e-1)).

    Returns the optimizer hyperparameter's name and the values.

    Raises:
      SweepSpecError: the spec does not follow `GRAMMAR`, the field is not in the config, or it
        is not a sweepable optimizer hyperparameter.
    """
    from adamlab.training import optimizers

    path, sep, values_text = spec.partition("=")
    path = path.strip()
    if not sep or not path or not values_text.strip():
        raise SweepSpecError(f"--sweep={spec!r} does not parse; expected {GRAMMAR}")
    section, _, field = path.partition(".")
    has_fields = section in config and hasattr(config[section], "keys")  # "seed" has none.
    if not has_fields or not field or field not in config[section]:
        raise SweepSpecError(f"--sweep={spec!r}: the config has no field {path!r}")
    if section != "optimizer" or field not in optimizers.SWEEPABLE:
        raise SweepSpecError(
            f"--sweep={spec!r}: {path} cannot vary inside one compiled program; sweepable: "
            f"{', '.join('optimizer.' + f for f in optimizers.SWEEPABLE)}"
        )
    try:
        if ":" in values_text:
            start, stop, num = values_text.split(":")
            start, stop, num = float(start), float(stop), int(num)
            if not (start > 0 and stop > 0 and num >= 1):
                raise ValueError
            values = tuple(float(v) for v in np.geomspace(start, stop, num))
        else:
            values = tuple(float(v) for v in values_text.split(","))
    except ValueError:
        raise SweepSpecError(f"--sweep={spec!r} does not parse; expected {GRAMMAR}") from None
    if not all(math.isfinite(v) for v in values) or len(set(values)) != len(values):
        raise SweepSpecError(f"--sweep={spec!r}: values must be finite and distinct")
    return field, values


def run_sweep(
    config: Any,
    workdir: str | os.PathLike,
    *,
    sweep: str,
    optimizers: Sequence[str] | str | None = None,
    implementations: Sequence[str] = ("ours",),
    num_seeds: int = DEFAULT_SEEDS,
) -> dict[str, Any]:
    """Sweeps one hyperparameter for each optimizer (default: `config.optimizer.name`);
    resumable like every run.

    Returns:
      {"workdir", "name" (the hyperparameter), "values", "rows", "summary", "wall_time_s",
       "interrupted", "results" (optimizer -> train.RunsResult)}.
    """
    from adamlab.experiments import groups, report

    name, values = parse_sweep(sweep, config)
    optimizers = compare.parse_names(optimizers or config.optimizer.name)
    seeds = groups.seeds_from(config, num_seeds)
    out = groups.run_per_optimizer(
        config,
        workdir,
        optimizers,
        seeds=seeds,
        implementations=tuple(implementations),
        sweep={name: values},
    )
    out |= {"name": name, "values": values}
    if not out["interrupted"]:
        rows, results = out["rows"], out["results"]
        plot = report.sweep_figure(
            rows,
            x=name,
            line=lambda r: f"{r['optimizer']} ({r['implementation']})",
            metrics={k: SUMMARY_METRICS[k] for k in ("final_train_loss", "validation_accuracy")},
            xlabel=f"optimizer.{name}",
            title=config.data.name,
            log_x=min(values) > 0,
        )
        out["summary"] = report.write_report(
            workdir,
            rows,
            title=f"Sweep of optimizer.{name} on {config.data.name}",
            sections=_sections(name, rows, seeds, out["wall_time_s"], results),
            figures={"sweep.png": plot},
        )
    return out


def _sections(name, rows, seeds, wall, results) -> list[str]:
    from adamlab.experiments import report

    # Both implementations ran in lockstep, so rows have a parity (NaN where a run diverged).
    lockstep = {r["implementation"] for r in rows} == {"ours", "optax"}
    _, table = report.summary_table(
        rows,
        by=("optimizer", "implementation", name),
        metrics=SUMMARY_METRICS,
        maxima=compare.PARITY if lockstep else None,
    )
    speed = ", ".join(f"{k}: {r.steps_per_sec:.1f} steps/s" for k, r in results.items())
    return [
        f"Seeds {', '.join(map(str, seeds))}; {rows[0]['steps']} steps each; one compiled "
        f"program per optimizer trains all {len(rows) // len(results)} of its runs ({speed}). "
        "Mean ± 95% t-interval over seeds.",
        table,
        f"Wall time {wall:.1f} s. Diverged (non-finite) runs: "
        f"{sum(not r['finite'] for r in rows)} of {len(rows)}.",
    ]
