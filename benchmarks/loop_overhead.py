r"""What the one training loop costs on top of the bare step: `adamlab train` on configs/digits.py
vs the same number of bare `engine.train` calls.

- loop: `adamlab.training.train.run(config, workdir)`, the run `adamlab train --config digits`
  does (a fresh workdir each repeat): batches drawn from tf.data and stacked per call, metrics
  fetched and written every `log_every_steps`, validation every `eval_every_steps` and at every
  checkpoint, checkpoints every `checkpoint_every_steps` and at the end, then test.
- bare: the same experiment (`build_experiment`: model, optimizer, engine, members, one step per
  call on CPU), the same calls (`train.chunk_lengths`: the same chunk lengths, padded to the
  longest where the loop pads them, so the same compiled programs, compiled ahead of the first
  call as the loop does), on a few training batches drawn beforehand and already on the device; no
  logging, evaluation or checkpoints.

Steps per second, each side's compiling left out: the loop's `steps / (wall - setup - compile -
evaluate - ...)` (`train.OVERHEAD_PHASES`), i.e. every chunk's data, dispatch and logging, but
not validation, checkpoints or test; the bare side's steps over its calls. Also end to end (all
steps over the wall time) and the loop's own `RunsResult.steps_per_sec` (its last log interval).
`bare_over_loop` > 1: the loop is slower. Phases in seconds (`train.PHASES`): the loop's
`RunsResult.phases` as it reports them, and the bare side's (setup: build, initial members,
batches; compile: the first program, ahead of the first call; train: the calls; evaluate: none).
Medians over `--repeats`, the two sides alternating (the first loop run also pays one-off
imports, orbax and TensorBoard's writer, in its setup: the median discounts it); the 1-minute
load average is recorded, since the CPU may be shared.

    python benchmarks/loop_overhead.py --out benchmarks/results/loop_overhead_cpu.json
    python benchmarks/loop_overhead.py --num_steps 30 --repeats 1      # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import tempfile
import time

import jax
import numpy as np

from adamlab import config_dict, data
from adamlab.training import engines, experiment, train


def _chunk_lengths(config, num_steps: int, steps_per_dispatch: int) -> list[int]:
    """The loop's calls: lengths ending at every log, eval and checkpoint point."""
    t = config.train
    every = (t.log_every_steps, t.eval_every_steps, t.checkpoint_every_steps)
    return train.chunk_lengths(0, num_steps, every, steps_per_dispatch)


def loop(config, lengths: list[int]) -> dict:
    """One `train.run` in a fresh workdir; `lengths`: its calls (`_chunk_lengths`)."""
    with tempfile.TemporaryDirectory() as workdir:
        result = train.run(config, workdir)
    phases = result.phases
    # The loop compiles ahead of its first call (phase "compile"): every step is timed.
    train_s = result.wall_time_s - sum(phases[k] for k in train.OVERHEAD_PHASES)
    return {
        "steps_per_s": result.num_steps / train_s,
        "end_to_end_steps_per_s": result.num_steps / result.wall_time_s,
        "reported_steps_per_s": result.steps_per_sec,
        "wall_s": result.wall_time_s,
        "train_s_excluding_compile": train_s,
        "phases_s": dict(phases),
        "test_accuracy": result.finals[0]["test_accuracy"],
    }


