"""Benchmark: our optimizer step vs its optax twin, and against the machine's memory bandwidth.

One optimizer step (update + apply_updates) is a memory-bound elementwise pass: at minimum it
reads params, grads, m and v and writes params, m and v, i.e. 28 bytes per float32 parameter
(for Adam; AMSGrad's extra nu_max makes it 36). We time ours and optax's step side by side in
one process, jitted with donated params and state, interleaved repeat by repeat, in two modes:

  * "call": one jitted call per step, as a bare optimizer loop would do; for trees of many
    leaves this is dominated by the host dispatching ~4 buffers per leaf;
  * "loop": `--inner` steps per jitted call (lax.fori_loop), as when the update runs inside a
    jitted train step: the device-side cost of the update itself.

and report:

  * ratio = median(ours) / median(optax)   (target <= 1.00 at every size),
  * effective bandwidth = bytes moved / median time, against a triad bandwidth
    (a = b + s * c, 12 bytes per float32 element) measured in the same run on the same device
    and in the same mode (target >= 80% at the large sizes),

for trees of 1M, 10M and 50M parameters, as one array and as ~200 CNN-like leaves. It also
records whether ours and optax lower to the same XLA program (`adamlab.optim.program`), in
which case any measured ratio other than 1 is timing noise.

Usage:
    python benchmarks/optimizer_step.py [--sizes 1e6,1e7,5e7] [--optimizers adam,adamw]
        [--repeats 20] [--fused] [--out benchmarks/results/optimizer_step_<backend>.json]

`--fused` times each optimizer's fused variant as "ours" (where one exists), against optax.

Runs without TensorFlow (only jax, optax and adamlab.optim), so it also runs on bare GPU
images.
"""

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adamlab import optim
from adamlab.optim.program import step_program

BYTES_PER_PARAM = {"adam": 28, "adamw": 28, "nadam": 28, "amsgrad": 36}


def cnn_like_shapes(num_params: int, num_leaves: int = 200) -> list[tuple[int, ...]]:
    """~`num_leaves` conv kernels, biases, norm scales and a dense head totalling ~num_params.

    A ResNet-like stack of blocks (3x3 conv kernel, bias, norm scale, norm bias: 4 leaves each)
    whose width is solved for so the total matches `num_params` within a few percent.
    """
    blocks = (num_leaves - 2) // 4
    width = max(1, int(math.sqrt(num_params / (9 * blocks))))
    shapes: list[tuple[int, ...]] = []
    for _ in range(blocks):
        shapes += [(3, 3, width, width), (width,), (width,), (width,)]
    used = sum(math.prod(s) for s in shapes)
    head = max(1, (num_params - used) // (width + 1))
    shapes += [(width, head), (head,)]
    return shapes


def make_tree(shapes, key):
    keys = jax.random.split(key, len(shapes))
    return [jax.random.normal(k, s, jnp.float32) * 0.01 for k, s in zip(keys, shapes, strict=True)]


def make_step(tx, inner_steps: int = 1):
    """`inner_steps` optimizer steps per call; params and state are donated. A step is
    `optim.update_and_apply`: update + apply, or one kernel pass where `tx` has one.

    The loop's trip count is a traced argument, so XLA cannot unroll it and fuse consecutive
    steps into one pass over memory (it does so for a constant count on CPU): each step moves
    its full 28 bytes per parameter, as inside a train step.
    """

    def step(params, state, grads):
        return optim.update_and_apply(tx, grads, state, params)

    if inner_steps == 1:
        return jax.jit(step, donate_argnums=(0, 1))

    def loop(params, state, grads, num_steps):
        body = lambda _, carry: step(*carry, grads)  # noqa: E731
        return jax.lax.fori_loop(0, num_steps, body, (params, state))

    looped = jax.jit(loop, donate_argnums=(0, 1))
    num_steps = jnp.asarray(inner_steps, jnp.int32)
    return lambda params, state, grads: looped(params, state, grads, num_steps)


def time_interleaved(runners: dict, repeats: int) -> dict[str, float]:
    """Median seconds per call of each runner, alternating runners within each repeat."""
    samples = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in samples.items()}


class _StepRunner:
    """Holds the (donated) params and state of one optimizer between timed calls."""

    def __init__(self, tx, params, grads, inner_steps=1):
        self.step = make_step(tx, inner_steps)
        self.params = jax.tree.map(jnp.copy, params)
        self.state = tx.init(self.params)
        self.grads = grads
        for _ in range(3):  # compile and warm up
            self()

    def __call__(self):
        self.params, self.state = self.step(self.params, self.state, self.grads)
        jax.block_until_ready(self.params)


def device_triad_bandwidth(num_elements: int, inner_steps: int, repeats: int) -> dict:
    """Bytes/s of the triad a <- b + s * a on the default jax device, in both modes.

    float32: reads a and b, writes a, 12 bytes per element. In "loop" mode `inner_steps`
    dependent triads run inside one jitted fori_loop, like the optimizer's loop mode, so the
    two are compared under the same dispatch conditions.
    """
    b = jnp.ones(num_elements, jnp.float32)
    # Both modes read and overwrite the donated buffer `a`, as the optimizer step does with its
    # state. (a = b + s * c, with `a` unread, let jit prune `a` and its donation: every call
    # then wrote a freshly allocated buffer, which on CPU costs page faults, ~4x the time.)
    call = jax.jit(lambda a, b: b + 3.0 * a, donate_argnums=0)
    # A traced trip count, as in `make_step`: no unrolling, no fusion across iterations.
    loop = jax.jit(
        lambda a, b, n: jax.lax.fori_loop(0, n, lambda _, a: b + 3.0 * a, a),
        donate_argnums=0,
    )
    num_steps = jnp.asarray(inner_steps, jnp.int32)
    state = {"a": jnp.zeros(num_elements, jnp.float32)}

    def runner(fn, *args):
        def run():
            state["a"] = fn(state["a"], *args)
            jax.block_until_ready(state["a"])

        run()  # compile and warm up
        return run

    runners = {"call": runner(call, b), "loop": runner(loop, b, num_steps)}
    seconds = time_interleaved(runners, repeats)
    return {
        "call": 12 * num_elements / seconds["call"],
        "loop": 12 * num_elements * inner_steps / seconds["loop"],
    }


