r"""Optimizer memory per device: replicated vs ZeRO-1, float32 vs bfloat16 first moment; bytes of
optimizer state per parameter for every optimizer; and the accuracy cost of mixed precision on
digits.

`--mode memory` (default): for each model (the digits CNN, the MNIST CNN, CIFAR-10's ResNet-20)
builds the real engines ("jit" and "pmap") over all devices, places the state and runs one train
step on a synthetic batch (so the bytes are those of the state the step returns, after XLA chose
its layouts), then counts the bytes of the parameters and of the optimizer state stored on
device 0 (`adamlab.zero.bytes_on_device`). Configurations: replicated vs
`train.shard_optimizer=True`, `optimizer.mu_dtype` None (float32) vs "bfloat16". Bytes are exact
counts, not timings: they do not depend on the machine, only on the number of devices.

`--mode bytes`: for every optimizer of the name table (ours and the optax baselines) and each
storage setting it takes (float32 moments; `mu_dtype="bfloat16"`; `mu_dtype` and `nu_dtype`
"bfloat16"), the bytes of its state per parameter of each model, from the shapes alone
(`jax.eval_shape`: nothing is computed). Adam keeps 8 bytes per float32 parameter (m and v),
AMSGrad 12 (and v's maximum), Lion 4; the scalars (step counts) add a few bytes per model.

`--mode accuracy`: trains configs/digits.py (24 epochs, `adamlab train`'s run) with float32 and
with mixed precision (bfloat16 compute, `model.dtype="bfloat16"`, float32 parameters, and a
bfloat16 first moment, `optimizer.mu_dtype="bfloat16"`) for `--seeds`, and reports test accuracy
and loss per seed.

    python benchmarks/optimizer_memory.py --cpu_devices 4          # CPU: 4 simulated devices
    python benchmarks/optimizer_memory.py                          # GPU/TPU box: real devices
    python benchmarks/optimizer_memory.py --mode bytes --models digits_cnn
    python benchmarks/optimizer_memory.py --mode accuracy --seeds 0,1,2
    python benchmarks/optimizer_memory.py --cpu_devices 2 --models digits_cnn --out /tmp/m.json
    python benchmarks/optimizer_memory.py --mode accuracy --seeds 0 --num_steps 30 --out /tmp/a.json

Prints a table and writes JSON (`--out`, default benchmarks/results/optimizer_<mode>_<backend>
.json) with the machine.
"""

from __future__ import annotations

import argparse
import functools
import os
import pathlib
import platform
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODELS = {  # name: (shipped config, image shape, batch size)
    "digits_cnn": ("digits", (8, 8, 1), 64),
    "mnist_cnn": ("mnist", (28, 28, 1), 128),
    "cifar10_resnet20": ("cifar10", (32, 32, 3), 128),
}


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("memory", "bytes", "accuracy"), default="memory")
    parser.add_argument(
        "--cpu_devices", type=int, default=None, help="simulate this many CPU devices (CPU only)"
    )
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seeds", default="0,1,2", help="accuracy mode: comma-separated seeds")
    parser.add_argument(
        "--num_steps", type=int, default=None, help="accuracy mode: steps (default: 24 epochs)"
    )
    parser.add_argument("--out", default=None)
    return parser.parse_args()


def _tree_bytes(tree) -> int:
    """Bytes of every array leaf of `tree` (host arrays): the unsharded total."""
    import jax
    import numpy as np

    return int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree)))


def _memory(args) -> dict:
    import jax
    import numpy as np

    from adamlab import config_dict, models
    from adamlab.training import engines, members, optimizers, zero

    d0 = jax.devices()[0]
    rows = []
    for name in args.models.split(","):
        config_file, image_shape, batch_size = MODELS[name]
        config = config_dict.load_config(config_file)
        for engine_name in ("jit", "pmap"):
            for shard in (False, True):
                for mu_dtype in (None, "bfloat16"):
                    config.optimizer.mu_dtype = mu_dtype
                    tx, schedule = optimizers.make_optimizer(config.optimizer, 100_000)
                    model = models.create_model(config.model, 10)
                    engine = engines.Engine(
                        engine_name, model, (tx,), schedule, 10, shard_optimizer=shard
                    )
                    carry = members.initial_members(  # One run (grid ()), seed 0: host arrays.
                        model, (tx,), image_shape, (0,), {}, (lambda values, tx=tx: tx,)
                    )
                    host = carry.states[0]
                    rng = np.random.default_rng(0)
                    chunk = {  # One step: [K = 1, B, ...]; put_chunk lays it out per engine.
                        "image": rng.normal(size=(1, batch_size, *image_shape)).astype(np.float32),
                        "label": rng.integers(0, 10, (1, batch_size)).astype(np.int32),
                    }
                    carry, _ = engine.train(engine.put_members(carry), engine.put_chunk(chunk))
                    jax.block_until_ready(carry)
                    state = carry.states[0]
                    row = {
                        "model": name,
                        "engine": engine_name,
                        "shard_optimizer": shard,
                        "mu_dtype": mu_dtype or "float32",
                        "params": int(sum(np.size(x) for x in jax.tree.leaves(host.params))),
                        "param_bytes_device0": zero.bytes_on_device(state.params, d0),
                        "opt_bytes_device0": zero.bytes_on_device(state.opt_state, d0),
                        "opt_bytes_total": _tree_bytes(host.opt_state),
                    }
                    rows.append(row)
                    print(
                        f"{name:17s} {engine_name:4s} zero={shard!s:5s} mu={row['mu_dtype']:8s} "
                        f"params={row['params']:8d} param B/dev={row['param_bytes_device0']:9d} "
                        f"opt B/dev={row['opt_bytes_device0']:9d} (unsharded "
                        f"{row['opt_bytes_total']:9d}, ratio "
                        f"{row['opt_bytes_device0'] / row['opt_bytes_total']:.3f})",
                        flush=True,
                    )
    return {"rows": rows}


