r"""Benchmark workload `fashion_mnist_cnn`: the CNN on Fashion-MNIST, 10 epochs.

    adamlab benchmark --workloads fashion_mnist_cnn --trials 16 --seeds 5

configs/fashion_mnist.py (dropout 0.25). Target: validation accuracy >= 0.91, about what this
CNN reaches in 10 epochs when tuned (a target, not measured here: no network to fetch the
data; the tests run it on TFDS mock data).
"""

import pathlib

import ml_collections

from adamlab.config_dict import load_config_file

_HERE = pathlib.Path(__file__).parent


def get_config() -> ml_collections.ConfigDict:
    config = load_config_file(_HERE / "fashion_mnist.py")
    config.benchmark = bench = load_config_file(_HERE / "bench_digits_cnn.py").benchmark
    bench.workload = "fashion_mnist_cnn"
    bench.target = 0.91
    return config
