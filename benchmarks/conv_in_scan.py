r"""Why the engine computes convolutions as matmuls on CPU: a conv train step inside `lax.scan`
against the same step jitted alone, with `nn.Conv` and with `cpu_conv.conv_as_matmul`.

XLA:CPU runs a convolution inside a loop body far slower than in a plain jitted program
(jax-ml/jax#12868). The engine (`adamlab.training.engines`) trains `train.steps_per_dispatch`
> 1 steps per call as one `lax.scan`, so on CPU it intercepts plain convolutions and computes
them as shifted slices and one matmul (`adamlab.training.cpu_conv`). This measures the
digits CNN's train step (configs/digits.py: our Adam, batch 64) four ways, side by side in one
process, interleaved: {plain conv, conv as matmul} x {one jitted call per step, `--steps`
steps in one scan}. Milliseconds per step, medians over `--repeats`.

The step is `steps.make_train_step`'s (the bare step, without the engine's member bookkeeping),
as in the committed result.

    python benchmarks/conv_in_scan.py --out benchmarks/results/conv_in_scan_cpu.json
    python benchmarks/conv_in_scan.py --steps 2 --repeats 1          # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import time

import jax
import numpy as np

from adamlab import config_dict
from adamlab.training import cpu_conv, experiment
from adamlab.training.steps import make_train_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=pathlib.Path, help="write the results as JSON here")
    args = parser.parse_args()

    config = config_dict.load_config("digits")
    built = experiment.build_experiment(config)
    state = experiment.initial_members(built).states[0]  # One run: a plain TrainState.
    rng = np.random.default_rng(0)
    size = config.train.batch_size
    batches = {
        "image": rng.random((args.steps, size, 8, 8, 1), np.float32),
        "label": rng.integers(0, 10, (args.steps, size)).astype(np.int32),
    }
    first = jax.tree.map(lambda x: x[0], batches)
    step = make_train_step(built.model, built.txs[0], built.schedule)

    def per_call(fn):
        fn = jax.jit(fn)

        def run(s):
            for _ in range(args.steps):
                s, metrics = fn(s, first)
            return metrics

        return run

    def in_scan(fn):
        scan = jax.jit(lambda s, xs: jax.lax.scan(fn, s, xs)[1])
        return lambda s: scan(s, batches)

    steps = {"plain": step, "matmul": cpu_conv.intercepted(step, True)}
    runners = {
        f"{conv}, {mode}": wrap(fn)
        for conv, fn in steps.items()
        for mode, wrap in (("per call", per_call), ("in scan", in_scan))
    }
    for run in runners.values():  # Compile and warm up.
        jax.block_until_ready(run(state))
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for repeat in range(args.repeats):
        order = list(runners) if repeat % 2 == 0 else list(reversed(runners))
        for name in order:
            start = time.perf_counter()
            jax.block_until_ready(runners[name](state))
            seconds[name].append(time.perf_counter() - start)
    ms = {name: 1e3 * statistics.median(v) / args.steps for name, v in seconds.items()}
    result = {
        "ms_per_step": {k: round(v, 3) for k, v in ms.items()},
        "plain_in_scan_over_plain_per_call": round(ms["plain, in scan"] / ms["plain, per call"], 1),
        "matmul_in_scan_over_plain_per_call": round(
            ms["matmul, in scan"] / ms["plain, per call"], 2
        ),
        "model": "configs/digits.py CNN (32-64 conv, 128 dense), our Adam, batch 64",
        "steps": args.steps,
        "repeats": args.repeats,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads",
        "jax": f"{jax.__version__} on {jax.devices()[0].platform}",
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
