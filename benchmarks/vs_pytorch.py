r"""Benchmark: adamlab against PyTorch on the same CPU, in one process, interleaved.

Two parts, each timed repeat by repeat with every contender in turn (medians over repeats):

  * the optimizer step (`optim.update_and_apply`, params and state donated on the jax side)
    of Adam with 1M, 10M and 50M float32 parameters, as one array and as ~200 CNN-like
    leaves: adamlab's Adam unfused; fused (`fused=True`: the one-pass C++ kernel,
    `adamlab.optim.one_pass`); the same fused transformation as XLA's program (update, then
    apply); `optax.adam`; and `torch.optim.Adam(fused=True)` / `(foreach=True)` (grads set
    once, `step()` timed). The reference is a multi-threaded triad measured in the same run on
    the same element count, `a <- b + 3 a` (12 bytes per float32 element), by XLA (jitted,
    donated) and by torch (`torch.add(b, a, alpha=3, out=a)`); the faster of the two is the
    machine's bandwidth here. Adam moves at least 28 bytes per parameter (read p, g, m, v;
    write p, m, v), what the kernel moves; `fraction_of_triad` = (28 N / t) / triad
    bandwidth. XLA's own cost analysis of its compiled fused step gives the bytes that program
    moves (`fused_xla_bytes_per_param`: 40 on jaxlib 0.10.2, three passes, because XLA:CPU
    splits a loop fusion over threads only when it has one output) and
    `fraction_of_triad_at_xla_bytes` the bandwidth it reaches with them. `ours_fused_in_loop`
    and `optax_in_loop` are their steps 10 to a jitted call (a `fori_loop`), as inside a
    jitted train step: the per-call dispatch of ~4 arrays per leaf (~0.7 ms for 200 leaves
    here) left out.
  * the train step of adamlab's default CNN (configs/digits.py: conv 32, conv 64, dense 128,
    Adam; one `engine.train` call per step, as `adamlab train` runs on CPU, with and without
    the fused optimizer, and with the convolutions as slices + one matmul,
    `adamlab.training.cpu_conv`) against the same layers in PyTorch eager (NCHW,
    `Adam(fused=True)`, zero_grad, forward, cross-entropy, backward, step), at 28x28x1 batch
    128 and 8x8x1 batch 64, on synthetic in-memory batches. XLA:CPU flags and thread
    settings apply to a whole process: run the script once per setting (`XLA_FLAGS=...
    python benchmarks/vs_pytorch.py --skip_optimizer --out ...`); the JSON records XLA_FLAGS
    and both sides' threads.

The process keeps freed memory for reuse (`adamlab.runtime`), as the `adamlab`
command does; it applies to both sides' allocations (`--malloc default`: glibc's default). As
the command does too, XLA:CPU computes convolutions with Eigen (`adamlab.runtime`;
`--xla_convolutions ynnpack`: XLA's default, YNNPACK).

Ratios are adamlab / PyTorch (< 1: adamlab faster). The JSON (default
benchmarks/results/vs_pytorch_cpu.json) records the machine (CPU model, cores, versions,
threads) and the load average before and after: on a shared machine the absolute times move
with the load, the interleaved ratios much less.

    pip install -e '.[bench]'   # torch, the CPU wheel: optional, never a runtime dependency
    python benchmarks/vs_pytorch.py
    python benchmarks/vs_pytorch.py --sizes 1e6 --repeats 3 --train_repeats 3 --out /tmp/v.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adamlab import config_dict, optim, runtime  # noqa: E402
from adamlab.optim import native, one_pass  # noqa: E402
from benchmarks import optimizer_step, train_step  # noqa: E402
from benchmarks.torch_cnn import TorchCNN  # noqa: E402

BYTES_PER_PARAM = 28  # Adam: read p, g, m, v; write p, m, v (float32).
LOOP_STEPS = 10  # steps per jitted call of the in-loop row


def _torch_tree(tree) -> list[torch.Tensor]:
    return [torch.tensor(np.asarray(x)) for x in tree]


def _torch_adam(params, grads, **kind) -> callable:
    tensors = _torch_tree(params)
    for tensor, grad in zip(tensors, _torch_tree(grads), strict=True):
        tensor.grad = grad
    optimizer = torch.optim.Adam(tensors, lr=1e-3, **kind)
    for _ in range(3):
        optimizer.step()
    return optimizer.step


def _xla_triad(num_elements: int) -> callable:
    triad = jax.jit(lambda a, b: b + 3.0 * a, donate_argnums=0)
    state = {"a": jnp.zeros(num_elements, jnp.float32)}
    b = jnp.ones(num_elements, jnp.float32)

    def run():
        state["a"] = triad(state["a"], b)
        jax.block_until_ready(state["a"])

    run()
    return run


def _torch_triad(num_elements: int) -> callable:
    a, b = torch.zeros(num_elements), torch.ones(num_elements)
    return lambda: torch.add(b, a, alpha=3.0, out=a)


def _bytes_accessed(runner: optimizer_step._StepRunner) -> float:
    """The bytes XLA's own cost analysis counts for one compiled step of `runner`: what the
    program it chose moves (e.g. 40 per float32 parameter where it writes mu, nu and the
    parameters in three passes, each reading what it needs), against the 28 of one pass."""
    compiled = runner.step.lower(runner.params, runner.state, runner.grads).compile()
    cost = compiled.cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["bytes accessed"])


def _one_pass_ran(runner: optimizer_step._StepRunner) -> bool:
    """Whether `runner`'s compiled step calls the one-pass kernel (False where it could not
    be built here: then "fused" is XLA's program)."""
    compiled = runner.step.lower(runner.params, runner.state, runner.grads).compile()
    return native.target_name(one_pass.KERNEL) in compiled.as_text()