def numpy_triad_bandwidth(num_elements: int, repeats: int) -> float:
    """Bytes/s of the STREAM triad in numpy on the host, into a preallocated array.

    Two passes (a = 3 c; a += b): 4 + 4 + 4 + 4 + 4 = 20 bytes per float32 element.
    """
    a = np.empty(num_elements, np.float32)
    b = np.ones(num_elements, np.float32)
    c = np.ones(num_elements, np.float32)

    def triad():
        np.multiply(c, np.float32(3.0), out=a)
        np.add(a, b, out=a)

    triad()
    seconds = time_interleaved({"triad": triad}, repeats)
    return 20 * num_elements / seconds["triad"]


def machine_description() -> dict:
    device = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)),
        "device_count": jax.device_count(),
        "cpu": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        "optax": optax.__version__,
    }


def run(sizes, optimizers, repeats, inner_steps, fused=False):
    """Every row; `fused`: ours is each optimizer's fused variant (`optim.create(name,
    fused=True)`, where its table entry has one; on CPU `make_step` runs Adam(W)/Nadam(W)'s as
    the one-pass kernel), so ours/optax is then a speedup, not a parity check."""
    results = []
    largest = int(max(sizes))
    triad = device_triad_bandwidth(largest, inner_steps, repeats)
    bandwidth = {
        "device_triad_bytes_per_s": triad,
        "numpy_triad_bytes_per_s": numpy_triad_bandwidth(largest, repeats),
    }
    print(
        f"device triad: {triad['call'] / 1e9:.1f} GB/s (call), {triad['loop'] / 1e9:.1f} GB/s"
        f" (loop); numpy triad: {bandwidth['numpy_triad_bytes_per_s'] / 1e9:.1f} GB/s"
    )
    header = (
        f"{'optimizer':9s} {'mode':4s} {'layout':10s} {'params':>7s} {'ours ms':>9s}"
        f" {'optax ms':>9s}"
        f" {'ours/optax':>10s} {'GB/s':>7s} {'% triad':>7s} program"
    )
    print(header)
    for num_params in sizes:
        num_params = int(num_params)
        for layout, shapes in (
            ("1 array", [(num_params,)]),
            ("200 leaves", cnn_like_shapes(num_params)),
        ):
            params = make_tree(shapes, jax.random.key(0))
            grads = make_tree(shapes, jax.random.key(1))
            actual = sum(math.prod(s) for s in shapes)
            for name in optimizers:
                hparams = {"learning_rate": 1e-3}
                name_fused = fused and bool(optim.registry.entry(name).fused)
                ours_tx = optim.create(name, fused=name_fused, **hparams)
                optax_tx = optim.reference(name, **hparams)
                same_program = step_program(ours_tx, params) == step_program(optax_tx, params)
                for mode, inner in (("call", 1), ("loop", inner_steps)):
                    runners = {
                        "ours": _StepRunner(ours_tx, params, grads, inner),
                        "optax": _StepRunner(optax_tx, params, grads, inner),
                    }
                    seconds = {k: v / inner for k, v in time_interleaved(runners, repeats).items()}
                    del runners
                    bytes_moved = BYTES_PER_PARAM.get(name, 28) * actual
                    row = {
                        "optimizer": name,
                        "mode": mode,
                        "steps_per_call": inner,
                        "layout": layout,
                        "num_leaves": len(shapes),
                        "num_params": actual,
                        "fused": name_fused,
                        "same_xla_program": same_program,
                        "ours_ms": 1e3 * seconds["ours"],
                        "optax_ms": 1e3 * seconds["optax"],
                        "ratio_ours_over_optax": seconds["ours"] / seconds["optax"],
                        "ours_bytes_per_s": bytes_moved / seconds["ours"],
                        "fraction_of_triad": bytes_moved / seconds["ours"] / triad[mode],
                    }
                    results.append(row)
                    print(
                        f"{name:9s} {mode:4s} {layout:10s} {actual / 1e6:6.1f}M"
                        f" {row['ours_ms']:9.3f} {row['optax_ms']:9.3f}"
                        f" {row['ratio_ours_over_optax']:10.3f}"
                        f" {row['ours_bytes_per_s'] / 1e9:7.1f}"
                        f" {100 * row['fraction_of_triad']:6.1f}%"
                        f" {'same HLO' if same_program else 'HLO differs'}"
                    )
    return {
        "machine": machine_description(),
        "fused": fused,
        "repeats": repeats,
        "bytes_per_param": BYTES_PER_PARAM,
        **bandwidth,
        "results": results,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1e6,1e7,5e7")
    parser.add_argument("--optimizers", default="adam,adamw")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--inner", type=int, default=10, help="steps per call in loop mode")
    parser.add_argument("--fused", action="store_true", help="ours: the fused variants")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    sizes = [float(s) for s in args.sizes.split(",")]
    report = run(sizes, args.optimizers.split(","), args.repeats, args.inner, args.fused)
    out = Path(args.out or f"benchmarks/results/optimizer_step_{jax.default_backend()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
