r"""Throughput of our Adam's train step vs the same step with `optax.adam`.

Builds the default config's CNN train step twice, identical except for
`optimizer.implementation` ("ours" -> `adamlab.optim.create`, "optax" -> `optax.adam` via
`adamlab.optim.reference`), on one device with the "jit" engine: one `engine.train` call per
step (a chunk of K = 1 batch, as `adamlab train` runs a single run on CPU; `--steps_per_dispatch`
times K steps per call too, one loop as `engines` runs it), the members donated, as in
training. Batches are synthetic in-memory arrays already on the device, so the timing is the
step alone and the script needs neither TensorFlow nor the datasets: it runs as is on a GPU
machine. The two steps are timed interleaved in one process (the order alternates every
repeat), each repeat `--steps` steps ended by `block_until_ready`, after a warm-up that
compiles both; medians over `--repeats`.

    python benchmarks/train_step.py                       # the digits CNN, 8x8x1, batch 64
    python benchmarks/train_step.py --image_shape 28,28,1 --batch_size 128   # MNIST-sized
    python benchmarks/train_step.py --steps 2 --repeats 1 --warmup 1 --out /tmp/t.json  # smoke
    python benchmarks/train_step.py --steps_per_dispatch 1,10,100   # steps/s vs steps per call
    python benchmarks/train_step.py --steps_per_dispatch 100 --padded_chunks   # traced loop

`--padded_chunks` builds the engines with `padded_chunks=True` whatever the platform: K steps
per call as a loop of traced length (what CPU and TPU engines run, one program for every
length) instead of the default on a GPU, a `lax.scan` of known length. On a GPU the first
waits for the device at every step; the two JSONs side by side say what that costs there.

Prints and writes JSON (`--out`, default benchmarks/results/train_step_<backend>.json) with
per-step medians, the ratio ours/optax (1.0 = same speed; > 1 = ours slower) and the machine.
Since the one training loop, the engine's step also keeps each member's divergence bookkeeping
(`adamlab.training.members`), so absolute times include it; the ratio compares like with like.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import jax
import numpy as np

from adamlab import config_dict, models
from adamlab.training import engines, members, optimizers

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="digits", help="a shipped config's name or a path")
    parser.add_argument("--image_shape", default="8,8,1", help="H,W,C of the synthetic images")
    parser.add_argument("--num_classes", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=None, help="default: the config's")
    parser.add_argument("--steps", type=int, default=50, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls per implementation")
    parser.add_argument(
        "--steps_per_dispatch",
        default="1",
        help="steps per engine.train call, comma-separated (e.g. 1,10,100): each is timed",
    )
    parser.add_argument(
        "--padded_chunks",
        action="store_true",
        help="engines with padded_chunks=True: a loop of traced length (default: the platform's)",
    )
    parser.add_argument("--out", default=None)
    return parser.parse_args()


def build_step(
    config,
    implementation: str,
    image_shape,
    num_classes: int,
    total_steps: int,
    conv_matmul: bool = False,
    padded_chunks: bool | None = None,
):
    """(engine, members) of the config's model with our or optax's optimizer on one device;
    `conv_matmul`: convolutions as slices + one matmul (`adamlab.training.cpu_conv`);
    `padded_chunks`: `engines.Engine`'s (None: the platform's default)."""
    config = config.copy_and_resolve_references()
    config.optimizer.implementation = implementation
    tx, schedule = optimizers.make_optimizer(config.optimizer, total_steps)
    model = models.create_model(config.model, num_classes)
    engine = engines.Engine("jit", model, (tx,), schedule, num_classes,
                            devices=jax.devices()[:1], conv_matmul=conv_matmul,
                            padded_chunks=padded_chunks)  # fmt: skip
    carry = members.initial_members(
        model, (tx,), image_shape, (config.seed,), {}, (lambda values: tx,)
    )
    return engine, engine.put_members(carry)


def _time(engine, carry, chunks, steps: int):
    start = time.perf_counter()
    for i in range(steps):
        carry, metrics = engine.train(carry, chunks[i % len(chunks)])
    jax.block_until_ready((carry, metrics))
    return carry, (time.perf_counter() - start) / steps


def synthetic_chunk(engine, rng, image_shape, batch_size: int, num_classes: int, steps: int = 1):
    """A chunk of `steps` random batches ([K, B, ...]: images, then labels, drawn from `rng`)
    on the engine's devices, as the loop hands `engine.train` its batches."""
    return engine.put_chunk(
        {
            "image": rng.standard_normal((steps, batch_size, *image_shape), np.float32),
            "label": rng.integers(0, num_classes, (steps, batch_size), dtype=np.int32),
        }
    )


