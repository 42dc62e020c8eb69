r"""Benchmark workload `mnist_logreg`: logistic regression on MNIST (Kingma & Ba 2015, 6.1).

    adamlab benchmark --workloads mnist_logreg --optimizers adam,sgd,adagrad --trials 16 \
        --seeds 5

As in the paper: 784 -> 10 softmax regression, minibatch 128, the step size decayed as
alpha / sqrt(t); SGD with Nesterov momentum ("sgd") and AdaGrad are the paper's baselines.
10 epochs instead of 45 (a 2-core CPU budget). No warmup (the schedule has none), so the spaces
drop `warmup_fraction`, and the learning rates span larger values: under alpha / sqrt(t) the
rate after an epoch is alpha / 20.

Target: validation accuracy >= 0.92, which a tuned Adam reaches within the budget (softmax
regression on MNIST ends near 92-93%). Needs the MNIST files prepared by TFDS (`adamlab train
--config mnist --config.data.download=True` once); a missing dataset is an error up front.
"""

import pathlib

import ml_collections

from adamlab.config_dict import load_config_file

_HERE = pathlib.Path(__file__).parent


def get_config() -> ml_collections.ConfigDict:
    config = load_config_file(_HERE / "mnist.py")
    config.model.name = "logreg"
    config.optimizer.schedule = "inverse_sqrt"
    config.optimizer.warmup_steps = 0
    config.train.num_epochs = 10.0  # 10 x 421 steps.
    config.train.log_every_steps = 211  # Half an epoch: train curves (K&B's training cost).
    config.train.eval_every_steps = 211  # Time-to-target's resolution: half an epoch.
    config.train.checkpoint_every_steps = 1055
    config.benchmark = bench = load_config_file(_HERE / "bench_digits_cnn.py").benchmark
    bench.workload = "mnist_logreg"
    bench.target = 0.92
    for label, space in bench.search_spaces.items():
        del space.ranges["warmup_fraction"]
        plain = label in ("sgd", "momentum", "adagrad")  # Not scaled by gradient statistics.
        space.ranges.learning_rate = (1e-2, 10.0, "log") if plain else (1e-3, 1.0, "log")
    bench.heatmap.learning_rates = (1e-3, 1e-2, 1e-1, 1.0)
    return config
