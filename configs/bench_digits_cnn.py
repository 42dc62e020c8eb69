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
from adamlab.experiments import tuning


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
    # Every optimizer's space, as its entry in adamlab/optim/alias.py's TABLE declares it.
    bench.search_spaces = ml_collections.ConfigDict(tuning.search_spaces())
    # A learning rate x decay strength grid in one program per method (`--heatmap_methods`):
    # by default Loshchilov & Hutter 2019, Fig. 2: Adam + L2 (optimizer.l2) vs AdamW
    # (optimizer.weight_decay); "lion" (its weight_decay) on its own axes, the rates a decade
    # lower and the strengths a decade higher, as Chen et al. 2023 (Sec. 5) advise for Lion.
    bench.heatmap = heatmap = ml_collections.ConfigDict()
    heatmap.methods = ("adam_l2", "adamw")
    heatmap.learning_rates = (1e-3, 3e-3, 1e-2, 3e-2)
    heatmap.strengths = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    heatmap.axes = ml_collections.ConfigDict(
        {
            "lion": {
                "learning_rates": (1e-4, 3e-4, 1e-3, 3e-3),
                "strengths": (1e-4, 1e-3, 1e-2, 1e-1, 1.0),
            }
        }
    )
    heatmap.seeds = (0, 1)
    heatmap.metric = "validation_loss"  # Final value, lower is better; finer than accuracy.
    return bench