# (label, hyperparameters) of each storage setting, where the optimizer takes them.
_STORAGE = (
    ("float32", {}),
    ("mu_bf16", {"mu_dtype": "bfloat16"}),
    ("mu_nu_bf16", {"mu_dtype": "bfloat16", "nu_dtype": "bfloat16"}),
)


def _state_bytes(tree) -> int:
    """Bytes of the array leaves of `tree` (shapes and dtypes: `jax.ShapeDtypeStruct`s)."""
    import jax
    import numpy as np

    return int(sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def _bytes(args) -> dict:
    import jax

    from adamlab import config_dict, models, optim
    from adamlab.training import optimizers

    rows = []
    for name in args.models.split(","):
        config_file, image_shape, _ = MODELS[name]
        config = config_dict.load_config(config_file)
        model = models.create_model(config.model, 10)
        dummy = jax.ShapeDtypeStruct((1, *image_shape), "float32")
        init = functools.partial(model.init, train=False)
        params = jax.eval_shape(init, jax.random.key(0), dummy)["params"]
        size = sum(x.size for x in jax.tree.leaves(params))
        for optimizer in optimizers.names():
            accepted = optimizers.hyperparameters(optimizer)
            build = optim.create if optimizer in optim.names() else optim.reference
            for label, storage in _STORAGE:
                if not set(storage) <= set(accepted):
                    continue
                tx = build(optimizer, learning_rate=1e-3, **storage)
                state_bytes = _state_bytes(jax.eval_shape(tx.init, params))
                row = {
                    "model": name,
                    "optimizer": optimizer,
                    "storage": label,
                    "params": size,
                    "opt_bytes": state_bytes,
                    "opt_bytes_per_param": state_bytes / size,
                }
                rows.append(row)
                print(
                    f"{name:17s} {optimizer:15s} {label:10s} params={size:8d} "
                    f"state={state_bytes:10d} B  {row['opt_bytes_per_param']:.3f} B/param",
                    flush=True,
                )
    return {"rows": rows}


def _accuracy(args) -> dict:
    from adamlab import config_dict
    from adamlab.training import train

    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for label, dtype, mu_dtype in (
            ("float32", "float32", None),
            ("bf16", "bfloat16", "bfloat16"),
        ):
            config = config_dict.load_config("digits")
            config.train.num_steps = args.num_steps  # None: the config's num_epochs.
            config.seed = seed
            config.model.dtype = dtype
            config.optimizer.mu_dtype = mu_dtype
            config.train.progress_bar = False
            with tempfile.TemporaryDirectory() as workdir:
                start = time.perf_counter()
                final = train.train_and_evaluate(config, workdir)
                seconds = time.perf_counter() - start
            row = {
                "seed": seed,
                "precision": label,
                "test_accuracy": final["test_accuracy"],
                "test_loss": final["test_loss"],
                "seconds": seconds,
            }
            rows.append(row)
            print(
                f"seed {seed} {label:8s} test_accuracy={row['test_accuracy']:.4f} "
                f"test_loss={row['test_loss']:.4f} ({seconds:.1f} s)",
                flush=True,
            )
    return {"rows": rows}


def main() -> None:
    args = _parse_args()
    if args.cpu_devices:
        os.environ["JAX_PLATFORMS"] = "cpu"
        os.environ["XLA_FLAGS"] = (
            f"{os.environ.get('XLA_FLAGS', '')} "
            f"--xla_force_host_platform_device_count={args.cpu_devices}"
        ).strip()
    import jax

    from adamlab.training import run_io

    result = {"memory": _memory, "bytes": _bytes, "accuracy": _accuracy}[args.mode](args)
    if args.mode == "accuracy" and args.num_steps is not None:
        result["num_steps"] = args.num_steps  # Not the config's 24 epochs.
    result["machine"] = {
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "python": sys.version.split()[0],
        "jax": jax.__version__,
    }
    out = args.out or ROOT / "benchmarks" / "results" / (
        f"optimizer_{args.mode}_{jax.default_backend()}.json"
    )
    run_io.write_json(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
