r"""`adamlab benchmark`: tuned optimizers on workloads with validation targets, compared fairly.

    adamlab benchmark --workloads digits_cnn,mnist_logreg \
        --optimizers adam,adamw,nadam,radam,amsgrad,adabelief,sgd --trials 16 --seeds 5 \
        --workdir runs/bench

A workload is a shipped config `configs/bench_<workload>.py`: an experiment config plus a
`benchmark` section (the validation target, the search space of every optimizer, the seeds;
`configs/bench_digits_cnn.py` documents each field). For every workload and optimizer, in
stages that are each one run of the one loop (`adamlab.training.train.run`):

1. **tune** (`<workdir>/<workload>/<optimizer>/tune/`): `--trials` points of a seeded
   scrambled Halton sequence over the optimizer's search space (`tuning.halton_trials`), all
   trained in ONE compiled program as one `runs.sweep` (trial i = the i-th value of every swept
   field), with the workload's tuning seed.
2. **select**, on the validation split only: the trial reaching the target in the fewest steps
   (none reaches it: the best final validation accuracy; `tuning.select_trial`).
3. **final** (`.../final/`): the selected setting rerun with `--seeds` new seeds
   (`benchmark.final_seed_start` + i, never used in tuning), all in one program. Its test
   metrics are the only test numbers the report shows, once, with 95% t-intervals.

Then a learning rate x decay strength grid for Adam + L2 against AdamW (Loshchilov & Hutter
2019, Fig. 2) on the first workload, one program per method (`<workdir>/heatmap/<method>/`).

**Time-to-target.** A run reaches the target at the first validation evaluation at or past it
(resolution: `train.eval_every_steps`); never reached or diverged: infinity. Its seconds are
its steps times its share of the final program's training time: one compiled program trains
the S seeds of a final stage in lockstep, so each member is charged 1/S of the program's
seconds per step (`1 / (steps_per_sec * S)`; compilation and evaluations are left out; the same
S for every optimizer). This is the cost of a step of that optimizer on that workload, measured
while the machine ran it; on a shared machine it carries the load of the moment, which is why
the report also gives the step counts, which no load changes.

A stage that finished returns its saved result without training, and an interrupted stage
resumes from its checkpoint, so an interrupted benchmark resumes by running the same command.
Wrong workload or optimizer names, a budget below 1, an invalid config or missing data are
errors before anything is written.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from adamlab import config_dict, data
from adamlab.experiments import benchmark_report, groups, profiles, report, tuning
from adamlab.training import run_io, train
from adamlab.training.experiment import ConfigError

WORKLOAD_PREFIX = "bench_"  # configs/bench_<workload>.py
DEFAULT_WORKLOADS: tuple[str, ...] = ("digits_cnn",)
DEFAULT_OPTIMIZERS: tuple[str, ...] = (
    "adam",
    "adamw",
    "nadam",
    "radam",
    "amsgrad",
    "adabelief",
    "sgd",
)
DEFAULT_TRIALS = 16
DEFAULT_SEEDS = 5
HEATMAP_METHODS: dict[str, tuple[str, str]] = {  # method -> (optimizer, swept decay field)
    "adam_l2": ("adam", "l2"),
    "adamw": ("adamw", "weight_decay"),
}
TARGET_METRICS = {"validation_accuracy": True, "validation_loss": False}  # higher is better?
# Optimizer fields a stage resets before applying a search space (a workload config may set
# e.g. AdamW's weight_decay; an SGD stage must not inherit it).
_RESET_FIELDS = ("b1", "b2", "eps", "weight_decay", "momentum", "nesterov", "l2")


class BenchmarkError(ConfigError):
    """A benchmark request that cannot run: names, budget, config or data; nothing was written."""


# ---------------------------------------------------------------------------- the plan


def workload_names() -> tuple[str, ...]:
    """The shipped workloads: `configs/bench_<name>.py`."""
    return tuple(
        n[len(WORKLOAD_PREFIX) :]
        for n in config_dict.shipped_configs()
        if n.startswith(WORKLOAD_PREFIX)
    )


def load_workloads(names: str | Sequence[str]) -> dict[str, ml_collections.ConfigDict]:
    """`"digits_cnn,mnist_logreg"` -> name -> config; BenchmarkError for an unknown name."""
    names = _split(names)
    known = workload_names()
    unknown = [n for n in names if n not in known]
    if not names or unknown or len(set(names)) != len(names):
        raise BenchmarkError(
            f"workloads={','.join(names)!r}: unknown {unknown} or empty/repeated; "
            f"shipped workloads: {', '.join(known)}"
        )
    return {n: config_dict.load_config(WORKLOAD_PREFIX + n) for n in names}


def _split(names: str | Sequence[str]) -> tuple[str, ...]:
    return tuple(n.strip() for n in names.split(",")) if isinstance(names, str) else tuple(names)


@dataclasses.dataclass(frozen=True)
class Workload:
    """A workload of the plan: its config, target, spaces and the tune stages' trials."""

    name: str
    config: ml_collections.ConfigDict
    spaces: dict[str, tuning.SearchSpace]
    trials: dict[str, dict[str, tuple[float, ...]]]  # optimizer -> field -> values
    steps_per_epoch: int
    num_steps: int

    @property
    def target(self) -> float:
        return float(self.config.benchmark.target)

    @property
    def metric(self) -> str:
        return self.config.benchmark.target_metric

    @property
    def higher_is_better(self) -> bool:
        return TARGET_METRICS[self.metric]

    def final_seeds(self, num_seeds: int) -> tuple[int, ...]:
        """The seeds of the final stage: `benchmark.final_seed_start` + i, never tuned on."""
        start = self.config.benchmark.final_seed_start
        return tuple(range(start, start + num_seeds))

    def heatmap_axes(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(learning rates, decay strengths) of the Adam + L2 vs AdamW grid."""
        grid = self.config.benchmark.heatmap
        return tuple(map(float, grid.learning_rates)), tuple(map(float, grid.strengths))


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything a benchmark will run, checked: see `plan_benchmark`."""

    workloads: dict[str, Workload]
    optimizers: tuple[str, ...]
    trials: int
    seeds: int
    heatmap: bool

    def stages(self) -> list[tuple[str, str]]:
        """(workload, optimizer) in the order they run."""
        return [(w, o) for w in self.workloads for o in self.optimizers]


def plan_benchmark(
    workloads: Mapping[str, ml_collections.ConfigDict],
    optimizers: str | Sequence[str] = DEFAULT_OPTIMIZERS,
    *,
    trials: int = DEFAULT_TRIALS,
    seeds: int = DEFAULT_SEEDS,
    heatmap: bool = True,
) -> Plan:
    """Checks the request and builds every tune stage's config; nothing is written.

    Raises:
      BenchmarkError: a budget (trials) or seed count below 1, an optimizer without a search
        space in a workload, a bad search space, an invalid stage config, or a workload whose
        dataset is not prepared (the message names the workload and says how to prepare it).
    """
    for what, value in (("trials", trials), ("seeds", seeds)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BenchmarkError(f"{what}={value!r} must be an int >= 1")
    optimizers = _split(optimizers)
    if not optimizers or len(set(optimizers)) != len(optimizers):
        raise BenchmarkError(f"optimizers={','.join(optimizers)!r}: empty or repeated names")
    if not workloads:
        raise BenchmarkError("no workloads given; shipped: " + ", ".join(workload_names()))
    first = next(iter(workloads.values()))
    heatmap = heatmap and first.get("benchmark", {}).get("heatmap") is not None
    planned = {}
    for i, (name, config) in enumerate(workloads.items()):  # The heatmap: first workload only.
        planned[name] = _plan_workload(name, config, optimizers, trials, seeds, heatmap and not i)
    return Plan(planned, optimizers, trials, seeds, heatmap)


def _plan_workload(name, config, optimizers, num_trials, num_seeds, heatmap) -> Workload:
    bench = config.get("benchmark")
    if bench is None:
        raise BenchmarkError(f"workload {name!r}: its config has no benchmark section")
    if bench.get("target_metric") not in TARGET_METRICS:
        raise BenchmarkError(
            f"workload {name!r}: benchmark.target_metric={bench.get('target_metric')!r}; "
            f"allowed: {', '.join(TARGET_METRICS)}"
        )
    available = tuple(bench.search_spaces.keys())
    missing = [o for o in optimizers if o not in available]
    if missing:
        raise BenchmarkError(
            f"optimizers {missing} have no search space in workload {name!r}; "
            f"its spaces: {', '.join(available)}"
        )
    try:  # Data first: a dataset that is not prepared raises here, naming how to prepare it.
        num_steps = train.validate_config(_strip(config))
        info = data.dataset_info(config.data)
        steps_per_epoch = data.steps_per_epoch(info, config.train.batch_size)
    except (FileNotFoundError, ValueError) as e:
        raise BenchmarkError(f"workload {name!r}: {e}") from None
    spaces, trials = {}, {}
    for optimizer in optimizers:
        try:
            spaces[optimizer] = tuning.SearchSpace.from_config(
                optimizer, bench.search_spaces[optimizer]
            )
        except ValueError as e:
            raise BenchmarkError(f"workload {name!r}: {e}") from None
        trials[optimizer] = tuning.halton_trials(spaces[optimizer], num_trials, bench.halton_seed)
    workload = Workload(name, config, spaces, trials, steps_per_epoch, num_steps)
    checks = {f"{o}/tune": tune_config(workload, o) for o in optimizers}
    # The final stages' settings are chosen later; their structure is checked with trial 0.
    checks |= {
        f"{o}/final": final_config(workload, o, tuning.trial_values(trials[o], 0), num_seeds)
        for o in optimizers
    }
    if heatmap:
        checks |= {f"heatmap/{m}": c for m, c in heatmap_configs(workload).items()}
    for stage, stage_config in checks.items():
        try:
            train.validate_config(stage_config)
        except ConfigError as e:
            raise BenchmarkError(f"workload {name!r}, stage {stage}: {e}") from None
    return workload


# ---------------------------------------------------------------------------- stage configs


def _strip(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The training config of a workload: without its `benchmark` section."""
    out = ml_collections.ConfigDict(config.to_dict())
    del out.benchmark
    return out


def _stage_config(workload: Workload, optimizer: str, seeds, sweep) -> ml_collections.ConfigDict:
    space = workload.spaces[optimizer]
    fields = dict.fromkeys(_RESET_FIELDS) | space.fixed
    if "warmup_fraction" in space.ranges:  # A tuned warmup replaces the config's warmup_steps.
        fields["warmup_steps"] = 0
    fields = {f"optimizer.{k}": v for k, v in fields.items()}
    base = _strip(workload.config)
    return groups.with_members(base, seeds=tuple(seeds), sweep=sweep, **fields)


def tune_config(workload: Workload, optimizer: str) -> ml_collections.ConfigDict:
    """Every trial of `optimizer` on `workload` as one sweep, with the tuning seed."""
    seed = workload.config.benchmark.tuning_seed
    return _stage_config(workload, optimizer, (seed,), workload.trials[optimizer])


def final_config(
    workload: Workload, optimizer: str, values: Mapping[str, float], num_seeds: int
) -> ml_collections.ConfigDict:
    """The selected setting with `num_seeds` new seeds, in one program (a one-value sweep, so
    that the hyperparameters enter exactly as in the tune stage)."""
    sweep = {k: (float(v),) for k, v in values.items()}
    return _stage_config(workload, optimizer, workload.final_seeds(num_seeds), sweep)


def heatmap_configs(workload: Workload) -> dict[str, ml_collections.ConfigDict]:
    """method -> the learning rate x strength grid (flattened into one sweep) x seeds."""
    grid = workload.config.benchmark.heatmap
    rates, strengths = workload.heatmap_axes()
    base = _strip(workload.config)
    out = {}
    for method, (name, field) in HEATMAP_METHODS.items():
        sweep = {
            "learning_rate": tuple(r for r in rates for _ in strengths),
            field: tuple(s for _ in rates for s in strengths),
        }
        fields = dict.fromkeys(_RESET_FIELDS) | {"name": name, "implementation": "ours"}
        out[method] = groups.with_members(
            base,
            seeds=tuple(grid.seeds),
            sweep=sweep,
            **{f"optimizer.{k}": v for k, v in fields.items()},
        )
    return out


# ---------------------------------------------------------------------------- running


def run_benchmark(
    plan: Plan,
    workdir: str | os.PathLike,
    *,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Runs (or resumes) every stage of `plan` in `workdir`; writes the report.

    Returns:
      {"workdir", "trials" (rows of trials.csv), "rows" (rows of results.csv), "summary",
       "wall_time_s", "interrupted"}.
    """
    start = time.perf_counter()
    progress = progress or (lambda line: print(line, flush=True))  # Shown at once, also in logs.
    workdir = pathlib.Path(workdir)
    _check_workdir(plan, workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    run_io.write_json(workdir / "benchmark.json", _plan_json(plan))
    trial_rows, final_rows, stages = [], [], []
    total = len(plan.stages()) + bool(plan.heatmap)
    for k, (name, optimizer) in enumerate(plan.stages(), start=1):
        workload = plan.workloads[name]
        where = f"[{k}/{total}] {name} {optimizer}"
        path = workdir / name / optimizer
        tuned = _run_stage(tune_config(workload, optimizer), path / "tune", where, progress)
        stages.append(_stage_row(name, optimizer, "tune", tuned))
        if tuned.interrupted:
            return _interrupted(workdir, start)
        rows, best = _trial_rows(workload, optimizer, tuned)
        trial_rows += rows
        chosen = tuning.trial_values(workload.trials[optimizer], best)
        reached = sum(math.isfinite(r["steps_to_target"]) for r in rows)
        progress(
            f"{where}: {reached}/{plan.trials} trials reached {workload.metric} >= "
            f"{workload.target}; selected trial {best}: {_setting(chosen)}"
        )
        config = final_config(workload, optimizer, chosen, plan.seeds)
        final = _run_stage(config, path / "final", where, progress)
        stages.append(_stage_row(name, optimizer, "final", final))
        if final.interrupted:
            return _interrupted(workdir, start)
        final_rows += _final_rows(workload, optimizer, chosen, final, path / "final")
    heatmap = None
    if plan.heatmap:
        workload = next(iter(plan.workloads.values()))
        heatmap = {}
        for method, config in heatmap_configs(workload).items():
            where = f"[{total}/{total}] {workload.name} heatmap {method}"
            result = _run_stage(config, workdir / "heatmap" / method, where, progress)
            stages.append(_stage_row(workload.name, method, "heatmap", result))
            if result.interrupted:
                return _interrupted(workdir, start)
            heatmap[method] = result
    wall = time.perf_counter() - start
    summary = benchmark_report.write_report(
        plan, workdir, trial_rows, final_rows, stages, heatmap, wall
    )
    return {
        "workdir": workdir,
        "trials": trial_rows,
        "rows": final_rows,
        "summary": summary,
        "wall_time_s": wall,
        "interrupted": False,
    }


def _check_workdir(plan: Plan, workdir: pathlib.Path) -> None:
    """Before anything is written: not a training run, and no finished tune stage that a
    different request (another budget or space) would overwrite."""
    if (workdir / run_io.CHECKPOINT_DIR).exists():
        raise run_io.ConfigMismatchError(
            f"{workdir} holds a training run; give the benchmark its own --workdir"
        )
    for name, optimizer in plan.stages():
        config = tune_config(plan.workloads[name], optimizer)
        run_io.check_resumable(workdir / name / optimizer / "tune", config)


def _run_stage(config, path: pathlib.Path, where: str, progress) -> train.RunsResult:
    kind = path.name if path.parent.name != "heatmap" else "grid"
    members = len(train.read_members(config).seeds) * _num_values(config)
    if (path / train.RESULT_FILE).is_file():
        progress(f"{where}: {kind} finished earlier; its saved result is used")
    else:
        progress(f"{where}: {kind}, {members} runs in one program ...")
    result = train.run(config, path)
    if not result.interrupted:
        progress(f"{where}: {kind} done ({result.wall_time_s:.1f} s, {result.num_steps} steps)")
    return result


def _num_values(config) -> int:
    sweep = train.read_members(config).sweep
    return len(next(iter(sweep.values()))) if sweep else 1


def _interrupted(workdir: pathlib.Path, start: float) -> dict[str, Any]:
    return {
        "workdir": workdir,
        "trials": [],
        "rows": [],
        "summary": "",
        "wall_time_s": time.perf_counter() - start,
        "interrupted": True,
    }


def _stage_row(workload: str, optimizer: str, kind: str, result: train.RunsResult) -> dict:
    return {
        "workload": workload,
        "optimizer": optimizer,
        "stage": kind,
        "runs": len(result.rows),
        "steps": result.num_steps,
        "wall_time_s": result.wall_time_s,
        "compile_s": result.phases.get("compile", math.nan),
        "steps_per_sec": result.steps_per_sec,
    }


def _curve(workload: Workload, result: train.RunsResult) -> tuple[np.ndarray, np.ndarray]:
    """The validation curve of the target metric: (steps [T], values [V, S, T])."""
    (per_split,) = result.curves.values()  # One implementation per stage.
    steps, values = per_split["validation"]
    key = workload.metric.removeprefix("validation_")
    return np.asarray(steps), np.asarray(values[key], np.float64)


def _reach(workload: Workload, result: train.RunsResult) -> np.ndarray:
    steps, values = _curve(workload, result)
    return profiles.steps_to_target(
        steps, values, workload.target, higher_is_better=workload.higher_is_better
    )


def _trial_rows(workload: Workload, optimizer: str, result: train.RunsResult):
    """trials.csv rows (validation only) and the selected trial's index."""
    reach = _reach(workload, result)[:, 0]  # [V] (one seed)
    trials = workload.trials[optimizer]
    rows = []
    for i, member in enumerate(result.rows):
        rows.append(
            {
                "workload": workload.name,
                "optimizer": optimizer,
                "trial": i,
                **tuning.trial_values(trials, i),
                "seed": member["seed"],
                "steps_to_target": float(reach[i]),
                "validation_accuracy": member["validation_accuracy"],
                "validation_loss": member["validation_loss"],
                "finite": member["finite"],
            }
        )
    best = tuning.select_trial(
        reach, [r["validation_accuracy"] for r in rows], [r["validation_loss"] for r in rows]
    )
    for row in rows:
        row["selected"] = row["trial"] == best
    return rows, best


def _final_rows(workload, optimizer, chosen, result: train.RunsResult, path) -> list[dict]:
    """results.csv rows: one per seed of the final stage (run in `path`)."""
    reach = _reach(workload, result)[0]  # [S]
    members = len(result.rows)
    rate = result.steps_per_sec
    if not (rate and math.isfinite(rate)):  # This process timed no step: what was persisted.
        rate = report.persisted_rate(path)
    per_step = 1.0 / (rate * members)  # Each member's share of the program's step.
    rows = []
    for s, member in enumerate(result.rows):
        rows.append(
            {
                "workload": workload.name,
                "optimizer": optimizer,
                "seed": member["seed"],
                "setting": _setting(chosen),
                "steps": result.num_steps,
                "steps_to_target": float(reach[s]),
                "epochs_to_target": float(reach[s]) / workload.steps_per_epoch,
                "seconds_to_target": float(reach[s]) * per_step,
                "seconds_per_step": per_step,
                "final_train_loss": member["final_train_loss"],
                "validation_accuracy": member["validation_accuracy"],
                "validation_loss": member["validation_loss"],
                "test_accuracy": member["test_accuracy"],
                "test_loss": member["test_loss"],
                "finite": member["finite"],
                "runs_in_program": members,
            }
        )
    return rows


def _setting(values: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.3g}" for k, v in values.items())


def _plan_json(plan: Plan) -> dict[str, Any]:
    return {
        "optimizers": list(plan.optimizers),
        "trials": plan.trials,
        "seeds": plan.seeds,
        "heatmap": plan.heatmap,
        "workloads": {
            name: {
                "target": f"{w.metric} {'>=' if w.higher_is_better else '<='} {w.target}",
                "spaces": {o: s.describe() for o, s in w.spaces.items()},
                "trials": w.trials,
            }
            for name, w in plan.workloads.items()
        },
    }