def _trees(sizes):
    """(layout, shapes, params, grads) for every size, as one array and as ~200 leaves."""
    for size in sizes:
        for layout in ("1 array", "200 leaves"):
            shapes = [(int(size),)] if layout == "1 array" else optimizer_step.cnn_like_shapes(size)
            params = optimizer_step.make_tree(shapes, jax.random.key(0))
            yield layout, shapes, params, optimizer_step.make_tree(shapes, jax.random.key(1))


def xla_program(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """`tx` without its one-pass step: `optim.update_and_apply` then runs XLA's program."""
    return optax.GradientTransformation(tx.init, lambda u, s, p=None: tx.update(u, s, p))


def optimizer_rows(sizes, repeats: int) -> list[dict]:
    rows = []
    for layout, shapes, params, grads in _trees(sizes):
        num_params = sum(math.prod(s) for s in shapes)
        runners = {
            name: optimizer_step._StepRunner(tx, params, grads)
            for name, tx in (
                ("ours", optim.adam(1e-3)),
                ("ours_fused", optim.adam(1e-3, fused=True)),
                ("ours_fused_xla", xla_program(optim.adam(1e-3, fused=True))),
                ("optax", optax.adam(1e-3)),
            )
        }
        # the same step, LOOP_STEPS per jitted call: what it costs inside a jitted train step,
        # without the per-call dispatch of ~4 arrays per leaf
        for name, tx in (("ours_fused", optim.adam(1e-3, fused=True)), ("optax", optax.adam(1e-3))):
            runners[f"{name}_in_loop"] = optimizer_step._StepRunner(
                tx, params, grads, inner_steps=LOOP_STEPS
            )
        runners["torch_fused"] = _torch_adam(params, grads, fused=True)
        runners["torch_foreach"] = _torch_adam(params, grads, foreach=True)
        runners["triad_xla"] = _xla_triad(num_params)
        runners["triad_torch"] = _torch_triad(num_params)
        seconds = optimizer_step.time_interleaved(runners, repeats)
        seconds["ours_fused_in_loop"] /= LOOP_STEPS
        seconds["optax_in_loop"] /= LOOP_STEPS
        one_pass = _one_pass_ran(runners["ours_fused"])
        xla_bytes = _bytes_accessed(runners["ours_fused_xla"])
        del runners
        triad = 12 * num_params / min(seconds["triad_xla"], seconds["triad_torch"])
        fused, fused_xla = seconds["ours_fused"], seconds["ours_fused_xla"]
        in_loop = seconds["ours_fused_in_loop"]
        row = {
            "num_params": num_params,
            "layout": layout,
            "num_leaves": len(shapes),
            "fused_is_one_pass_kernel": one_pass,
            "median_ms": {k: 1e3 * v for k, v in seconds.items()},
            "triad_bytes_per_s": triad,
            "fused_bytes_per_s": BYTES_PER_PARAM * num_params / fused,
            "fraction_of_triad": BYTES_PER_PARAM * num_params / fused / triad,
            "fused_over_torch_fused": fused / seconds["torch_fused"],
            "fused_over_fused_xla": fused / fused_xla,
            "fused_in_loop_over_torch_fused": in_loop / seconds["torch_fused"],
            "fraction_of_triad_in_loop": BYTES_PER_PARAM * num_params / in_loop / triad,
            "optax_over_fused": seconds["optax"] / fused,
            "optax_over_fused_in_loop": seconds["optax_in_loop"] / in_loop,
            "fused_xla_bytes_per_param": xla_bytes / num_params,
            "fraction_of_triad_at_xla_bytes": xla_bytes / fused_xla / triad,
            "fused_xla_over_torch_fused": fused_xla / seconds["torch_fused"],
            "unfused_over_torch_fused": seconds["ours"] / seconds["torch_fused"],
        }
        rows.append(row)
        ms = "  ".join(f"{k} {v:.2f}" for k, v in row["median_ms"].items())
        print(
            f"{num_params / 1e6:5.1f}M {layout:10s} {ms}  fused/torch_fused "
            f"{row['fused_over_torch_fused']:.2f} (in loop "
            f"{row['fused_in_loop_over_torch_fused']:.2f})  optax/fused "
            f"{row['optax_over_fused']:.2f} (in loop {row['optax_over_fused_in_loop']:.2f})  "
            f"triad {100 * row['fraction_of_triad']:.0f}%  (XLA's program: "
            f"{row['fused_xla_bytes_per_param']:.0f} B/param at "
            f"{100 * row['fraction_of_triad_at_xla_bytes']:.0f}%)",
            flush=True,
        )
    return rows


def packed_state(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """A candidate for `fused`, measured and rejected: `inner` on one flat buffer holding
    every leaf (the state is then one buffer per moment; float32 trees only). The gradients
    are concatenated and the update sliced back into leaves at every step."""

    def pack(tree):
        return [jnp.concatenate([x.ravel() for x in jax.tree.leaves(tree)])]

    def update_fn(updates, state, params=None):
        del params
        leaves, treedef = jax.tree.flatten(updates)
        (flat,), state = inner.update(pack(updates), state)
        offsets = np.cumsum([0] + [x.size for x in leaves])
        unpacked = [
            flat[start:stop].reshape(x.shape)
            for x, start, stop in zip(leaves, offsets[:-1], offsets[1:], strict=True)
        ]
        return jax.tree.unflatten(treedef, unpacked), state

    return optax.GradientTransformation(lambda params: inner.init(pack(params)), update_fn)


def candidate_rows(sizes, repeats: int) -> list[dict]:
    """The candidates for the fused variant side by side: unfused, fused (the one-pass kernel:
    what `fused=True` runs in `optim.update_and_apply`), fused as XLA's program (one division
    per element, per leaf), and that with the state packed in one buffer."""
    rows = []
    for layout, shapes, params, grads in _trees(sizes):
        packed = optax.chain(
            packed_state(optim.scale_by_adam(fused=True)),
            optim.scale_by_learning_rate(1e-3),
        )
        txs = {
            "unfused": optim.adam(1e-3),
            "fused": optim.adam(1e-3, fused=True),
            "fused_xla": xla_program(optim.adam(1e-3, fused=True)),
            "fused_packed": packed,
        }
        runners = {k: optimizer_step._StepRunner(tx, params, grads) for k, tx in txs.items()}
        seconds = optimizer_step.time_interleaved(runners, repeats)
        del runners
        row = {
            "num_params": sum(math.prod(s) for s in shapes),
            "layout": layout,
            "median_ms": {k: 1e3 * v for k, v in seconds.items()},
            "over_unfused": {k: v / seconds["unfused"] for k, v in seconds.items()},
        }
        rows.append(row)
        print(f"candidates {row['num_params'] / 1e6:.0f}M {layout}: {row['median_ms']}", flush=True)
    return rows


def _torch_train_step(image_shape, batch_size: int, steps: int) -> callable:
    torch.manual_seed(0)
    model = TorchCNN(image_shape)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    images = torch.randn(batch_size, image_shape[2], *image_shape[:2])
    labels = torch.randint(0, 10, (batch_size,))

    def run():
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()

    run()
    return run


def _adamlab_train_step(
    image_shape, batch_size: int, steps: int, fused: bool, conv_matmul: bool = False
) -> callable:
    config = config_dict.load_config("digits")
    config.optimizer.fused = fused
    engine, carry = train_step.build_step(
        config, "ours", image_shape, 10, 10_000, conv_matmul=conv_matmul
    )
    chunk = train_step.synthetic_chunk(
        engine, np.random.default_rng(0), image_shape, batch_size, 10
    )
    state = {"carry": carry}

    def run():
        for _ in range(steps):
            state["carry"], metrics = engine.train(state["carry"], chunk)
        jax.block_until_ready((state["carry"], metrics))

    run()
    return run


def train_rows(shapes_and_batches, steps: int, repeats: int) -> list[dict]:
    rows = []
    for image_shape, batch_size in shapes_and_batches:
        runners = {
            "adamlab": _adamlab_train_step(image_shape, batch_size, steps, fused=False),
            "adamlab_fused": _adamlab_train_step(image_shape, batch_size, steps, fused=True),
            "adamlab_conv_matmul": _adamlab_train_step(
                image_shape, batch_size, steps, fused=False, conv_matmul=True
            ),
            "torch_eager_fused_adam": _torch_train_step(image_shape, batch_size, steps),
        }
        timed = optimizer_step.time_interleaved(runners, repeats)
        seconds = {k: v / steps for k, v in timed.items()}
        row = {
            "image_shape": image_shape,
            "batch_size": batch_size,
            "steps_per_repeat": steps,
            "median_step_ms": {k: 1e3 * v for k, v in seconds.items()},
            "adamlab_over_torch": seconds["adamlab"] / seconds["torch_eager_fused_adam"],
            "adamlab_fused_over_torch": seconds["adamlab_fused"]
            / seconds["torch_eager_fused_adam"],
            "adamlab_conv_matmul_over_torch": seconds["adamlab_conv_matmul"]
            / seconds["torch_eager_fused_adam"],
        }
        rows.append(row)
        ms = "  ".join(f"{k} {v:.2f}" for k, v in row["median_step_ms"].items())
        print(f"train step {image_shape} batch {batch_size}: {ms} ms", flush=True)
    return rows


def machine() -> dict:
    return {
        **train_step.machine(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "optax": optax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1e6,1e7,5e7")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--train_steps", type=int, default=10, help="steps per timed repeat")
    parser.add_argument("--train_repeats", type=int, default=11)
    parser.add_argument("--skip_train", action="store_true")
    parser.add_argument("--skip_optimizer", action="store_true", help="only the train step")
    parser.add_argument(
        "--candidates", action="store_true", help="only the fused candidates (no torch rows)"
    )
    parser.add_argument(
        "--malloc",
        choices=("kept", "default"),
        default="kept",
        help="kept: freed memory kept for reuse, as the adamlab command runs "
        "(adamlab.runtime; it applies to torch's allocations too); "
        "default: glibc's default allocation",
    )
    parser.add_argument(
        "--xla_convolutions",
        choices=("eigen", "ynnpack"),
        default="eigen",
        help="eigen: XLA:CPU's convolutions on Eigen, as the adamlab command runs "
        "(adamlab.runtime); ynnpack: XLA's default",
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/vs_pytorch_cpu.json"))
    args = parser.parse_args()
    eigen = runtime.use_eigen_convolutions() if args.xla_convolutions == "eigen" else False
    kept = runtime.keep_freed_memory() if args.malloc == "kept" else False
    load_before = os.getloadavg()
    started = time.time()
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    report = {
        "benchmark": "vs_pytorch",
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(),
        "keep_freed_memory": kept,
        "eigen_convolutions": eigen,
        "load_average_before": load_before,
    }
    if args.candidates:
        report["candidates"] = candidate_rows(sizes, args.repeats)
    elif not args.skip_optimizer:
        report["optimizer_step"] = optimizer_rows(sizes, args.repeats)
    if not (args.skip_train or args.candidates):
        cases = [((28, 28, 1), 128), ((8, 8, 1), 64)]
        report["train_step"] = train_rows(cases, args.train_steps, args.train_repeats)
    report["load_average_after"] = os.getloadavg()
    report["wall_s"] = time.time() - started
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"load average {load_before} -> {report['load_average_after']}; wrote {out}")


if __name__ == "__main__":
    main()
