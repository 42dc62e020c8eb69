r"""Benchmark: the CNN train step with glibc's default allocation and with freed memory kept.

`adamlab.runtime.keep_freed_memory` changes how the whole process allocates, so the
two settings cannot share a process: each round runs one child process per setting, in
alternating order (default first in even rounds), and each child times adamlab's default CNN
train step (`train_step.build_step`: one `engine.train` call per step, members donated, in-memory
batches) at 28x28x1 batch 128 and 8x8x1 batch 64, and counts the minor page faults per step
(`getrusage`). Medians over the rounds of each child's median; the ratio kept / default per
shape (< 1: keeping freed memory is faster). Needs neither TensorFlow nor torch.

    python benchmarks/host_memory.py                   # 5 rounds, ~5 minutes on 2 CPU cores
    python benchmarks/host_memory.py --rounds 1 --steps 2 --repeats 2 --out /tmp/h.json  # smoke

Writes JSON (default benchmarks/results/host_memory_<backend>.json) with the machine and load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.child import json_of  # noqa: E402

# (image shape, batch size, steps per timed repeat): repeats of ~0.6 s each on 2 CPU cores.
SHAPES = (((28, 28, 1), 128, 5), ((8, 8, 1), 64, 100))
SETTINGS = ("default", "kept")


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="child processes per setting")
    parser.add_argument(
        "--steps", type=int, default=None, help="steps per timed repeat (all shapes)"
    )
    parser.add_argument("--repeats", type=int, default=9, help="timed repeats per child")
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    return parser.parse_args()


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def child(setting: str, steps: int | None, repeats: int) -> dict:
    """One setting's step times (ms) and page faults per step, for each shape (in this process)."""
    from adamlab import runtime

    kept = runtime.keep_freed_memory() if setting == "kept" else False
    import jax

    from adamlab import config_dict
    from benchmarks import train_step

    config = config_dict.load_config("digits")
    rows = []
    for image_shape, batch_size, shape_steps in SHAPES:
        steps_per_repeat = steps or shape_steps
        engine, carry = train_step.build_step(config, "ours", image_shape, 10, 10_000)
        rng = np.random.default_rng(0)
        chunk = train_step.synthetic_chunk(engine, rng, image_shape, batch_size, 10)
        for _ in range(3):  # compile and warm up
            carry, metrics = engine.train(carry, chunk)
        jax.block_until_ready(carry)
        times, faults = [], []
        for _ in range(repeats):
            before, start = _minor_faults(), time.perf_counter()
            for _ in range(steps_per_repeat):
                carry, metrics = engine.train(carry, chunk)
            jax.block_until_ready((carry, metrics))
            times.append((time.perf_counter() - start) / steps_per_repeat)
            faults.append((_minor_faults() - before) / steps_per_repeat)
        rows.append(
            {
                "image_shape": image_shape,
                "batch_size": batch_size,
                "steps_per_repeat": steps_per_repeat,
                "median_step_ms": 1e3 * statistics.median(times),
                "page_faults_per_step": statistics.median(faults),
            }
        )
    return {"setting": setting, "kept": kept, "rows": rows}


def _run_child(setting: str, args: argparse.Namespace) -> dict:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    )
    argv = [sys.executable, __file__, "--child", setting, "--repeats", str(args.repeats)]
    argv += ["--steps", str(args.steps)] if args.steps else []
    return json_of(argv, env=env)


def main() -> None:
    args = _parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.repeats)))
        return
    from benchmarks import train_step

    load_before = os.getloadavg()
    results = {s: [] for s in SETTINGS}
    for r in range(args.rounds):
        for setting in SETTINGS[:: 1 if r % 2 == 0 else -1]:
            results[setting].append(_run_child(setting, args))
            rows = results[setting][-1]["rows"]
            shown = "  ".join(f"{x['median_step_ms']:.1f} ms" for x in rows)
            print(f"round {r + 1}/{args.rounds} {setting}: {shown}", flush=True)
    if not all(c["kept"] for c in results["kept"]):
        print("note: this C library is not glibc; 'kept' changed nothing", flush=True)
    shapes = []
    for i, (image_shape, batch_size, _) in enumerate(SHAPES):
        ms = {
            s: statistics.median(c["rows"][i]["median_step_ms"] for c in results[s])
            for s in SETTINGS
        }
        faults = {
            s: statistics.median(c["rows"][i]["page_faults_per_step"] for c in results[s])
            for s in SETTINGS
        }
        shapes.append(
            {
                "image_shape": image_shape,
                "batch_size": batch_size,
                "median_step_ms": ms,
                "page_faults_per_step": faults,
                "kept_over_default": ms["kept"] / ms["default"],
            }
        )
        print(
            f"train step {image_shape} batch {batch_size}: default {ms['default']:.2f} ms "
            f"({faults['default']:.0f} faults/step), kept {ms['kept']:.2f} ms "
            f"({faults['kept']:.0f}); kept/default {ms['kept'] / ms['default']:.2f}"
        )
    result = {
        "benchmark": "host_memory: train step, glibc default vs freed memory kept",
        "command": " ".join(["python benchmarks/host_memory.py", *sys.argv[1:]]),
        "rounds": args.rounds,
        "repeats": args.repeats,
        "shapes": shapes,
        "per_round": results,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "machine": train_step.machine(),
    }
    train_step.write_result(result, args.out, "host_memory")


if __name__ == "__main__":
    main()
