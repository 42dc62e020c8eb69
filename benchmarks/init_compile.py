r"""Benchmark: compiling a run's init program on CPU, at XLA's default and at LLVM level 1.

`adamlab.training.train_state` compiles the model's init (`model.init`: the initializers'
random bits and inverse-erf, most of a cold run's setup) with
``xla_backend_optimization_level=1`` on CPU. This times that compile against the default one,
side by side in one process, alternating (the default first in even repeats), for every
distinct model the shipped configs build (float32 and bfloat16 computation), and checks that
both programs give the same bits for four seeds. The persistent compilation cache is off:
every compile is a cold one. Medians over the repeats; the ratio level 1 / default.

    python benchmarks/init_compile.py                     # 3 repeats, ~2 minutes on 2 CPU cores
    python benchmarks/init_compile.py --repeats 1 --models digits --out /tmp/i.json  # smoke

Writes JSON (default benchmarks/results/init_compile_cpu.json) with the machine and load.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adamlab import config_dict, models  # noqa: E402
from adamlab.training import train_state  # noqa: E402
from benchmarks import train_step  # noqa: E402

IMAGE_SHAPES = {
    "digits": (8, 8, 1),
    "mnist": (28, 28, 1),
    "fashion_mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
}
OPTIONS = {"default": None, "level_1": {"xla_backend_optimization_level": 1}}


def shipped_models(only: str | None = None) -> list[tuple[str, dict, tuple[int, ...]]]:
    """(first config naming it + dtype, model fields, image shape) per distinct model, of the
    dataset `only` or of all (tests/test_models.py checks the same list's bits)."""
    seen = {}
    for name in config_dict.shipped_configs():
        config = config_dict.load_config(name)
        if only and config.data.name != only:
            continue
        for dtype in ("float32", "bfloat16"):
            fields = config.model.to_dict() | {"dtype": dtype}
            key = (json.dumps(fields, sort_keys=True), config.data.name)
            seen.setdefault(key, (f"{name}/{dtype}", fields, IMAGE_SHAPES[config.data.name]))
    return list(seen.values())


def compile_seconds(model, dummy, options) -> tuple[float, object]:
    """Seconds to compile the init program with `options` (lowered beforehand), and it;
    jax's in-memory caches cleared first, so that it compiles (the same program again would
    be found there)."""
    jax.clear_caches()
    lowered = jax.jit(train_state._init, static_argnums=0).lower(model, jax.random.key(0), dummy)
    tick = time.perf_counter()
    compiled = lowered.compile(options)
    return time.perf_counter() - tick, compiled


def same_bits(programs: dict, dummy, seeds=(0, 1, 2, 3)) -> bool:
    for seed in seeds:
        outputs = [jax.tree.leaves(p(jax.random.key(seed), dummy)) for p in programs.values()]
        for a, b in zip(*outputs, strict=True):
            if not np.array_equal(np.asarray(a), np.asarray(b)):
                return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default=None, help="only the models of this dataset")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/init_compile_cpu.json"))
    args = parser.parse_args()
    jax.config.update("jax_enable_compilation_cache", False)
    load_before = os.getloadavg()
    rows = []
    for name, fields, image_shape in shipped_models(args.models):
        model = models.create_model(fields, 10)
        dummy = jnp.zeros((1, *image_shape), jnp.float32)
        seconds = {k: [] for k in OPTIONS}
        programs = {}
        for repeat in range(args.repeats):
            order = list(OPTIONS) if repeat % 2 == 0 else list(reversed(OPTIONS))
            for setting in order:
                s, programs[setting] = compile_seconds(model, dummy, OPTIONS[setting])
                seconds[setting].append(s)
        median = {k: statistics.median(v) for k, v in seconds.items()}
        row = {
            "model": name,
            "image_shape": list(image_shape),
            "seconds": seconds,
            "median_s": median,
            "level_1_over_default": median["level_1"] / median["default"],
            "same_bits": same_bits(programs, dummy),
        }
        rows.append(row)
        print(
            f"{name:40s} default {median['default']:.2f} s  level 1 {median['level_1']:.2f} s"
            f"  ratio {row['level_1_over_default']:.2f}  same bits {row['same_bits']}",
            flush=True,
        )
    out = {
        "command": " ".join(["python", *sys.argv]),
        "repeats": args.repeats,
        "rows": rows,
        "median_ratio": statistics.median(r["level_1_over_default"] for r in rows),
        "all_same_bits": all(r["same_bits"] for r in rows),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "machine": train_step.machine(),
    }
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"median ratio {out['median_ratio']:.2f}; all same bits {out['all_same_bits']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
