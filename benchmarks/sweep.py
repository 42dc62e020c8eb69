"""Benchmark: a learning-rate sweep as one vmapped program vs the same runs one after another.

    python benchmarks/sweep.py                       # 8 learning rates x 2 seeds, digits CNN
    python benchmarks/sweep.py --steps 480 --repeats 1 --out benchmarks/results/sweep_cpu.json

Both sides train the same 16 runs (configs/digits.py: CNN 32-64-128, batch 64, warmup-cosine;
learning rates log-spaced 1e-4..1e-1, seeds 0 and 1, `--steps` steps each) and evaluate them on
validation and test at the end, in the same process, alternating, `--repeats` times:

- vectorized: one `multirun.train_runs` call with the sweep: one compiled program, the runs on
  leading [values, seeds] axes (optax.inject_hyperparams holds each run's learning rate);
- sequential: `multirun.train_runs` once per (learning rate, seed), no sweep: 16 programs,
  each compiled for its own learning rate, with the same scan over steps and the same
  convolutions as the vectorized side, and without the per-step dispatch, checkpoints and
  logging of 16 `adamlab train` runs.

`--conv plain` runs both sides with plain `nn.Conv` instead of `multirun.conv_as_matmul` (the
default on CPU): what that rewrite is worth to each.

Reported: medians of the wall time (compilation, data and evaluation included) and of the
training steps per second of all runs together (run-steps/s, compilation excluded), and their
ratios; the medians of `RunsResult.phases` (setup, compile, train, evaluate; summed over the 16
calls on the sequential side), which say where the wall time goes. Also the machine's load
average, since the CPU is shared.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import platform
import statistics
import time

import jax
import numpy as np

from adamlab import config_dict
from adamlab.training import multirun

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(steps: int):
    config = config_dict.load_config_file(ROOT / "configs" / "digits.py")
    config.train.num_steps = steps
    config.train.eval_every_steps = steps  # Evaluate once, at the end, on both sides.
    config.train.log_every_steps = min(config.train.log_every_steps, steps)
    config.train.progress_bar = False
    return config


def vectorized(config, rates, seeds, conv_matmul) -> tuple[float, float, dict[str, float]]:
    start = time.perf_counter()
    result = multirun.train_runs(
        config,
        seeds=seeds,
        implementations=("ours",),
        sweep={"learning_rate": rates},
        conv_matmul=conv_matmul,
    )
    wall = time.perf_counter() - start
    return wall, result.steps_per_sec * len(rates) * len(seeds), result.phases


def sequential(config, rates, seeds, conv_matmul) -> tuple[float, float, dict[str, float]]:
    start, phases = time.perf_counter(), collections.Counter()
    for rate in rates:
        for seed in seeds:
            cfg = config.copy_and_resolve_references()
            cfg.optimizer.learning_rate = float(rate)
            result = multirun.train_runs(
                cfg, seeds=(seed,), implementations=("ours",), conv_matmul=conv_matmul
            )
            phases.update(result.phases)
    wall = time.perf_counter() - start
    runs = len(rates) * len(seeds)
    return wall, runs * config.train.num_steps / phases["train"], dict(phases)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps per run")
    parser.add_argument("--rates", type=int, default=8, help="learning rates, 1e-4..1e-1")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--conv", choices=("matmul", "plain"), default="matmul",
                        help="convolutions of both sides (see the docstring)")  # fmt: skip
    parser.add_argument("--out", type=pathlib.Path, help="write the results as JSON here")
    args = parser.parse_args()
    config = _config(args.steps)
    rates = tuple(float(r) for r in np.geomspace(1e-4, 1e-1, args.rates))
    seeds = tuple(range(args.seeds))
    times: dict[str, list[tuple[float, float, dict[str, float]]]] = {
        "vectorized": [],
        "sequential": [],
    }
    loads = [os.getloadavg()[0]]
    for repeat in range(args.repeats):
        for name, fn in (("vectorized", vectorized), ("sequential", sequential)):
            times[name].append(fn(config, rates, seeds, args.conv == "matmul"))
            loads.append(os.getloadavg()[0])
            wall, speed, phases = times[name][-1]
            parts = ", ".join(f"{k} {v:.1f} s" for k, v in phases.items())
            print(f"repeat {repeat} {name}: {wall:.1f} s ({parts}), {speed:.0f} run-steps/s")
    median = {
        name: {
            "wall_s": statistics.median(w for w, _, _ in runs),
            "run_steps_per_s": statistics.median(s for _, s, _ in runs),
            "phases_s": {k: statistics.median(p[k] for _, _, p in runs) for k in runs[0][2]},
        }
        for name, runs in times.items()
    }
    result = {
        "benchmark": "sweep",
        "runs": f"{args.rates} learning rates x {args.seeds} seeds, {args.steps} steps each",
        "model": "configs/digits.py CNN (32-64 conv, 128 dense), batch 64",
        "convolutions": args.conv,
        "median": median,
        "speedup_wall": median["sequential"]["wall_s"] / median["vectorized"]["wall_s"],
        "speedup_steps": median["vectorized"]["run_steps_per_s"]
        / median["sequential"]["run_steps_per_s"],
        "repeats": args.repeats,
        "all": times,
        "load_average_1min": loads,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads",
        "jax": f"{jax.__version__} on {jax.devices()[0].platform}",
    }
    print(json.dumps({k: result[k] for k in ("median", "speedup_wall", "speedup_steps")}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
