"""`adamlab benchmark`: tuned optimizers on workloads with validation targets, compared fairly.

Per workload and optimizer, stages that are each one run of the one loop: tune, select on
validation, final (new seeds); then Adam + L2 against AdamW. docs/benchmark.md: the protocol.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from adamlab import config_dict, data
from adamlab.experiments import (
    algoperf,
    benchmark_report,
    compare,
    groups,
    profiles,
    report,
    tuning,
)
from adamlab.training import run_io, train
from adamlab.training.experiment import ConfigError

WORKLOAD_PREFIX = "bench_"  # configs/bench_<workload>.py
PLAN_FILE = "benchmark.json"  # What the workdir's benchmark was asked for (`_plan_json`).
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
DEFAULT_TRIALS = 16  # Per study, external tuning; self-tuning runs one.
DEFAULT_SEEDS = 5
DEFAULT_STUDIES = 1
# AlgoPerf's rulesets -> the factor on the workload's step budget: external tuning searches
# the space within the budget; self-tuning runs each optimizer's default setting, one trial per
# study, with 3x the budget (AlgoPerf's self-tuning track).
RULESETS: dict[str, int] = {"external_tuning": 1, "self_tuning": 3}
DEFAULT_RULESET = "external_tuning"
HEATMAP_METHODS: dict[str, tuple[str, str]] = {  # method -> (optimizer, swept decay field)
    "adam_l2": ("adam", "l2"),
    "adamw": ("adamw", "weight_decay"),
    "lion": ("lion", "weight_decay"),
}
DEFAULT_HEATMAP = ("adam_l2", "adamw")  # Loshchilov & Hutter 2019, Fig. 2.
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
    names = compare.parse_names(
        names, workload_names(), field="workloads", hint="shipped workloads", error=BenchmarkError
    )
    return {n: config_dict.load_config(WORKLOAD_PREFIX + n) for n in names}


@dataclasses.dataclass(frozen=True)
class Workload:
    """A workload of the plan: its config, target, spaces and the tune stages' trials.

    `num_steps` is the workload's step budget, `budget` that of every stage under the plan's
    ruleset (`RULESETS`).
    """

    name: str
    config: ml_collections.ConfigDict
    spaces: dict[str, tuning.SearchSpace]
    trials: dict[str, tuple[dict[str, tuple[float, ...]], ...]]  # optimizer -> study -> values
    steps_per_epoch: int
    num_steps: int
    budget: int

    @property
    def target(self) -> float:
        return float(self.config.benchmark.target)

    @property
    def metric(self) -> str:
        return self.config.benchmark.target_metric

    @property
    def higher_is_better(self) -> bool:
        return TARGET_METRICS[self.metric]

    def tuning_seed(self, study: int) -> int:
        """The seed (init, data order, dropout) of every trial of `study`."""
        return self.config.benchmark.tuning_seed + study

    def halton_seed(self, study: int) -> int:
        """The seed of `study`'s Halton points (external tuning)."""
        return self.config.benchmark.halton_seed + study

    def final_seeds(self, num_seeds: int) -> tuple[int, ...]:
        """The seeds of the final stage: `benchmark.final_seed_start` + i, never tuned on."""
        start = self.config.benchmark.final_seed_start
        return tuple(range(start, start + num_seeds))

    def heatmap_axes(self, method: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(learning rates, decay strengths) of `method`'s grid: `benchmark.heatmap.axes.<method>`
        where the workload gives one (Lion's rates are ~10x smaller, its decay ~10x larger),
        else the section's own."""
        grid = self.config.benchmark.heatmap
        axes = (grid.get("axes") or {}).get(method) or grid
        return tuple(map(float, axes["learning_rates"])), tuple(map(float, axes["strengths"]))


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything a benchmark will run, checked: see `plan_benchmark`."""

    workloads: dict[str, Workload]
    optimizers: tuple[str, ...]
    trials: int  # Per study.
    seeds: int
    heatmap: tuple[str, ...]  # Its methods on the first workload; () without.
    studies: int = DEFAULT_STUDIES
    ruleset: str = DEFAULT_RULESET

    def stages(self) -> list[tuple[str, str]]:
        """(workload, optimizer) in the order they run."""
        return [(w, o) for w in self.workloads for o in self.optimizers]


def plan_benchmark(
    workloads: Mapping[str, ml_collections.ConfigDict],
    optimizers: str | Sequence[str] = DEFAULT_OPTIMIZERS,
    *,
    trials: int | None = None,
    seeds: int = DEFAULT_SEEDS,
    studies: int = DEFAULT_STUDIES,
    ruleset: str = DEFAULT_RULESET,
    heatmap: bool | str | Sequence[str] = True,
) -> Plan:
    """Checks the request and builds every tune stage's config; nothing is written.

    `trials` (per study) defaults to the ruleset's: `DEFAULT_TRIALS` for external tuning, 1
    for self-tuning (its only value). `heatmap`: the methods of the learning rate x decay grid
    on the first workload (`HEATMAP_METHODS`), True for its config's `benchmark.heatmap.methods`
    (default `DEFAULT_HEATMAP`), False for none.

    Raises:
      BenchmarkError: an unknown ruleset or heatmap method, a budget (trials, studies) or seed
        count below 1, trials other than 1 under self-tuning, tuning seeds that reach the final
        seeds, an optimizer without a search space in a workload, a bad search space, an
        invalid stage config, or a workload whose dataset is not prepared (the message names
        the workload and says how to prepare it).
    """
    if ruleset not in RULESETS:
        raise BenchmarkError(f"ruleset={ruleset!r} is unknown; allowed: {', '.join(RULESETS)}")
    search = ruleset == "external_tuning"
    trials = (DEFAULT_TRIALS if search else 1) if trials is None else trials
    for what, value in (("trials", trials), ("seeds", seeds), ("studies", studies)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BenchmarkError(f"{what}={value!r} must be an int >= 1")
    if not search and trials != 1:
        raise BenchmarkError(
            f"trials={trials}: the self_tuning ruleset runs one trial per study, each "
            "optimizer's default setting; leave --trials out (or use --studies)"
        )
    optimizers = compare.split_names(optimizers)  # Unknown ones: no search space, below.
    if not optimizers or len(set(optimizers)) != len(optimizers):
        raise BenchmarkError(f"optimizers={','.join(optimizers)!r}: empty or repeated names")
    if not workloads:
        raise BenchmarkError("no workloads given; shipped: " + ", ".join(workload_names()))
    heatmap = _heatmap_methods(heatmap, next(iter(workloads.values())))
    planned = {}
    for i, (name, config) in enumerate(workloads.items()):  # The heatmap: first workload only.
        request = (optimizers, trials, seeds, studies, ruleset, () if i else heatmap)
        planned[name] = _plan_workload(name, config, *request)
    return Plan(planned, optimizers, trials, seeds, heatmap, studies, ruleset)


def _heatmap_methods(heatmap: bool | str | Sequence[str], first) -> tuple[str, ...]:
    """The heatmap's methods (see `plan_benchmark`); () where the first workload has no grid."""
    grid = first.get("benchmark", {}).get("heatmap")
    if heatmap is False or grid is None:
        return ()
    methods = grid.get("methods", DEFAULT_HEATMAP) if heatmap is True else heatmap
    return compare.parse_names(
        methods, tuple(HEATMAP_METHODS), field="heatmap", hint="allowed", error=BenchmarkError
    )


def _plan_workload(
    name, config, optimizers, num_trials, num_seeds, num_studies, ruleset, heatmap
) -> Workload:
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
    tuning_seeds = range(bench.tuning_seed, bench.tuning_seed + num_studies)
    start = bench.final_seed_start
    if set(tuning_seeds) & set(range(start, start + num_seeds)):
        raise BenchmarkError(
            f"workload {name!r}: the studies' tuning seeds {bench.tuning_seed}.."
            f"{tuning_seeds[-1]} reach the final seeds from {start}: fewer studies, or a "
            "larger benchmark.final_seed_start"
        )
    spaces, trials = {}, {}
    for optimizer in optimizers:
        try:
            space = tuning.SearchSpace.from_config(optimizer, bench.search_spaces[optimizer])
            trials[optimizer] = _study_trials(space, num_trials, num_studies, ruleset, bench)
        except ValueError as e:
            raise BenchmarkError(f"workload {name!r}: {e}") from None
        spaces[optimizer] = space
    budget = num_steps * RULESETS[ruleset]
    workload = Workload(name, config, spaces, trials, steps_per_epoch, num_steps, budget)
    # Studies differ in seeds and values only: study 0 checks the tune stages' structure.
    checks = {f"{o}/tune": tune_config(workload, o) for o in optimizers}
    # The final stages' settings are chosen later; their structure is checked with trial 0.
    checks |= {
        f"{o}/final": final_config(workload, o, tuning.trial_values(trials[o][0], 0), num_seeds)
        for o in optimizers
    }
    if heatmap:
        checks |= {f"heatmap/{m}": c for m, c in heatmap_configs(workload, heatmap).items()}
    for stage, stage_config in checks.items():
        try:
            train.validate_config(stage_config)
        except ConfigError as e:
            raise BenchmarkError(f"workload {name!r}, stage {stage}: {e}") from None
    return workload


def _study_trials(space, num_trials, num_studies, ruleset, bench) -> tuple[dict, ...]:
    """Each study's trials, field -> values: Halton points seeded per study (external
    tuning), or the optimizer's default setting as the one trial (self-tuning)."""
    if ruleset == "self_tuning":
        default = {k: (v,) for k, v in tuning.default_setting(space).items()}
        return (default,) * num_studies
    seeds = range(bench.halton_seed, bench.halton_seed + num_studies)
    return tuple(tuning.halton_trials(space, num_trials, seed) for seed in seeds)


def tune_dir(study: int) -> str:
    """The stage directory of `study` under `<workload>/<optimizer>/`: `tune` for study 0
    (the layout of a one-study benchmark), `tune_study<k>` for the others."""
    return "tune" if study == 0 else f"tune_study{study}"


# ---------------------------------------------------------------------------- stage configs


def _strip(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The training config of a workload: without its `benchmark` section."""
    out = ml_collections.ConfigDict(config.to_dict())
    del out.benchmark
    return out


def _stage_config(workload: Workload, optimizer: Mapping[str, Any], seeds, sweep, **fields):
    """The workload's training config with the members `seeds` x `sweep`, every optimizer
    field of `_RESET_FIELDS` reset, then `optimizer` and the dotted `fields` set."""
    optimizer = dict.fromkeys(_RESET_FIELDS) | dict(optimizer)
    fields |= {f"optimizer.{k}": v for k, v in optimizer.items()}
    return groups.with_members(_strip(workload.config), seeds=tuple(seeds), sweep=sweep, **fields)


def _search_config(workload: Workload, optimizer: str, seeds, sweep) -> ml_collections.ConfigDict:
    """A tune or final stage: `optimizer`'s space's fixed fields, on the ruleset's budget."""
    fixed = dict(workload.spaces[optimizer].fixed)
    if "warmup_fraction" in sweep:  # A tuned warmup replaces the config's warmup_steps.
        fixed["warmup_steps"] = 0
    # Self-tuning: a multiple of the workload's budget.
    budget = {"train.num_steps": workload.budget} if workload.budget != workload.num_steps else {}
    return _stage_config(workload, fixed, seeds, sweep, **budget)


def tune_config(workload: Workload, optimizer: str, study: int = 0) -> ml_collections.ConfigDict:
    """Every trial of `optimizer` in `study` on `workload` as one sweep, with the study's
    tuning seed."""
    seeds = (workload.tuning_seed(study),)
    return _search_config(workload, optimizer, seeds, workload.trials[optimizer][study])


def final_config(
    workload: Workload, optimizer: str, values: Mapping[str, float], num_seeds: int
) -> ml_collections.ConfigDict:
    """The selected setting with `num_seeds` new seeds, in one program (a one-value sweep, so
    that the hyperparameters enter exactly as in the tune stage)."""
    sweep = {k: (float(v),) for k, v in values.items()}
    return _search_config(workload, optimizer, workload.final_seeds(num_seeds), sweep)


def heatmap_configs(
    workload: Workload, methods: Sequence[str]
) -> dict[str, ml_collections.ConfigDict]:
    """method -> its learning rate x strength grid (flattened into one sweep) x seeds."""
    seeds = workload.config.benchmark.heatmap.seeds
    out = {}
    for method in methods:
        name, field = HEATMAP_METHODS[method]
        rates, strengths = workload.heatmap_axes(method)
        sweep = {
            "learning_rate": tuple(r for r in rates for _ in strengths),
            field: tuple(s for _ in rates for s in strengths),
        }
        fixed = {"name": name, "implementation": "ours"}
        out[method] = _stage_config(workload, fixed, seeds, sweep)
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
      {"workdir", "trials" (rows of trials.csv), "studies" (rows of studies.csv), "rows"
       (rows of results.csv), "score" (measure -> `algoperf.Scores`), "summary",
       "wall_time_s", "interrupted"}.
    """
    start = time.perf_counter()
    progress = progress or (lambda line: print(line, flush=True))  # Shown at once, also in logs.
    workdir = pathlib.Path(workdir)
    _check_workdir(plan, workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    run_io.write_json(workdir / PLAN_FILE, _plan_json(plan))
    trial_rows, study_rows, final_rows, stages, finals = [], [], [], [], {}
    total = len(plan.stages()) + bool(plan.heatmap)
    for k, (name, optimizer) in enumerate(plan.stages(), start=1):
        workload = plan.workloads[name]
        where = f"[{k}/{total}] {name} {optimizer}"
        path = workdir / name / optimizer
        rows = []
        for study in range(plan.studies):
            config = tune_config(workload, optimizer, study)
            tuned = _run_stage(config, path / tune_dir(study), where, progress)
            stages.append(_stage_row(name, optimizer, tune_dir(study), tuned))
            if tuned.interrupted:
                return _interrupted(workdir, start)
            rows += _trial_rows(workload, optimizer, study, tuned)
            study_rows.append(_study_row(workload, optimizer, study, tuned))
            reached = sum(math.isfinite(r["steps_to_target"]) for r in rows[-plan.trials :])
            progress(
                f"{where}: study {study}: {reached}/{plan.trials} trials reached "
                f"{workload.metric} >= {workload.target}; its time "
                f"{study_rows[-1]['steps_to_target']:g} steps"
            )
        best = _select_final(rows)
        trial_rows += rows
        chosen = tuning.trial_values(
            workload.trials[optimizer][rows[best]["study"]], rows[best]["trial"]
        )
        progress(
            f"{where}: selected study {rows[best]['study']} trial {rows[best]['trial']}: "
            f"{_setting(chosen)}"
        )
        config = final_config(workload, optimizer, chosen, plan.seeds)
        final = _run_stage(config, path / "final", where, progress)
        stages.append(_stage_row(name, optimizer, "final", final))
        if final.interrupted:
            return _interrupted(workdir, start)
        final_rows += _final_rows(workload, optimizer, chosen, final)
        finals[name, optimizer] = final
    heatmap = None
    if plan.heatmap:
        workload = next(iter(plan.workloads.values()))
        heatmap = {}
        for method, config in heatmap_configs(workload, plan.heatmap).items():
            where = f"[{total}/{total}] {workload.name} heatmap {method}"
            result = _run_stage(config, workdir / "heatmap" / method, where, progress)
            stages.append(_stage_row(workload.name, method, "heatmap", result))
            if result.interrupted:
                return _interrupted(workdir, start)
            heatmap[method] = result
    wall = time.perf_counter() - start
    scores = benchmark_report.algoperf_scores(plan, study_rows)
    tables = {"trials.csv": trial_rows, "studies.csv": study_rows, "stages.csv": stages}
    summary = benchmark_report.write_report(
        plan, workdir, final_rows, tables, scores, finals, heatmap, wall
    )
    score = benchmark_report.scores_json(scores)
    run_io.write_json(workdir / PLAN_FILE, _plan_json(plan) | {"score": score})
    return {
        "workdir": workdir,
        "trials": trial_rows,
        "studies": study_rows,
        "rows": final_rows,
        "score": scores,
        "summary": summary,
        "wall_time_s": wall,
        "interrupted": False,
    }


def _check_workdir(plan: Plan, workdir: pathlib.Path) -> None:
    """Before anything is written: not a training run, no benchmark whose report would lose
    workloads, optimizers or settings (`report.check_request`: the message names the flags it
    holds), and no finished tune stage that a different request (another budget or space)
    would overwrite."""
    if (workdir / run_io.CHECKPOINT_DIR).exists():
        raise run_io.ConfigMismatchError(
            f"{workdir} holds a training run; give the benchmark its own --workdir"
        )
    if (workdir / PLAN_FILE).is_file():
        saved = json.loads((workdir / PLAN_FILE).read_text())
        report.check_request(workdir, _request(saved), _request(_plan_json(plan)))
    for name, optimizer in plan.stages():
        for study in range(plan.studies):
            config = tune_config(plan.workloads[name], optimizer, study)
            run_io.check_resumable(workdir / name / optimizer / tune_dir(study), config)


# The flags benchmark.json records (its "score" is the report's); one written before
# --studies and --ruleset existed ran their defaults.
_REQUEST_FLAGS = ("optimizers", "trials", "seeds", "studies", "ruleset", "heatmap", "workloads")
_EARLIER_DEFAULTS = {"studies": DEFAULT_STUDIES, "ruleset": DEFAULT_RULESET}


def _request(plan: Mapping[str, Any]) -> dict[str, list]:
    """The flags of the benchmark that `plan` (benchmark.json) records."""
    flags = {k: plan.get(k, _EARLIER_DEFAULTS.get(k)) for k in _REQUEST_FLAGS}
    if isinstance(flags["heatmap"], bool):  # Written before the heatmap had methods.
        flags["heatmap"] = list(DEFAULT_HEATMAP) if flags["heatmap"] else []
    return {f"--{k}": list(v) if isinstance(v, list | dict) else [v] for k, v in flags.items()}


def _run_stage(config, path: pathlib.Path, where: str, progress) -> train.RunsResult:
    kind = path.name if path.parent.name != "heatmap" else "grid"
    members = len(train.read_members(config).names())  # Values x seeds: one implementation.
    if (path / train.RESULT_FILE).is_file():
        progress(f"{where}: {kind} finished earlier; its saved result is used")
    else:
        progress(f"{where}: {kind}, {members} runs in one program ...")
    result = train.run(config, path)
    if not result.interrupted:
        progress(f"{where}: {kind} done ({result.wall_time_s:.1f} s, {result.num_steps} steps)")
    return result


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


def _seconds_per_step(result: train.RunsResult) -> float:
    """Each member's share of its program's training seconds per step."""
    return 1.0 / (result.steps_per_sec * len(result.rows))  # NaN: no step was ever timed.


def _trial_rows(workload: Workload, optimizer: str, study: int, result: train.RunsResult):
    """trials.csv rows of one study (validation only)."""
    reach = _reach(workload, result)[:, 0]  # [V] (one seed)
    trials = workload.trials[optimizer][study]
    per_step = _seconds_per_step(result)
    return [
        {
            "workload": workload.name,
            "optimizer": optimizer,
            "study": study,
            "trial": i,
            **tuning.trial_values(trials, i),
            "seed": member["seed"],
            "steps_to_target": float(reach[i]),
            "seconds_to_target": float(reach[i]) * per_step,
            "seconds_per_step": per_step,
            "validation_accuracy": member["validation_accuracy"],
            "validation_loss": member["validation_loss"],
            "finite": member["finite"],
        }
        for i, member in enumerate(result.rows)
    ]


def _study_row(workload: Workload, optimizer: str, study: int, result: train.RunsResult):
    """studies.csv row: the trial AlgoPerf's rule selects in the study (`algoperf.select_trial`:
    the first to reach the target; none: inf) and its time in steps and seconds."""
    steps, values = _curve(workload, result)  # [T], [V, 1, T]
    target = algoperf.Target(workload.metric, workload.target, workload.higher_is_better)
    index, time_ = algoperf.select_trial([(steps, v[0]) for v in values], target)
    return {
        "workload": workload.name,
        "optimizer": optimizer,
        "study": study,
        "trials": len(values),
        "selected_trial": "" if index is None else index,
        "steps_to_target": time_,
        "seconds_to_target": time_ * _seconds_per_step(result),
    }


def _select_final(rows: Sequence[Mapping[str, Any]]) -> int:
    """The row of the setting the final stage reruns, over the trials of every study
    (`tuning.select_trial`); marks it in the rows' `selected` column."""
    best = tuning.select_trial(
        [r["steps_to_target"] for r in rows],
        [r["validation_accuracy"] for r in rows],
        [r["validation_loss"] for r in rows],
    )
    for i, row in enumerate(rows):
        row["selected"] = i == best
    return best


def _final_rows(workload, optimizer, chosen, result: train.RunsResult) -> list[dict]:
    """results.csv rows: one per seed of the final stage."""
    reach = _reach(workload, result)[0]  # [S]
    per_step = _seconds_per_step(result)
    return [
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
            "runs_in_program": len(result.rows),
        }
        for s, member in enumerate(result.rows)
    ]


def _setting(values: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.3g}" for k, v in values.items())


def _plan_json(plan: Plan) -> dict[str, Any]:
    return {
        "optimizers": list(plan.optimizers),
        "trials": plan.trials,
        "seeds": plan.seeds,
        "studies": plan.studies,
        "ruleset": plan.ruleset,
        "heatmap": list(plan.heatmap),
        "workloads": {
            name: {
                "target": f"{w.metric} {'>=' if w.higher_is_better else '<='} {w.target}",
                "spaces": {o: s.describe() for o, s in w.spaces.items()},
                "trials": w.trials,
            }
            for name, w in plan.workloads.items()
        },
    }
