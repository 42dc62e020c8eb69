"""Kingma & Ba 2015 (Figures 1-2) on the offline digits: Adam vs SGD-Nesterov, AdaGrad, RMSProp.

    python experiments/kingma_ba.py --report_dir reports/kingma_ba

As in the paper: logistic regression (here 64 -> 10) with the 1/sqrt(t) step-size decay, and a
multilayer net of 2 hidden ReLU layers with dropout, minibatch 128, each optimizer's learning
rate tuned on a small grid. Scaled down for digits so it runs in a few minutes on a 2-core CPU:
hidden layers of 256 units instead of 1000 and 20 epochs (the paper: MNIST, 1000 units, up to
200 epochs); the paper's dropout rate of 0.5 is kept. The grid is tuned with the first seed by
the final validation loss; `kingma_ba_mnist.py` is the paper-sized setup.
"""

import pathlib

import ml_collections

from adamlab.config_dict import load_config_file

_BASE = pathlib.Path(__file__).with_name("study_common.py")


def get_config() -> ml_collections.ConfigDict:
    config = load_config_file(_BASE)
    del config.model  # Each entry of `models` is a model config plus its schedule.
    config.batch_size = 128  # The paper's minibatch.
    config.num_epochs = 20
    config.schedule = "constant"  # Unused: each model names its own schedule.
    config.models = ml_collections.ConfigDict(
        {
            "logreg": {"name": "logreg", "schedule": "inverse_sqrt"},  # alpha / sqrt(t)
            "mlp": {
                "name": "mlp",
                "hidden": (256, 256),
                "dropout_rate": 0.5,
                "schedule": "constant",
            },
        }
    )
    config.optimizers = ("adam", "sgd_nesterov", "adagrad", "rmsprop")
    config.learning_rates = ml_collections.ConfigDict(
        {
            # Wide enough that every chosen rate, for both models, lies inside its grid
            # (logistic regression under alpha/sqrt(t) wants rates ~100x the MLP's).
            "adam": (1e-3, 1e-2, 1e-1, 1.0),
            "sgd_nesterov": (1e-2, 1e-1, 1.0, 10.0),  # momentum 0.9
            "adagrad": (1e-2, 1e-1, 1.0, 10.0),
            "rmsprop": (1e-4, 1e-3, 1e-2, 1e-1, 1.0),
        }
    )
    config.select_by = "validation_loss"  # Final metric that picks each learning rate.
    return config
