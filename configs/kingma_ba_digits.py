"""Kingma & Ba 2015 (Figures 1-2) on the offline digits: Adam vs SGD-Nesterov, AdaGrad, RMSProp.

    adamlab study kingma_ba --workdir reports/kingma_ba [--seeds N]

As in the paper: logistic regression (here 64 -> 10) with the 1/sqrt(t) step-size decay, and a
multilayer net of 2 hidden ReLU layers with dropout, minibatch 128, each optimizer's learning
rate tuned on a small grid. Scaled down for digits so it runs in minutes on a 2-core CPU:
hidden layers of 256 units instead of 1000 and 20 epochs (the paper: MNIST, 1000 units, up to
200 epochs); the paper's dropout rate of 0.5 is kept. Each grid is tuned in one compiled program
with the first seed by the final validation loss, then the chosen rate trains every seed;
`kingma_ba_mnist.py` is the paper-sized setup.
"""

import pathlib

import ml_collections

from adamlab.config_dict import load_config_file


def get_config() -> ml_collections.ConfigDict:
    config = load_config_file(pathlib.Path(__file__).with_name("digits.py"))
    config.train.batch_size = 128  # The paper's minibatch.
    config.train.num_epochs = 20.0
    config.runs.seeds = (0, 1, 2, 3, 4)  # The first tunes; all train the chosen rate.
    config.study = study = ml_collections.ConfigDict()
    # Model name -> fields of `model` plus its `optimizer.schedule`.
    study.models = ml_collections.ConfigDict({
        "logreg": {"name": "logreg", "schedule": "inverse_sqrt"},  # alpha / sqrt(t)
        "mlp": {"name": "mlp", "hidden": (256, 256), "dropout_rate": 0.5, "schedule": "constant"},
    })  # fmt: skip
    # Label -> fields of `optimizer`; the baselines come from optax (implementation "optax").
    study.optimizers = ml_collections.ConfigDict({
        "adam": {"name": "adam", "implementation": "ours"},
        "sgd_nesterov": {"name": "sgd", "implementation": "optax", "momentum": 0.9,
                         "nesterov": True},
        "adagrad": {"name": "adagrad", "implementation": "optax"},
        "rmsprop": {"name": "rmsprop", "implementation": "optax"},
    })  # fmt: skip
    # Each optimizer's learning-rate grid: wide enough that every chosen rate, for both models,
    # lies inside it (logistic regression under alpha/sqrt(t) wants rates ~100x the MLP's).
    study.learning_rates = ml_collections.ConfigDict({
        "adam": (1e-3, 1e-2, 1e-1, 1.0),
        "sgd_nesterov": (1e-2, 1e-1, 1.0, 10.0),
        "adagrad": (1e-2, 1e-1, 1.0, 10.0),
        "rmsprop": (1e-4, 1e-3, 1e-2, 1e-1, 1.0),
    })  # fmt: skip
    study.select_by = "validation_loss"  # Final metric that picks each rate (lowest wins).
    return config
