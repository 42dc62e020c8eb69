"""`adamlab compare`: each optimizer, ours against its optax twin, over several seeds.

    adamlab compare          # configs/compare_digits.py (12 epochs), adam + adamw, 3 seeds
    adamlab compare --config configs/digits.py --seeds 5 --optimizers adam,nadam,radam

For each optimizer, `multirun.train_runs` trains ours and the optax twin in lockstep (same
initialisation, same batches, one jitted step) for every seed at once, seed `config.seed + i`
for i < seeds, so each run is the `adamlab train` run of that seed. The report directory holds

* `config.json`: the config (its `optimizer.name`/`implementation`/`seed` are replaced as above);
* `results.csv`: one row per run (optimizer, implementation, seed, final train loss,
  validation and test accuracy, macro F1, parity, steps/s, wall time, ...);
* `summary.md`: per optimizer and implementation the mean and 95% t-interval over seeds, and
  the parity: the largest relative parameter difference between ours and the twin over all
  steps and seeds (`multirun.relative_difference`; 0 means bitwise equal parameters);
* `curves.png`: train loss and validation accuracy against step, mean and range over seeds
  (the twin dashed);
* `tensorboard/<optimizer>/<implementation>/seed<s>/`: metrics.jsonl and TensorBoard events.

Heavy imports (jax, TF) happen inside the functions, so `adamlab --help` stays fast.
"""

from __future__ import annotations

import os
import pathlib
import platform
import time
from collections.abc import Sequence
from typing import Any

from absl import flags

from adamlab import config_dict

# The defaults of `adamlab compare` (with DEFAULT_CONFIG: < 2 minutes on a 2-core CPU, README).
DEFAULT_OPTIMIZERS: tuple[str, ...] = ("adam", "adamw")
DEFAULT_SEEDS = 3
# configs/digits.py at 12 epochs (in a clone; `adamlab` is installed editable, see README).
DEFAULT_CONFIG = config_dict.resolve_config_path("compare_digits")
COLUMNS = (
    "optimizer", "implementation", "seed", "steps", "final_train_loss", "final_train_accuracy",
    "validation_loss", "validation_accuracy", "validation_f1", "test_loss", "test_accuracy",
    "test_f1", "finite", "parity", "steps_per_sec", "wall_time_s", "runs_in_program",
)  # fmt: skip
SUMMARY_METRICS = {
    "final_train_loss": "final train loss",
    "validation_accuracy": "validation accuracy",
    "test_accuracy": "test accuracy",
    "test_f1": "test macro F1",
}


def parse_names(text: str | Sequence[str]) -> tuple[str, ...]:
    """`"adam,adamw"` -> ("adam", "adamw"); raises ValueError listing the valid names."""
    from adamlab import optim

    names = tuple(n.strip() for n in text.split(",")) if isinstance(text, str) else tuple(text)
    unknown = [n for n in names if n not in optim.names()]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(
            f"optimizers={','.join(names)!r}: unknown {unknown} or empty/repeated; give distinct "
            f"names separated by commas from: {', '.join(optim.names())}"
        )
    return names


def seeds_from(config: Any, num_seeds: int) -> tuple[int, ...]:
    """`config.seed + i` for i < num_seeds."""
    if isinstance(num_seeds, bool) or not isinstance(num_seeds, int) or num_seeds < 1:
        raise ValueError(f"seeds={num_seeds!r} must be an int >= 1 (the number of seeds)")
    return tuple(config.seed + i for i in range(num_seeds))


def run_compare(
    config: Any,
    workdir: str | os.PathLike,
    *,
    optimizers: Sequence[str] | str = DEFAULT_OPTIMIZERS,
    num_seeds: int = DEFAULT_SEEDS,
    progress: bool = False,
) -> dict[str, Any]:
    """Trains ours and the optax twin of each optimizer over seeds; writes the report.

    Returns:
      {"workdir", "rows" (the rows of results.csv), "summary" (the markdown of summary.md),
       "wall_time_s", "results" (optimizer -> multirun.RunsResult, with the final params)}.

    Raises:
      ValueError / train.ConfigError: unknown optimizer names, bad seeds, an invalid config.
    """
    from adamlab.experiments import report
    from adamlab.training import multirun, run_io

    optimizers = parse_names(optimizers)
    seeds = seeds_from(config, num_seeds)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    run_io.write_config(workdir, config)
    start = time.perf_counter()
    rows, results, curves = [], {}, {"train loss": {}, "validation accuracy": {}}
    for name in optimizers:
        cfg = config.copy_and_resolve_references()
        cfg.optimizer.name = name
        results[name] = result = multirun.train_runs(
            cfg,
            seeds=seeds,
            implementations=("ours", "optax"),
            workdir=workdir / "tensorboard" / name,
            progress=progress,
        )
        rows += [{k: row[k] for k in COLUMNS} for row in result.rows]
        for impl, splits in result.curves.items():
            label = f"{name} ({impl})"
            steps, train = splits["train"]
            curves["train loss"][label] = (steps, train["loss"][0])
            steps, validation = splits["validation"]
            if validation:
                curves["validation accuracy"][label] = (steps, validation["accuracy"][0])
    wall = time.perf_counter() - start
    report.write_csv(workdir / "results.csv", rows)
    curves = {panel: lines for panel, lines in curves.items() if lines}
    report.plot_curves(workdir / "curves.png", curves, title=f"{config.data.name}")
    summary = summary_markdown(config, rows, seeds, wall)
    (workdir / "summary.md").write_text(summary)
    return {
        "workdir": workdir, "rows": rows, "summary": summary, "wall_time_s": wall,
        "results": results,
    }  # fmt: skip


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


# ---------------------------------------------------------------------------- command line


def define_flags(fv: flags.FlagValues, argv: list[str]) -> None:
    """Flags of `adamlab compare`: --config (+ overrides), --workdir, --seeds, --optimizers."""
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config", str(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else None,
        "Experiment config file; override fields with --config.<field>=<value>.",
        flag_values=fv, sys_argv=argv,
    )  # fmt: skip
    flags.DEFINE_string("workdir", None, "Report directory. Default: runs/compare-<config>-<time>.",
                        flag_values=fv)  # fmt: skip
    flags.DEFINE_integer("seeds", DEFAULT_SEEDS, "Number of seeds: config.seed + 0, 1, ...",
                         lower_bound=1, flag_values=fv)  # fmt: skip
    flags.DEFINE_string(
        "optimizers", ",".join(DEFAULT_OPTIMIZERS),
        "Comma-separated optimizer names (each trained as ours and as its optax twin).",
        flag_values=fv,
    )  # fmt: skip


def main(fv: flags.FlagValues) -> int:
    """Runs `adamlab compare` from parsed flags; prints the report directory and the table."""
    from adamlab import cli

    config_path = cli.checked_config_path(fv)
    try:
        optimizers = parse_names(fv["optimizers"].value)
    except ValueError as e:
        raise flags.Error(str(e)) from None
    workdir = fv["workdir"].value or cli.default_workdir(
        f"compare-{pathlib.Path(config_path).stem}"
    )
    result = run_compare(
        fv["config"].value,
        workdir,
        optimizers=optimizers,
        num_seeds=fv["seeds"].value,
        progress=True,
    )
    print(result["summary"])
    print(f"report: {pathlib.Path(workdir).absolute()} (results.csv, summary.md, curves.png, "
          "tensorboard/)")  # fmt: skip
    return cli.EXIT_OK
