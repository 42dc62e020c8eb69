"""Benchmark: a learning-rate sweep as one vmapped program vs the same runs one after another.

    python benchmarks/sweep.py                       # 8 learning rates x 2 seeds, digits CNN
    python benchmarks/sweep.py --steps 480 --repeats 1 --out benchmarks/results/sweep_cpu.json
    python benchmarks/sweep.py --steps 40 --rates 2 --seeds 1 --repeats 1   # smoke run

Both sides train the same 16 runs (configs/digits.py: CNN 32-64-128, batch 64, warmup-cosine;
learning rates log-spaced 1e-4..1e-1, seeds 0 and 1, `--steps` steps each) through the one
training loop, `adamlab.training.train.run`, in the same process, alternating, `--repeats`
times:

- vectorized: ONE `train.run` with `runs.sweep.learning_rate` x `runs.seeds`: one compiled
  program, the runs on leading [values, seeds] axes (optax.inject_hyperparams holds each run's
  learning rate);
- sequential: one `train.run` per (learning rate, seed), no sweep: 16 programs, each compiled
  for its own learning rate.

Everything else is the same on both sides, so the ratio is what vectorizing buys: the same
`train.steps_per_dispatch` (`--steps_per_dispatch`: steps per `lax.scan` call; chunks also end
at every log point), the same convolutions (`--conv`, below), the same cadence: train metrics
every `min(20, steps)` steps, validation and one checkpoint (all members) at the end only, then
test, each in a fresh workdir.

`--conv plain` runs both sides with plain `nn.Conv` instead of `cpu_conv.conv_as_matmul` (which
the engine uses on CPU for a grid or more than one step per call): what that rewrite is worth
to each. The benchmark forces the choice on both sides by wrapping `cpu_conv.intercepted`.

Reported: medians of the wall time (compilation, data, evaluation and checkpoints included) and
of the training steps per second of all runs together (run-steps/s: every step, over the wall
time less the loop's other phases, compiling among them, `train.OVERHEAD_PHASES`; summed over
the 16 calls on the sequential side), and their ratios; the medians of `RunsResult.phases` as
the loop reports them (`train.PHASES`; summed over the 16 calls on the sequential side), which
say where the wall time goes. Also the machine's load average, since the CPU is shared.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import os
import pathlib
import platform
import statistics
import tempfile
import time
from unittest import mock

import jax
import numpy as np

from adamlab import config_dict
from adamlab.training import cpu_conv, train


def _config(steps: int, steps_per_dispatch: int):
    config = config_dict.load_config("digits")
    config.train.num_steps = steps
    config.train.eval_every_steps = steps  # Validate once, at the end, on both sides.
    config.train.checkpoint_every_steps = steps  # Save once, at the end, on both sides.
    config.train.log_every_steps = min(config.train.log_every_steps, steps)
    config.train.steps_per_dispatch = steps_per_dispatch
    config.train.progress_bar = False
    return config


@contextlib.contextmanager
def _convolutions(matmul: bool):
    """The engine's convolutions as matmuls (or plain) on both sides, whatever it would pick."""
    original = cpu_conv.intercepted
    with mock.patch.object(cpu_conv, "intercepted", lambda fn, _: original(fn, matmul)):
        yield


def _train_seconds_and_steps(result: train.RunsResult) -> tuple[float, int]:
    """Seconds and steps of training after compilation: the wall time less the loop's other
    phases (compiling among them, timed ahead of each program's first call), and every step."""
    phases = result.phases
    seconds = result.wall_time_s - sum(phases[k] for k in train.OVERHEAD_PHASES)
    return seconds, result.num_steps


def _per_second(steps: int, seconds: float) -> float:
    return steps / seconds if steps else math.nan


def vectorized(config, rates, seeds) -> tuple[float, float, dict[str, float]]:
    config = config.copy_and_resolve_references()
    config.runs.seeds = seeds
    config.runs.sweep.learning_rate = rates
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        result = train.run(config, workdir)
        wall = time.perf_counter() - start
    seconds, steps = _train_seconds_and_steps(result)
    return wall, _per_second(len(rates) * len(seeds) * steps, seconds), dict(result.phases)


def sequential(config, rates, seeds) -> tuple[float, float, dict[str, float]]:
    phases, seconds, run_steps = collections.Counter(), 0.0, 0
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        for rate in rates:
            for seed in seeds:
                cfg = config.copy_and_resolve_references()
                cfg.optimizer.learning_rate = float(rate)
                cfg.seed = seed
                result = train.run(cfg, pathlib.Path(root) / f"lr{rate:.4g}_seed{seed}")
                phases.update(result.phases)
                run_seconds, steps = _train_seconds_and_steps(result)
                seconds, run_steps = seconds + run_seconds, run_steps + steps
        wall = time.perf_counter() - start
    return wall, _per_second(run_steps, seconds), dict(phases)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps per run")
    parser.add_argument("--rates", type=int, default=8, help="learning rates, 1e-4..1e-1")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps_per_dispatch", type=int, default=100,
                        help="train.steps_per_dispatch of both sides")  # fmt: skip
    parser.add_argument("--conv", choices=("matmul", "plain"), default="matmul",
                        help="convolutions of both sides (see the docstring)")  # fmt: skip
    parser.add_argument("--out", type=pathlib.Path, help="write the results as JSON here")
    args = parser.parse_args()
    config = _config(args.steps, args.steps_per_dispatch)
    rates = tuple(float(r) for r in np.geomspace(1e-4, 1e-1, args.rates))
    seeds = tuple(range(args.seeds))
    times: dict[str, list[tuple[float, float, dict[str, float]]]] = {
        "vectorized": [],
        "sequential": [],
    }
    loads = [os.getloadavg()[0]]
    with _convolutions(args.conv == "matmul"):
        for repeat in range(args.repeats):
            for name, fn in (("vectorized", vectorized), ("sequential", sequential)):
                times[name].append(fn(config, rates, seeds))
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
        "steps_per_dispatch": args.steps_per_dispatch,
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
