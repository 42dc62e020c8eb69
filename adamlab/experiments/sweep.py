"""`adamlab sweep`: a hyperparameter grid x seeds trained in one compiled program per optimizer.

    adamlab sweep --sweep optimizer.learning_rate=1e-4:1e-1:8 --seeds 2
    adamlab sweep --sweep optimizer.b2=0.9,0.99,0.999 --optimizers adam,nadam \
        --implementations ours,optax

A sweep spec is `path=start:stop:num` (num values log-spaced from start to stop, both > 0) or
`path=v1,v2,...` (the values as given). `path` is a field of the config; only numeric optimizer
hyperparameters (`adamlab.training.optimizers.SWEEPABLE`) can vary inside one program, because
they are state leaves under `optax.inject_hyperparams`; other fields change the program.

For each optimizer, the one loop (`adamlab.training.train.run`) trains every (value, seed) at
once, and with `--implementations ours,optax` ours and the twin in lockstep. The report
directory holds `config.json`, `results.csv` (a row per run), `summary.md` (mean ± 95%
t-interval over seeds per value), `sweep.png` (final train loss and validation accuracy against
the value, mean and range over seeds) and a run directory per optimizer (`<optimizer>/`, with
each member's metrics and TensorBoard events under `members/`).
"""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from adamlab.experiments import compare

DEFAULT_SEEDS = 2
GRAMMAR = (
    "path=start:stop:num (num log-spaced values, start and stop > 0, num an int >= 1) or "
    "path=v1,v2,... (explicit values), e.g. optimizer.learning_rate=1e-4:1e-1:8"
)
SUMMARY_METRICS = {
    "final_train_loss": "final train loss",
    "validation_accuracy": "validation accuracy",
    "test_accuracy": "test accuracy",
}


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
    """Sweeps one hyperparameter for each optimizer (default: `config.optimizer.name`).

    Each optimizer is one group (`groups.run_groups`, in `workdir/<optimizer>/`): every value
    x seed (x implementation) in one compiled program; resumable like every run.

    Returns:
      {"workdir", "name" (the hyperparameter), "values", "rows", "summary", "wall_time_s",
       "interrupted", "results" (optimizer -> train.RunsResult)}.
    """
    from adamlab.experiments import groups, report

    name, values = parse_sweep(sweep, config)
    optimizers = compare.parse_names(optimizers or config.optimizer.name)
    seeds = groups.seeds_from(config, num_seeds)
    results, wall, interrupted = groups.run_per_optimizer(
        config,
        workdir,
        optimizers,
        seeds=seeds,
        implementations=tuple(implementations),
        sweep={name: values},
    )
    workdir = pathlib.Path(workdir)
    rows = [row for result in results.values() for row in result.rows]
    summary = ""
    if not interrupted:
        report.write_csv(workdir / "results.csv", rows)
        plot_sweep(rows, name, values, workdir / "sweep.png", title=config.data.name)
        rates = {  # Where this process timed no step (resumed at the end): the records'.
            k: r.steps_per_sec
            if math.isfinite(r.steps_per_sec)
            else report.persisted_rate(workdir / k)
            for k, r in results.items()
        }
        summary = _summary_markdown(config, name, rows, seeds, wall, rates)
        (workdir / "summary.md").write_text(summary)
    return {
        "workdir": workdir,
        "name": name,
        "values": values,
        "rows": rows,
        "summary": summary,
        "wall_time_s": wall,
        "interrupted": interrupted,
        "results": results,
    }


def plot_sweep(
    rows: Sequence[dict], name: str, values: Sequence[float], path: os.PathLike, *, title: str
) -> pathlib.Path:
    """sweep.png: final train loss and validation accuracy against `name`, a line per
    (optimizer, implementation), from the rows of results.csv."""
    from adamlab.experiments import report

    panels: dict[str, dict] = {"final train loss": {}, "validation accuracy": {}}
    groups = dict.fromkeys((r["optimizer"], r["implementation"]) for r in rows)
    for optimizer, impl in groups:
        group = [r for r in rows if (r["optimizer"], r["implementation"]) == (optimizer, impl)]
        for panel, metric in (
            ("final train loss", "final_train_loss"),
            ("validation accuracy", "validation_accuracy"),
        ):
            by_value = [[float(r[metric]) for r in group if float(r[name]) == v] for v in values]
            panels[panel][f"{optimizer} ({impl})"] = (np.array(values), np.array(by_value).T)
    return report.plot_sweep(
        path, panels, xlabel=f"optimizer.{name}", log_x=min(values) > 0, title=title
    )


def _summary_markdown(config, name, rows, seeds, wall, rates) -> str:
    from adamlab.experiments import report

    # Both implementations ran in lockstep, so rows have a parity (NaN where a run diverged).
    lockstep = {r["implementation"] for r in rows} == {"ours", "optax"}
    keys = ("optimizer", "implementation", name)
    parity = ("parity",) if lockstep else ()
    summary = report.summarize(rows, by=keys, metrics=tuple(SUMMARY_METRICS), maxima=parity)
    table = report.markdown_table(
        summary,
        keys=keys,
        metrics=SUMMARY_METRICS,
        maxima={"parity": "parity (max rel. param diff)"} if lockstep else None,
    )
    diverged = sum(not r["finite"] for r in rows)
    speed = ", ".join(f"{k}: {rate:.1f} steps/s" for k, rate in rates.items())
    return (
        f"# Sweep of optimizer.{name} on {config.data.name}\n\n"
        f"Seeds {', '.join(map(str, seeds))}; {rows[0]['steps']} steps each; one compiled "
        f"program per optimizer trains all {len(rows) // len(rates)} of its runs "
        f"({speed}). Mean ± 95% t-interval over seeds.\n\n{table}\n"
        f"Wall time {wall:.1f} s. Diverged (non-finite) runs: {diverged} of {len(rows)}.\n"
    )
