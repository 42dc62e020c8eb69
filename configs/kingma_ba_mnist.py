"""Kingma & Ba 2015 (Figures 1-2) at the paper's sizes on MNIST (needs the MNIST download).

    python experiments/kingma_ba.py --config configs/kingma_ba_mnist.py \
        --config.data.download=True --report_dir reports/kingma_ba_mnist

Logistic regression 784 -> 10 with 1/sqrt(t) decay and the 2 x 1000 ReLU network with dropout
0.5, minibatch 128. Not run here: 42 runs, half of them the 2 x 1000 network for 45 epochs,
are too long for the 2-core CPU this was written on; use a GPU.
"""

import pathlib

import ml_collections

from adamlab.config_dict import load_config_file

_BASE = pathlib.Path(__file__).with_name("kingma_ba_digits.py")


def get_config() -> ml_collections.ConfigDict:
    config = load_config_file(_BASE)
    config.data.name = "mnist"
    config.data.download = False  # Pass --config.data.download=True on first use.
    config.num_epochs = 45  # Figure 1 (logistic regression) runs 45 epochs.
    config.models.mlp.hidden = (1000, 1000)  # The paper's network.
    config.seeds = (0, 1, 2)
    return config
