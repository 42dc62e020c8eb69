r"""Benchmark workload `cifar10_resnet`: ResNet-20 on CIFAR-10 with crop + flip (GPU-sized).

    adamlab benchmark --workloads cifar10_resnet --trials 16 --seeds 5

configs/cifar10.py (100 epochs, AdamW's weight decay left to the search spaces). Target:
validation accuracy >= 0.90, below the ~93% a tuned run reaches in 100 epochs (a target, not
measured here: no network and no accelerator; the tests run it on TFDS mock data).
"""

import pathlib

import ml_collections

from adamlab.config_dict import load_config_file

_HERE = pathlib.Path(__file__).parent


def get_config() -> ml_collections.ConfigDict:
    config = load_config_file(_HERE / "cifar10.py")
    config.benchmark = bench = load_config_file(_HERE / "bench_digits_cnn.py").benchmark
    bench.workload = "cifar10_resnet"
    bench.target = 0.90
    bench.search_spaces.adamw.ranges.weight_decay = (1e-4, 0.5, "log")
    bench.heatmap.learning_rates = (3e-4, 1e-3, 3e-3)
    bench.heatmap.strengths = (1e-4, 1e-3, 1e-2, 1e-1)
    return config
