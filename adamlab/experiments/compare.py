"""`adamlab compare`: each optimizer, ours against its optax twin, over several seeds.

    adamlab compare          # configs/compare_digits.py (12 epochs), adam + adamw, 3 seeds
    adamlab compare --config configs/digits.py --seeds 5 --optimizers adam,nadam,radam

For each optimizer, the one loop (`adamlab.training.train.run`) trains ours and the optax twin
in lockstep (same initialisation, same batches, one compiled step) for every seed at once, seed
`config.seed + i` for i < seeds, so each run is the `adamlab train` run of that seed (to float32
rounding: on CPU the vectorized runs compute convolutions as matmuls). The report directory
holds

* `config.json`: the config (its `optimizer.name`/`implementation`/`seed` are replaced as above);
* `results.csv`: one row per run (optimizer, implementation, seed, final train loss,
  validation and test accuracy, macro F1, parity, steps/s, wall time, ...);
* `summary.md`: per optimizer and implementation the mean and 95% t-interval over seeds, and
  the parity: the largest relative parameter difference between ours and the twin over all
  steps and seeds (`multirun.relative_difference`; 0 means bitwise equal parameters);
* `curves.png`: train loss and validation accuracy against step, mean and range over seeds
  (the twin dashed);
* `<optimizer>/`: that optimizer's run directory (config.json, checkpoints, result.json, and
  `members/<implementation>/seed<s>/` with metrics.jsonl and TensorBoard events).

Heavy imports (jax, TF) happen inside the functions, so `adamlab --help` stays fast.
"""

from __future__ import annotations

import os
import pathlib
import platform
from collections.abc import Sequence
from typing import Any

# The defaults of `adamlab compare` (with DEFAULT_CONFIG: < 2 minutes on a 2-core CPU, README).
DEFAULT_OPTIMIZERS: tuple[str, ...] = ("adam", "adamw")
DEFAULT_SEEDS = 3
DEFAULT_CONFIG = "compare_digits"  # configs/digits.py at 12 epochs, shipped with the package.
COLUMNS = (
    "optimizer",
    "implementation",
    "seed",
    "steps",
    "final_train_loss",
    "final_train_accuracy",
    "validation_loss",
    "validation_accuracy",
    "validation_f1",
    "test_loss",
    "test_accuracy",
    "test_f1",
    "finite",
    "diverged_at",
    "parity",
    "steps_per_sec",
    "wall_time_s",
    "runs_in_program",
)
SUMMARY_METRICS = {
    "final_train_loss": "final train loss",
    "validation_accuracy": "validation accuracy",
    "test_accuracy": "test accuracy",
    "test_f1": "test macro F1",
}


def parse_names(text: str | Sequence[str]) -> tuple[str, ...]:
    """`"adam,adamw"` -> ("adam", "adamw"); raises ValueError listing the valid names."""
    from adamlab.training import optimizers

    names = tuple(n.strip() for n in text.split(",")) if isinstance(text, str) else tuple(text)
    unknown = [n for n in names if n not in optimizers.names()]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(
            f"optimizers={','.join(names)!r}: unknown {unknown} or empty/repeated; give distinct "
            f"names separated by commas from: {', '.join(optimizers.names())}"
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

    Each optimizer is one group (`groups.run_groups`, in `workdir/<optimizer>/`): ours and the
    twin of every seed train in one program, in lockstep. Rerunning an interrupted compare
    resumes it and ends with exactly the results of an uninterrupted one.

    Returns:
      {"workdir", "rows" (the rows of results.csv), "summary" (the markdown of summary.md),
       "wall_time_s", "interrupted", "results" (optimizer -> train.RunsResult)}.

    Raises:
      ValueError / train.ConfigError: unknown optimizer names, bad seeds, an invalid config.
    """
    from adamlab.experiments import groups, report

    optimizers = parse_names(optimizers)
    seeds = groups.seeds_from(config, num_seeds)
    results, wall, interrupted = groups.run_per_optimizer(
        config, workdir, optimizers, seeds=seeds, implementations=("ours", "optax")
    )
    workdir = pathlib.Path(workdir)
    rows, curves = [], {"train loss": {}, "validation accuracy": {}}
    for name, result in results.items():
        rows += [{k: row[k] for k in COLUMNS} for row in result.rows]
        for impl, splits in result.curves.items():
            label = f"{name} ({impl})"
            steps, train = splits["train"]
            curves["train loss"][label] = (steps, train["loss"][0])
            steps, validation = splits["validation"]
            if validation:
                curves["validation accuracy"][label] = (steps, validation["accuracy"][0])
    summary = ""
    if not interrupted:
        report.write_csv(workdir / "results.csv", rows)
        curves = {panel: lines for panel, lines in curves.items() if lines}
        report.plot_curves(workdir / "curves.png", curves, title=f"{config.data.name}")
        summary = summary_markdown(config, rows, seeds, wall)
        (workdir / "summary.md").write_text(summary)
    return {
        "workdir": workdir,
        "rows": rows,
        "summary": summary,
        "wall_time_s": wall,
        "interrupted": interrupted,
        "results": results,
    }


def summary_markdown(config: Any, rows: list[dict], seeds: Sequence[int], wall: float) -> str:
    """summary.md: what was run, then the table (mean ± 95% interval over seeds, parity)."""
    from adamlab.experiments import report

    summary = report.summarize(
        rows,
        by=("optimizer", "implementation"),
        metrics=(*SUMMARY_METRICS, "steps_per_sec"),
        maxima=("parity",),
    )
    table = report.markdown_table(
        summary,
        keys=("optimizer", "implementation"),
        metrics=SUMMARY_METRICS,
        maxima={"parity": "parity (max rel. param diff)"},
    )
    diverged = [r for r in rows if not r["finite"]]
    steps = rows[0]["steps"]
    lines = [
        f"# Ours vs optax on {config.data.name}",
        "",
        f"Seeds {', '.join(map(str, seeds))}; {steps} steps of batch {config.train.batch_size}; "
        f"model {config.model.name}; learning rate {config.optimizer.learning_rate} "
        f"({config.optimizer.schedule}). Mean ± 95% t-interval over seeds. Parity: the largest "
        "relative parameter difference between ours and the twin over all steps and seeds "
        "(max over leaves of max|ours - optax| / max|optax|; 0 = bitwise equal).",
        "",
        table,
        f"Wall time {wall:.1f} s in all ({platform.machine()}, {os.cpu_count()} CPU threads, "
        f"{_device()}); ours and the twin of one optimizer train in one program, all seeds "
        "at once.",
    ]
    if diverged:
        runs = ", ".join(
            f"{r['optimizer']}/{r['implementation']}/seed{r['seed']}" for r in diverged
        )
        lines.append(f"\nNon-finite values (diverged) in: {runs}.")
    return "\n".join(lines) + "\n"


def _device() -> str:
    import jax

    device = jax.devices()[0]
    return f"jax {jax.__version__} on {device.platform}:{device.device_kind}"
