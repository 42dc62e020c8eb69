"""`adamlab compare`: each optimizer, ours against its optax twin (in lockstep, one program per
optimizer), over several seeds; docs/internals.md describes the report."""

from __future__ import annotations

import functools
import os
import pathlib
from collections.abc import Sequence
from typing import Any

DEFAULT_OPTIMIZERS: tuple[str, ...] = ("adam", "adamw")
DEFAULT_SEEDS = 3
DEFAULT_CONFIG = "compare_digits"  # configs/digits.py at 12 epochs, shipped with the package.
COLUMNS = tuple(
    "optimizer implementation seed steps final_train_loss final_train_accuracy validation_loss "
    "validation_accuracy validation_f1 test_loss test_accuracy test_f1 finite diverged_at "
    "parity steps_per_sec wall_time_s runs_in_program".split()
)
SUMMARY_METRICS = {
    "final_train_loss": "final train loss",
    "validation_accuracy": "validation accuracy",
    "test_accuracy": "test accuracy",
    "test_f1": "test macro F1",
}
PARITY = {"parity": "parity (max rel. param diff)"}


def split_names(text: str | Sequence[str]) -> tuple[str, ...]:
    """`"adam, adamw"` -> ("adam", "adamw"); a sequence of names as a tuple."""
    return tuple(n.strip() for n in text.split(",")) if isinstance(text, str) else tuple(text)


def parse_names(
    text: str | Sequence[str],
    known: Sequence[str] | None = None,
    *,
    field: str = "optimizers",
    hint: str = "give distinct names separated by commas from",
    error: type[Exception] = ValueError,
) -> tuple[str, ...]:
    """`"adam,adamw"` -> ("adam", "adamw"): distinct names, each one of `known` (default: the
    optimizers'); else `error` naming `field`, the value, then `hint`: `known`."""
    from adamlab.training import optimizers

    known = optimizers.names() if known is None else known
    names = split_names(text)
    unknown = [n for n in names if n not in known]
    if not names or unknown or len(set(names)) != len(names):
        raise error(
            f"{field}={','.join(names)!r}: empty, repeated or unknown {unknown}; {hint}: "
            + ", ".join(known)
        )
    return names


def run_compare(
    config: Any,
    workdir: str | os.PathLike,
    *,
    optimizers: Sequence[str] | str = DEFAULT_OPTIMIZERS,
    num_seeds: int = DEFAULT_SEEDS,
) -> dict[str, Any]:
    """Trains ours and the optax twin of each optimizer over seeds; writes the report.

    Rerunning an interrupted compare resumes it and ends with the results of an
    uninterrupted one.

    Returns:
      {"workdir", "rows" (the rows of results.csv), "summary" (the markdown of summary.md),
       "wall_time_s", "interrupted", "results" (optimizer -> train.RunsResult)}.

    Raises:
      ValueError / train.ConfigError: unknown optimizer names, bad seeds, an invalid config;
      run_io.ConfigMismatchError: the workdir holds another experiment, or a compare of
      optimizers not asked for (`report.check_request`).
    """
    from adamlab.experiments import groups, report

    optimizers = parse_names(optimizers)
    seeds = groups.seeds_from(config, num_seeds)
    out = groups.run_per_optimizer(
        config, workdir, optimizers, seeds=seeds, implementations=("ours", "optax")
    )
    out["rows"] = rows = [{k: row[k] for k in COLUMNS} for row in out["rows"]]
    if not out["interrupted"]:
        plot = functools.partial(_plot, out["results"], title=config.data.name)
        out["summary"] = report.write_report(
            workdir,
            rows,
            title=f"Ours vs optax on {config.data.name}",
            sections=_sections(config, rows, seeds, out["wall_time_s"]),
            figures={"curves.png": plot},
        )
    return out


def _sections(config: Any, rows: list[dict], seeds: Sequence[int], wall: float) -> list[str]:
    """summary.md: what was run, the table (mean ± 95% interval over seeds, parity), the time."""
    from adamlab.experiments import report

    by = ("optimizer", "implementation")
    _, table = report.summary_table(rows, by=by, metrics=SUMMARY_METRICS, maxima=PARITY)
    diverged = [
        f"{r['optimizer']}/{r['implementation']}/seed{r['seed']}" for r in rows if not r["finite"]
    ]
    return [
        f"Seeds {', '.join(map(str, seeds))}; {rows[0]['steps']} steps of batch "
        f"{config.train.batch_size}; model {config.model.name}; learning rate "
        f"{config.optimizer.learning_rate} ({config.optimizer.schedule}). Mean ± 95% "
        "t-interval over seeds. Parity: the largest relative parameter difference between ours "
        "and the twin over all steps and seeds (max over leaves of max|ours - optax| / "
        "max|optax|; 0 = bitwise equal).",
        table,
        f"Wall time {wall:.1f} s in all ({report.machine()}); ours and the twin of one "
        "optimizer train in one program, all seeds at once.",
        diverged and f"Non-finite values (diverged) in: {', '.join(diverged)}.",
    ]


def _plot(results: dict, path: pathlib.Path, *, title: str) -> None:
    """curves.png: train loss and validation accuracy against the recorded steps."""
    from adamlab.experiments import report

    panels = {"train loss": ("train", "loss"), "validation accuracy": ("validation", "accuracy")}
    lines = {
        panel: {
            f"{name} ({impl})": (curves[split][0], curves[split][1][key][0])
            for name, result in results.items()
            for impl, curves in result.curves.items()
            if curves[split][1]
        }
        for panel, (split, key) in panels.items()
    }
    report.plot_panels(path, {p: v for p, v in lines.items() if v}, xlabel="step", title=title)
