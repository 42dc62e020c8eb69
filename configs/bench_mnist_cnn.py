r"""Benchmark workload `mnist_cnn`: the default CNN on MNIST, 2 epochs (configs/mnist.py).

    adamlab benchmark --workloads mnist_cnn --trials 16 --seeds 5

Target: validation accuracy >= 0.99; configs/mnist.py's hand-tuned Adam reaches 99.16% test
accuracy in these 2 epochs. Needs the MNIST files prepared by TFDS (see bench_mnist_logreg.py).
"""

import pathlib

import ml_collections

from adamlab.config_dict import load_config_file

_HERE = pathlib.Path(__file__).parent


def get_config() -> ml_collections.ConfigDict:
    config = load_config_file(_HERE / "mnist.py")
    config.train.eval_every_steps = 105  # Time-to-target's resolution: a quarter epoch.
    config.benchmark = bench = load_config_file(_HERE / "bench_digits_cnn.py").benchmark
    bench.workload = "mnist_cnn"
    bench.target = 0.99
    return config
