"""Benchmark: a tune stage of `adamlab benchmark` (N Halton trials in ONE program) against the
same N trials trained one by one, as N `adamlab train` runs.

    python benchmarks/benchmark_trials.py                     # 4 trials of Adam on digits_cnn
    python benchmarks/benchmark_trials.py --trials 4 --optimizer adam \
        --out benchmarks/results/benchmark_trials_cpu.json

Both sides train the same trials (the first `--trials` points of the workload's Halton sequence
for `--optimizer`, the tuning seed, the workload's full length) through the one loop,
`adamlab.training.train.run`, in the same process, alternating, `--repeats` times:

- vectorized: the benchmark's tune stage, `benchmark.tune_config`: every trial a value of one
  `runs.sweep`, one compiled program;
- one by one: each trial's values written into the optimizer section (no sweep), one run per
  trial: what a user gets running the trials by hand, with the loop's defaults for a single run
  on CPU (one step per call, plain convolutions; jax-ml/jax#12868).

Reported: wall times (set-up, compilation, data, evaluation and checkpoints included), their
ratio, each side's phases, the largest difference of the final validation accuracies (the same
trials must reach the same accuracy, to float32 rounding: on CPU the vectorized program computes
convolutions as matmuls), and the machine's load average, since the CPU is shared. The process
keeps freed memory for reuse, as the `adamlab` command does (`adamlab.runtime`).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import platform
import statistics
import tempfile
import time

import jax

from adamlab import config_dict, runtime
from adamlab.experiments import benchmark, tuning
from adamlab.training import train


def _tune_config(workload: str, optimizer: str, trials: int):
    config = config_dict.load_config(benchmark.WORKLOAD_PREFIX + workload)
    config.train.progress_bar = False
    plan = benchmark.plan_benchmark(
        {workload: config}, (optimizer,), trials=trials, seeds=1, heatmap=False
    )
    return plan.workloads[workload]


def vectorized(workload, optimizer: str) -> tuple[float, dict, list[float]]:
    config = benchmark.tune_config(workload, optimizer)
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        result = train.run(config, workdir)
        wall = time.perf_counter() - start
    return wall, dict(result.phases), [r["validation_accuracy"] for r in result.rows]


def one_by_one(workload, optimizer: str, trials: int) -> tuple[float, dict, list[float]]:
    phases, accuracies = collections.Counter(), []
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        for i in range(trials):
            config = benchmark.tune_config(workload, optimizer)
            config.runs.sweep = {}
            for field, value in tuning.trial_values(workload.trials[optimizer][0], i).items():
                config.optimizer[field] = value
            result = train.run(config, pathlib.Path(root) / f"trial{i}")
            phases.update(result.phases)
            accuracies.append(result.rows[0]["validation_accuracy"])
        wall = time.perf_counter() - start
    return wall, dict(phases), accuracies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", default="digits_cnn")
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default=None, help="Write the results as JSON here.")
    args = parser.parse_args()
    eigen = runtime.use_eigen_convolutions()  # As the adamlab command runs.
    kept = runtime.keep_freed_memory()  # As the adamlab command runs; both sides alike.
    workload = _tune_config(args.workload, args.optimizer, args.trials)
    walls = {"vectorized": [], "one_by_one": []}
    phases, accuracy_gap = {}, 0.0
    loads = [os.getloadavg()[0]]
    for _ in range(args.repeats):
        wall_v, phases["vectorized"], acc_v = vectorized(workload, args.optimizer)
        wall_s, phases["one_by_one"], acc_s = one_by_one(workload, args.optimizer, args.trials)
        walls["vectorized"].append(wall_v)
        walls["one_by_one"].append(wall_s)
        accuracy_gap = max(accuracy_gap, *(abs(a - b) for a, b in zip(acc_v, acc_s, strict=True)))
        loads.append(os.getloadavg()[0])
    medians = {k: statistics.median(v) for k, v in walls.items()}
    out = {
        "workload": args.workload,
        "optimizer": args.optimizer,
        "trials": args.trials,
        "steps_per_trial": workload.num_steps,
        "repeats": args.repeats,
        "wall_s": walls,
        "median_wall_s": medians,
        "one_by_one_over_vectorized": medians["one_by_one"] / medians["vectorized"],
        "phases_s_last_repeat": phases,
        "max_validation_accuracy_difference": accuracy_gap,
        "load_average_1min": loads,
        "keep_freed_memory": kept,
        "eigen_convolutions": eigen,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU threads",
        "jax": f"{jax.__version__} on {jax.devices()[0].platform}",
    }
    print(json.dumps(out, indent=2))
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
