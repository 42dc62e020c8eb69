r"""Overhead of per-layer diagnostics (`diagnostics.layer_stats_every_steps` = N) on training.

The loop computes per-layer statistics only in the last step of a chunk that ends at a
diagnostics point, with a second compiled variant of the step (`Engine.train(...,
layer_stats=True)`); every other step is the plain step. So N steps with diagnostics are N-1
plain steps and one logged step, and the overhead at N is

    (time of N steps with one logged) / (time of N plain steps) - 1.

Both are timed here on the config's model and optimizer, one device, "jit" engine, synthetic
in-memory batches (no TensorFlow), plain and logged calls interleaved (order alternating),
medians over `--repeats` (single calls: robust on a shared, loaded machine):

- dispatch "1": one call per step (K = 1, as `adamlab train` runs a single run on CPU): the
  overhead at N is (logged call - plain call) / (N x plain call);
- dispatch "N": one call of N steps (a `lax.scan`, as on GPU or for a grid of members): the
  logged chunk / the plain chunk - 1.

    python benchmarks/layer_stats_overhead.py                 # digits CNN + Adam, N = 100
    python benchmarks/layer_stats_overhead.py --every 10      # logged 10x as often
    python benchmarks/layer_stats_overhead.py --every 4 --repeats 3 --out /tmp/o.json  # smoke

Writes JSON (`--out`, default benchmarks/results/layer_stats_overhead_<backend>.json).
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import jax
import numpy as np

from adamlab import config_dict, models
from adamlab.training import engines, experiment, members, optimizers

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from train_step import machine, synthetic_chunk, write_result  # noqa: E402  (a sibling script, not a package)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="digits", help="a shipped config's name or a path")
    parser.add_argument("--every", type=int, default=100, help="N, steps per logged step")
    parser.add_argument("--repeats", type=int, default=41)
    parser.add_argument("--out", default=None)
    return parser.parse_args()


def build(config, every: int, total_steps: int, conv_matmul: bool):
    """(engine, members) with the layer statistics of `config` compiled in."""
    config = config.copy_and_resolve_references()
    config.diagnostics.layer_stats_every_steps = every
    tx, schedule = optimizers.make_optimizer(config.optimizer, total_steps)
    model = models.create_model(config.model, 10)
    stats = experiment.layer_stats_for(config, experiment.read_members(config))
    engine = engines.Engine(
        "jit",
        model,
        (tx,),
        schedule,
        10,
        devices=jax.devices()[:1],
        layer_stats=stats,
        conv_matmul=conv_matmul,
    )
    image_shape = (8, 8, 1)
    carry = members.initial_members(model, (tx,), image_shape, (config.seed,), {}, (lambda v: tx,))
    return engine, engine.put_members(carry)


def _call(engine, carry, chunk, logged: bool):
    """One call, waited for; (carry, seconds)."""
    start = time.perf_counter()
    carry, metrics = engine.train(carry, chunk, layer_stats=logged)
    jax.block_until_ready((carry, metrics))
    return carry, time.perf_counter() - start


def main() -> None:
    args = _parse_args()
    config = config_dict.load_config(args.config)
    n, batch = args.every, config.train.batch_size
    rng = np.random.default_rng(0)
    total = 10 * n * (args.repeats + 2)
    # As the loop on CPU: convolutions as matmuls inside a scan (K > 1), plain at K = 1.
    on_cpu = jax.default_backend() == "cpu"
    result = {"every": n, "batch_size": batch, "model": config.model.name}
    for name, k in (("1", 1), ("N", n)):
        engine, carry = build(config, n, total, conv_matmul=on_cpu and k > 1)
        chunk = synthetic_chunk(engine, rng, (8, 8, 1), batch, 10, steps=k)
        for logged in (False, True):  # Compile both variants.
            carry, _ = _call(engine, carry, chunk, logged)
        times = {False: [], True: []}
        for r in range(args.repeats):
            for logged in (False, True)[:: 1 if r % 2 == 0 else -1]:
                carry, seconds = _call(engine, carry, chunk, logged)
                times[logged].append(seconds)
        plain, logged = statistics.median(times[False]), statistics.median(times[True])
        # K = 1: N steps are N - 1 plain calls and one logged call; K = N: one call either way.
        extra = (logged - plain) / (n * plain) if k == 1 else logged / plain - 1
        result[f"dispatch_{name}"] = {
            "steps_per_call": k,
            "plain_call_ms": 1e3 * plain,
            "logged_call_ms": 1e3 * logged,
            "overhead_at_every": extra,
        }
    result["machine"] = machine()
    write_result(result, args.out, "layer_stats_overhead")


if __name__ == "__main__":
    main()