def bare(config, distinct_batches: int) -> dict:
    """The loop's engine calls, nothing else, on batches already on the device."""
    start = time.perf_counter()
    built = experiment.build_experiment(config)
    engine = built.engine
    carry = engine.put_members(experiment.initial_members(built))
    lengths = _chunk_lengths(config, built.num_steps, built.steps_per_dispatch)
    # Untimed: load TensorFlow and the dataset once, so no side's first repeat pays for it.
    next(data.train_batches(config.data, global_batch_size=config.train.batch_size, seed=0))
    stream = data.train_batches(
        config.data, global_batch_size=config.train.batch_size, seed=config.seed
    )
    stack = lambda k: jax.tree.map(lambda *xs: np.stack(xs), *[next(stream) for _ in range(k)])
    # Laid out as the loop lays them out: padded to the longest where the engine pads chunks
    # (one program), else exactly K rows (one program per length).
    rows = (lambda k: max(lengths)) if engine.padded_chunks else (lambda k: k)
    chunks = {  # A few chunks of each length.
        k: [
            engine.put_chunk(engines.pad_rows(stack(k), rows(k)), k)
            for _ in range(distinct_batches)
        ]
        for k in set(lengths)
    }
    jax.block_until_ready(chunks)
    phases = {"setup": time.perf_counter() - start, "compile": 0.0, "train": 0.0, "evaluate": 0.0}
    tick = time.perf_counter()
    for k in {rows(k): k for k in lengths}.values():  # One chunk per program, as the loop does.
        engine.compile_train(carry, chunks[k][0])
    phases["compile"] = time.perf_counter() - tick
    used = dict.fromkeys(chunks, 0)
    tick = time.perf_counter()
    for k in lengths:
        carry, metrics = engine.train(carry, chunks[k][used[k] % distinct_batches])
        used[k] += 1
    jax.block_until_ready((carry, metrics))
    phases["train"] = time.perf_counter() - tick
    wall = time.perf_counter() - start
    return {
        "steps_per_s": built.num_steps / phases["train"],
        "end_to_end_steps_per_s": built.num_steps / wall,
        "wall_s": wall,
        "phases_s": phases,
    }


def _median(runs: list[dict]) -> dict:
    out = {}
    for key, value in runs[0].items():
        if isinstance(value, dict):
            out[key] = {k: statistics.median(r[key][k] for r in runs) for k in value}
        else:
            out[key] = statistics.median(r[key] for r in runs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="digits", help="a shipped config's name or a path")
    parser.add_argument("--num_steps", type=int, default=None, help="default: the config's")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--distinct_batches", type=int, default=4,
                        help="bare side: chunks of each length on the device, cycled")  # fmt: skip
    parser.add_argument("--out", type=pathlib.Path, help="write the results as JSON here")
    args = parser.parse_args()
    config = config_dict.load_config(args.config)
    config.train.num_steps = args.num_steps
    config.train.progress_bar = False  # Shown on a terminal only, anyway.
    built = experiment.build_experiment(config)
    lengths = _chunk_lengths(config, built.num_steps, built.steps_per_dispatch)
    runs: dict[str, list[dict]] = {"loop": [], "bare": []}
    loads = [os.getloadavg()[0]]
    for repeat in range(args.repeats):
        order = ("loop", "bare") if repeat % 2 == 0 else ("bare", "loop")
        for name in order:
            run = loop(config, lengths) if name == "loop" else bare(config, args.distinct_batches)
            runs[name].append(run)
            loads.append(os.getloadavg()[0])
            r = runs[name][-1]
            parts = ", ".join(f"{k} {v:.2f} s" for k, v in r["phases_s"].items())
            print(f"repeat {repeat} {name}: {r['steps_per_s']:.0f} steps/s ({parts})", flush=True)
    median = {name: _median(r) for name, r in runs.items()}
    result = {
        "benchmark": "loop_overhead",
        "config": os.path.relpath(
            config_dict.resolve_config_path(args.config).resolve(),
            pathlib.Path(__file__).resolve().parents[1],
        ),  # fmt: skip
        "num_steps": built.num_steps,
        "steps_per_dispatch": built.steps_per_dispatch,
        "calls": len(lengths),
        "median": median,
        "bare_over_loop": median["bare"]["steps_per_s"] / median["loop"]["steps_per_s"],
        "bare_over_loop_end_to_end": median["bare"]["end_to_end_steps_per_s"]
        / median["loop"]["end_to_end_steps_per_s"],
        "repeats": args.repeats,
        "all": runs,
        "load_average_1min": loads,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads",
        "jax": f"{jax.__version__} on {jax.devices()[0].platform}",
    }
    print(json.dumps({k: result[k] for k in ("median", "bare_over_loop",
                                             "bare_over_loop_end_to_end")}, indent=2))  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
