r"""Images/s delivered by the input pipeline vs images/s consumed by the default CNN's train step.

Question: does training ever wait on data? The data side is `adamlab.data.train_batches` itself
(read -> cache -> seeded shuffle -> batch -> normalise -> numpy) on MNIST-shaped data: the real
TFDS `mnist` builder under `tfds.testing.mock_data`, which serves `--num_examples` random uint8
28x28x1 images through the same `as_dataset` path, offline. The first epoch (filling the cache,
as with real MNIST's one-time TFRecord/PNG decode) is a warm-up; we time the steady state.
The training side is the train step `adamlab train` runs for configs/mnist.py on CPU (the
default CNN, our Adam, the jit engine, donated members, one step per `engine.train` call) on a
batch already on the device(s). A third measure runs them together as the loop does (next batch
-> a chunk of one step -> `engine.put_chunk` -> step), so it shows any wait directly: it should
match the step alone. The process keeps freed memory for reuse, as the `adamlab` command does
(`adamlab.runtime`).

Measured side by side in one process: each repeat times `--steps` batches of the train step and
of the fed step, and a whole epoch of the pipeline alone (the pipeline prefetches while the
step is timed, so a short stretch would be served from the prefetch buffer and overstate it);
the order alternates between repeats; medians over `--repeats`.

    python benchmarks/input_pipeline.py                 # batch 128, 60000 examples
    python benchmarks/input_pipeline.py --augment       # with random-crop augmentation
    python benchmarks/input_pipeline.py --num_examples 512 --steps 2 --repeats 1 --out /tmp/p.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import time

import jax
import numpy as np
import tensorflow_datasets as tfds  # Loads TF lazily: adamlab.data configures it first.

from adamlab import config_dict, data, runtime
from adamlab.training import experiment as experiment_lib


def mnist_experiment(num_examples: int, batch_size: int, augment: bool):
    """configs/mnist.py as `adamlab train` builds it (our Adam, jit engine), on mock data."""
    config = config_dict.load_config("mnist")
    config.data.download, config.data.augment = True, augment  # Mock data: nothing downloads.
    config.train.batch_size = batch_size
    config.train.steps_per_dispatch = 1  # What `adamlab train` runs on CPU: one step per call.
    with tfds.testing.mock_data(num_examples=num_examples):
        total = experiment_lib.total_steps(config, data.dataset_info(config.data))
        if total <= config.optimizer.warmup_steps:  # Few --num_examples: keep the cosine valid.
            config.train.num_steps = config.optimizer.warmup_steps + 1
        experiment = experiment_lib.build_experiment(config)
    return config, experiment


def one_step(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A chunk of one step [1, B, ...], stacked on the host as the loop stacks its chunks."""
    return {k: np.stack([v]) for k, v in batch.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--num_examples", type=int, default=60_000)
    parser.add_argument("--steps", type=int, default=50, help="batches per timed repeat")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--augment", action="store_true")
    parser.add_argument("--out", default=None, help="optional JSON output path")
    args = parser.parse_args()
    eigen = runtime.use_eigen_convolutions()  # As the adamlab command runs.
    kept = runtime.keep_freed_memory()  # As the adamlab command runs.

    config, experiment = mnist_experiment(args.num_examples, args.batch_size, args.augment)
    engine = experiment.engine
    with tfds.testing.mock_data(num_examples=args.num_examples):
        batches = data.train_batches(config.data, global_batch_size=args.batch_size, seed=0)
        # The stream's own epoch (under mock_data split slicing is ignored: all examples).
        steps_per_epoch = data.steps_per_epoch(experiment.info, args.batch_size)
        start = time.perf_counter()
        for _ in range(steps_per_epoch + 5):  # Warm-up: epoch 0 fills the cache.
            first = next(batches)
        warmup_s = time.perf_counter() - start

        carry = engine.put_members(experiment_lib.initial_members(experiment))
        on_device = engine.put_chunk(one_step(first))
        for _ in range(3):  # Compile.
            carry, metrics = engine.train(carry, on_device)
        jax.block_until_ready(metrics)

        def time_pipeline():
            start = time.perf_counter()
            for _ in range(steps_per_epoch):  # >> the prefetch buffer (see the docstring).
                next(batches)
            return time.perf_counter() - start

        def time_training():
            nonlocal carry
            start = time.perf_counter()
            for _ in range(args.steps):
                carry, metrics = engine.train(carry, on_device)
            jax.block_until_ready(metrics)
            return time.perf_counter() - start

        def time_together():
            nonlocal carry
            start = time.perf_counter()
            for _ in range(args.steps):
                carry, metrics = engine.train(carry, engine.put_chunk(one_step(next(batches))))
            jax.block_until_ready(metrics)
            return time.perf_counter() - start

        timers = {"pipeline": time_pipeline, "train_step": time_training, "fed": time_together}
        seconds = {name: [] for name in timers}
        for repeat in range(args.repeats):
            order = list(timers) if repeat % 2 == 0 else list(reversed(timers))
            for name in order:
                seconds[name].append(timers[name]())

    counts = {"pipeline": steps_per_epoch, "train_step": args.steps, "fed": args.steps}
    rate = {k: counts[k] * args.batch_size / statistics.median(v) for k, v in seconds.items()}
    result = {
        "images_per_s": {k: round(v) for k, v in rate.items()},
        "pipeline_over_train_step": round(rate["pipeline"] / rate["train_step"], 2),
        "fed_over_train_step": round(rate["fed"] / rate["train_step"], 3),
        "model": f"configs/mnist.py: {config.model.name} {tuple(config.model.features)}, "
        f"{config.optimizer.name} ({config.optimizer.implementation}), {engine.name} engine",
        "batch_size": args.batch_size,
        "num_examples": args.num_examples,
        "augment": args.augment,
        "steps": args.steps,
        "pipeline_steps": steps_per_epoch,
        "repeats": args.repeats,
        "warmup_epoch_s": round(warmup_s, 2),
        "keep_freed_memory": kept,
        "eigen_convolutions": eigen,
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "jax_backend": jax.default_backend(),
            "jax_devices": [str(d) for d in engine.devices],
            "jax": jax.__version__,
            "tensorflow-datasets": importlib.metadata.version("tensorflow-datasets"),
        },
    }
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
