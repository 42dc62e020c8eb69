r"""Why evaluation keeps XLA's convolutions on CPU: the engine's eval step with plain `nn.Conv`
against the same step with `cpu_conv.conv_as_matmul`, for 1 to 16 vectorized members.

The engine computes the train step's convolutions as slices and one matmul on CPU whenever it
scans several steps per call or vectorizes several runs (`adamlab.training.cpu_conv`: inside a
loop body XLA:CPU's convolutions are far slower, `benchmarks/conv_in_scan.py`). Evaluation
runs in no loop; this measures whether the rewrite still pays there: `Engine.evaluate` on one
eval batch of MNIST's shape (the config's CNN, synthetic images), members vectorized as a sweep
vectorizes them, both variants interleaved in one process. Milliseconds per batch, medians over
`--repeats`. The process runs as the `adamlab` command does (freed memory kept, XLA:CPU's
convolutions on Eigen).

    python benchmarks/eval_convolutions.py --out benchmarks/results/eval_convolutions_cpu.json
    python benchmarks/eval_convolutions.py --members 1,2 --batch_size 100 --repeats 1  # smoke
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

from adamlab import runtime

runtime.keep_freed_memory()
runtime.use_eigen_convolutions()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from adamlab import config_dict, models  # noqa: E402
from adamlab.training import cpu_conv, members  # noqa: E402
from adamlab.training.steps import make_eval_step  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.train_step import machine  # noqa: E402


def _evaluator(model, num_classes: int, grid: tuple[int, ...], conv_matmul: bool):
    """The engine's eval program for `grid` members, with or without the matmul rewrite."""
    step = cpu_conv.intercepted(make_eval_step(model, num_classes), conv_matmul)
    return jax.jit(members.vectorize(step, grid, batch_axis=None))


def time_members(config, count: int, batch: dict, repeats: int) -> dict[str, float]:
    """Median ms per eval batch of `count` members, plain convolutions and as matmuls."""
    model = models.create_model(config.model, 10)
    tx = optax.adam(1e-3)
    grid = () if count == 1 else (1, count)
    values = {"learning_rate": np.asarray([1e-3], np.float32)} if grid else {}
    seeds = tuple(range(count))
    state = members.initial_members(model, [tx], batch["image"].shape[1:], seeds, values,
                                    [lambda _: tx]).states[0]  # fmt: skip
    runners = {name: _evaluator(model, 10, grid, name == "conv_matmul")
               for name in ("plain", "conv_matmul")}  # fmt: skip
    for run in runners.values():
        jax.block_until_ready(run(state, batch))  # compiles
    samples = {name: [] for name in runners}
    for r in range(repeats):
        for name in list(runners)[:: 1 if r % 2 == 0 else -1]:
            start = time.perf_counter()
            jax.block_until_ready(runners[name](state, batch))
            samples[name].append(1e3 * (time.perf_counter() - start))
    return {name: statistics.median(t) for name, t in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="mnist")
    parser.add_argument("--image_shape", default="28,28,1")
    parser.add_argument("--batch_size", type=int, default=1000)
    parser.add_argument("--members", default="1,4,8,16", help="member counts, comma-separated")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=pathlib.Path)
    args = parser.parse_args()
    config = config_dict.load_config(args.config)
    shape = tuple(int(v) for v in args.image_shape.split(","))
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.standard_normal((args.batch_size, *shape), np.float32),
        "label": rng.integers(0, 10, args.batch_size, dtype=np.int32),
    }
    rows = []
    for count in (int(m) for m in args.members.split(",")):
        ms = time_members(config, count, batch, args.repeats)
        rows.append({"members": count, "median_ms": ms,
                     "plain_over_conv_matmul": ms["plain"] / ms["conv_matmul"]})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    result = {
        "benchmark": "eval_convolutions",
        "config": args.config,
        "model": config.model.name,
        "image_shape": shape,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "rows": rows,
        "machine": machine(),
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
