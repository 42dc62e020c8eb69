r"""Images/s delivered by the input pipeline vs images/s consumed by the default CNN's train step.

Question: does training ever wait on data? The data side is `adamlab.data.train_batches` itself
(read -> cache -> seeded shuffle -> batch -> normalise -> numpy) on MNIST-shaped data: the real
TFDS `mnist` builder under `tfds.testing.mock_data`, which serves `--num_examples` random uint8
28x28x1 images through the same `as_dataset` path, offline. The first epoch (filling the cache,
as with real MNIST's one-time TFRecord/PNG decode) is a warm-up; we time the steady state.
The training side is one jitted, donated step (cross-entropy + `optax.adam`) of the default CNN
(`adamlab.models.create_model`, or the stand-in below if that module is missing) on a batch
already on the device. A third measure runs them together as training does (next batch ->
device_put -> step), so it shows any wait directly: it should match the step alone.

Measured side by side in one process: each repeat times `--steps` batches of each, the order
alternating between repeats; medians over `--repeats`.

    python benchmarks/input_pipeline.py                 # batch 128, 60000 examples
    python benchmarks/input_pipeline.py --augment       # with random-crop augmentation
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import optax  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from adamlab import data  # noqa: E402


class StandInCNN(nn.Module):
    """conv 3x3 32 -> relu -> avgpool 2 -> conv 3x3 64 -> relu -> avgpool 2 -> dense 128 -> 10."""

    @nn.compact
    def __call__(self, x, *, train: bool = True):
        del train
        for features in (32, 64):
            x = nn.avg_pool(nn.relu(nn.Conv(features, (3, 3))(x)), (2, 2), strides=(2, 2))
        x = nn.relu(nn.Dense(128)(x.reshape((x.shape[0], -1))))
        return nn.Dense(10)(x)


def default_cnn() -> tuple[nn.Module, str]:
    try:
        from adamlab import models
    except ImportError:
        return StandInCNN(), "stand-in CNN (adamlab.models not importable)"
    return models.create_model(models.default_model_config("cnn"), 10), "adamlab.models CNN"


def make_train_step(model, batch):
    """(jitted donated step, params, opt_state) for cross-entropy + optax.adam(1e-3)."""
    params = model.init(jax.random.key(0), batch["image"], train=False)["params"]
    tx = optax.adam(1e-3)

    def step(params, opt_state, batch):
        def loss_fn(p):
            logits = model.apply({"params": p}, batch["image"], train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1)), params, tx.init(params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--num_examples", type=int, default=60_000)
    parser.add_argument("--steps", type=int, default=50, help="batches per timed repeat")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--augment", action="store_true")
    parser.add_argument("--out", default=None, help="optional JSON output path")
    args = parser.parse_args()

    config = data.default_data_config()
    config.name, config.download, config.augment = "mnist", True, args.augment
    model, model_name = default_cnn()
    device = jax.devices()[0]
    with tfds.testing.mock_data(num_examples=args.num_examples):
        batches = data.train_batches(
            config,
            global_batch_size=args.batch_size,
            seed=0,
            num_local_devices=1,
            process_index=0,
            process_count=1,
        )
        steps_per_epoch = args.num_examples * 9 // 10 // args.batch_size
        start = time.perf_counter()
        for _ in range(steps_per_epoch + 5):  # Warm-up: epoch 0 fills the cache.
            first = next(batches)
        warmup_s = time.perf_counter() - start

        step, params, opt_state = make_train_step(model, first)
        on_device = jax.device_put(first, device)
        for _ in range(3):  # Compile.
            params, opt_state, loss = step(params, opt_state, on_device)
        loss.block_until_ready()

        def time_pipeline():
            start = time.perf_counter()
            for _ in range(args.steps):
                next(batches)
            return time.perf_counter() - start

        def time_training():
            nonlocal params, opt_state
            start = time.perf_counter()
            for _ in range(args.steps):
                params, opt_state, loss = step(params, opt_state, on_device)
            loss.block_until_ready()
            return time.perf_counter() - start

        def time_together():
            nonlocal params, opt_state
            start = time.perf_counter()
            for _ in range(args.steps):
                batch = jax.device_put(next(batches), device)
                params, opt_state, loss = step(params, opt_state, batch)
            loss.block_until_ready()
            return time.perf_counter() - start

        timers = {"pipeline": time_pipeline, "train_step": time_training, "fed": time_together}
        seconds = {name: [] for name in timers}
        for repeat in range(args.repeats):
            order = list(timers) if repeat % 2 == 0 else list(reversed(timers))
            for name in order:
                seconds[name].append(timers[name]())

    rate = {k: args.steps * args.batch_size / statistics.median(v) for k, v in seconds.items()}
    result = {
        "images_per_s": {k: round(v) for k, v in rate.items()},
        "pipeline_over_train_step": round(rate["pipeline"] / rate["train_step"], 2),
        "fed_over_train_step": round(rate["fed"] / rate["train_step"], 3),
        "model": model_name,
        "batch_size": args.batch_size,
        "num_examples": args.num_examples,
        "augment": args.augment,
        "steps": args.steps,
        "repeats": args.repeats,
        "warmup_epoch_s": round(warmup_s, 2),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "jax_backend": jax.default_backend(),
            "jax_device": str(device),
            "jax": jax.__version__,
            "tensorflow": tf.__version__,
        },
    }
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
