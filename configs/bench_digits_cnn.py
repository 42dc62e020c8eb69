r"""Benchmark workload `digits_cnn`: the default CNN on the offline 8x8 digits, 12 epochs.

    adamlab benchmark --workloads digits_cnn --optimizers adam,adamw,sgd --trials 16 --seeds 5

This file declares the benchmark's fields (`benchmark`: the validation target and the tuning
protocol) that every other `bench_*.py` workload starts from and overrides where it differs;
`adamlab/experiments/benchmark.py` says how a benchmark runs them.

Target: validation accuracy >= 0.97 (144 validation images, so 140 of them), chosen as AlgoPerf
chooses its targets: reachable within the budget by a tuned Adam (the default digits config
reaches ~0.98-0.99 here) but not by a badly tuned one.
"""

import pathlib

import ml_collections

from adamlab.config_dict import load_config_file

# Adam-type optimizers share one space (weight decay only where it is decoupled: AdamW).
_ADAM_RANGES = {
    "learning_rate": (1e-4, 1e-1, "log"),
    "b1": (0.8, 0.98, "log1m"),  # 1 - b1 log-uniform in [0.02, 0.2].
    "b2": (0.9, 0.999, "log1m"),  # 1 - b2 log-uniform in [1e-3, 0.1].
    "eps": (1e-10, 1e-5, "log"),
    "warmup_fraction": (0.0, 0.2, "linear"),
}


def search_spaces() -> dict:
    """Benchmark label -> {"fixed": optimizer fields, "ranges": field -> (low, high, scale)}."""
    ours = lambda name, **extra: {
        "fixed": {"name": name, "implementation": "ours"},
        "ranges": _ADAM_RANGES | extra,
    }
    sgd_ranges = {
        "learning_rate": (1e-3, 1.0, "log"),
        "momentum": (0.5, 0.99, "log1m"),
        "warmup_fraction": (0.0, 0.2, "linear"),
    }
    return {
        "adam": ours("adam"),
        "adamw": ours("adamw", weight_decay=(1e-5, 1e-1, "log")),
        "nadam": ours("nadam"),
        "radam": ours("radam"),
        "amsgrad": ours("amsgrad"),
        # AdaBelief's eps sits inside the square root of the belief: smaller values.
        "adabelief": ours("adabelief", eps=(1e-16, 1e-8, "log")),
        # The baselines are optax's (implementation "optax"), not ours.
        "sgd": {  # SGD with Nesterov momentum (Kingma & Ba's SGDNesterov).
            "fixed": {"name": "sgd", "implementation": "optax", "nesterov": True},
            "ranges": dict(sgd_ranges),
        },
        "momentum": {  # SGD with heavy-ball momentum.
            "fixed": {"name": "sgd", "implementation": "optax", "nesterov": False},
            "ranges": dict(sgd_ranges),
        },
        "adagrad": {
            "fixed": {"name": "adagrad", "implementation": "optax"},
            "ranges": {
                "learning_rate": (1e-3, 1.0, "log"),
                "warmup_fraction": (0.0, 0.2, "linear"),
            },
        },
        "rmsprop": {
            "fixed": {"name": "rmsprop", "implementation": "optax"},
            "ranges": {
                "learning_rate": (1e-5, 1e-2, "log"),
                "eps": (1e-10, 1e-5, "log"),
                "warmup_fraction": (0.0, 0.2, "linear"),
            },
        },
    }


def get_config() -> ml_collections.ConfigDict:
    config = load_config_file(pathlib.Path(__file__).with_name("digits.py"))
    config.train.num_epochs = 12.0  # 240 steps of 64: the budget of every trial.
    config.train.log_every_steps = 20  # One epoch: train curves per epoch.
    config.train.eval_every_steps = 20  # Validation each epoch: time-to-target's resolution.
    config.train.checkpoint_every_steps = 120
    config.benchmark = benchmark_section()
    return config


def benchmark_section() -> ml_collections.ConfigDict:
    """The `benchmark` section; the other workloads take it from here and override fields.

    A stage trains the workload's config with the optimizer fields of its search space (a space
    that tunes `warmup_fraction` sets `warmup_steps=0`); the heatmap keeps the config's warmup.
    """
    bench = ml_collections.ConfigDict()
    bench.workload = "digits_cnn"  # The name `--workloads` takes (the file is bench_<name>.py).
    bench.target_metric = "validation_accuracy"  # Higher is better; reached at an evaluation.
    bench.target = 0.97
    bench.halton_seed = 0  # Seeds the scrambled Halton sequence of every optimizer's trials.
    bench.tuning_seed = 0  # The one seed (init, data order, dropout) of every trial.
    bench.final_seed_start = 100  # The selected setting reruns with seeds 100, 101, ...
    bench.search_spaces = ml_collections.ConfigDict(search_spaces())
    # Loshchilov & Hutter 2019, Fig. 2: Adam + L2 (optimizer.l2) vs AdamW
    # (optimizer.weight_decay), a learning rate x strength grid in one program per method.
    bench.heatmap = heatmap = ml_collections.ConfigDict()
    heatmap.learning_rates = (1e-3, 3e-3, 1e-2, 3e-2)
    heatmap.strengths = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    heatmap.seeds = (0, 1)
    heatmap.metric = "validation_loss"  # Final value, lower is better; finer than accuracy.
    return bench