def machine() -> dict:
    cpu = platform.processor()
    if pathlib.Path("/proc/cpuinfo").is_file():
        names = [ln for ln in open("/proc/cpuinfo") if ln.startswith("model name")]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "python": platform.python_version(),
        "tensorflow_loaded": "tensorflow" in sys.modules,  # False: the step needs no TF.
    }


def time_implementations(config, args, image_shape, batch_size: int, steps_per_call: int):
    """Per-step seconds of ours and optax's step, `steps_per_call` steps per `engine.train`
    call (a chunk of K batches, one loop when K > 1), interleaved: {impl: [per repeat]}."""
    rng = np.random.default_rng(0)
    calls = max(1, -(-args.steps // steps_per_call))  # Each repeat: at least --steps steps.
    # The schedule spans the whole benchmark (at least past the warmup, for tiny smoke runs).
    total = (args.warmup + calls * args.repeats) * steps_per_call
    total = max(total, (config.optimizer.warmup_steps or 0) + 1)
    # On CPU a chunk of several steps runs convolutions as matmuls, as the loop does then.
    conv_matmul = steps_per_call > 1 and jax.default_backend() == "cpu"
    padded = True if args.padded_chunks else None
    runs = {
        impl: build_step(config, impl, image_shape, args.num_classes, total, conv_matmul, padded)
        for impl in ("ours", "optax")
    }
    engine = next(iter(runs.values()))[0]
    chunks = [  # [K, B, ...]
        synthetic_chunk(engine, rng, image_shape, batch_size, args.num_classes, steps_per_call)
        for _ in range(4)
    ]
    states = {}
    for impl, (engine, carry) in runs.items():
        states[impl], _ = _time(engine, carry, chunks, args.warmup)  # compiles
    times = {impl: [] for impl in runs}
    for r in range(args.repeats):
        for impl in list(runs)[:: 1 if r % 2 == 0 else -1]:
            states[impl], seconds = _time(runs[impl][0], states[impl], chunks, calls)
            times[impl].append(seconds / steps_per_call)
    return times


def main() -> None:
    args = _parse_args()
    config = config_dict.load_config(args.config)
    batch_size = args.batch_size or config.train.batch_size
    image_shape = tuple(int(v) for v in args.image_shape.split(","))
    dispatches = [int(k) for k in args.steps_per_dispatch.split(",")]
    by_dispatch = {}
    for k in dispatches:
        times = time_implementations(config, args, image_shape, batch_size, k)
        median = {impl: statistics.median(t) for impl, t in times.items()}
        by_dispatch[k] = {
            "median_step_ms": {impl: 1e3 * t for impl, t in median.items()},
            "steps_per_sec": {impl: 1.0 / t for impl, t in median.items()},
            "ratio_ours_over_optax": median["ours"] / median["optax"],
            "median_paired_ratio": statistics.median(
                o / x for o, x in zip(times["ours"], times["optax"], strict=True)
            ),
        }
        print(f"{k} steps per call: {json.dumps(by_dispatch[k])}", flush=True)
    first = by_dispatch[dispatches[0]]
    result = {
        "benchmark": "train_step",
        "config": os.path.relpath(config_dict.resolve_config_path(args.config).resolve(), ROOT),
        "optimizer": config.optimizer.name,
        "model": config.model.name,
        "image_shape": image_shape,
        "batch_size": batch_size,
        "steps_per_repeat": args.steps,
        "repeats": args.repeats,
        "steps_per_call": dispatches[0],
        "padded_chunks": args.padded_chunks
        or jax.default_backend() in engines.PADDED_CHUNK_PLATFORMS,
        **first,  # The first --steps_per_dispatch's figures (1 by default: as before).
        "machine": machine(),
    }
    if len(dispatches) > 1:
        result["by_steps_per_call"] = {str(k): v for k, v in by_dispatch.items()}
    write_result(result, args.out, "train_step")


def write_result(result: dict, out: str | None, name: str) -> None:
    """Prints `result` and writes it as JSON to `out` (default results/<name>_<backend>.json)."""
    default = ROOT / "benchmarks" / "results" / f"{name}_{jax.default_backend()}.json"
    out = pathlib.Path(out or default)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
