"""Kingma & Ba 2015 (Figures 1-2) at the paper's sizes on MNIST (needs the MNIST download).

    adamlab study kingma_ba --config configs/kingma_ba_mnist.py \
        --config.data.download=True --workdir reports/kingma_ba_mnist

Logistic regression 784 -> 10 with 1/sqrt(t) decay and the 2 x 1000 ReLU network with dropout
0.5, minibatch 128, 45 epochs. Not run here: too long for the 2-core CPU this was written on;
use a GPU.
"""

import pathlib

import ml_collections

from adamlab.config_dict import load_config_file


def get_config() -> ml_collections.ConfigDict:
    config = load_config_file(pathlib.Path(__file__).with_name("kingma_ba_digits.py"))
    config.data.name = "mnist"
    config.data.download = False  # Pass --config.data.download=True on first use.
    config.train.num_epochs = 45.0  # Figure 1 (logistic regression) runs 45 epochs.
    config.train.eval_batch_size = 1000
    config.train.checkpoint_every_steps = 420  # ~ an epoch.
    config.study.models.mlp.hidden = (1000, 1000)  # The paper's network.
    return config
