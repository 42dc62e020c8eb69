"""Transfer learning from MNIST to Fashion-MNIST (needs both downloads; not run here).

    python experiments/transfer.py --config configs/transfer_mnist_fashion.py \
        --config.data.download=True --config.pretrain_data.download=True \
        --report_dir reports/transfer_mnist_fashion

Pretrains the CNN on all 10 MNIST digits, then trains a new 10-class head on Fashion-MNIST with
the backbone frozen, fine-tunes everything, or trains from scratch. Untested here: the machine
this was written on has no network, so neither dataset could be downloaded.
"""

import pathlib

import ml_collections

from adamlab.config_dict import load_config_file

_BASE = pathlib.Path(__file__).with_name("transfer_digits.py")


def get_config() -> ml_collections.ConfigDict:
    config = load_config_file(_BASE)
    config.pretrain_data.name = "mnist"
    config.pretrain_data.classes = None  # All ten digits.
    config.data.name = "fashion_mnist"
    config.data.classes = None
    config.batch_size = 128
    config.pretrain_epochs = 2
    config.pretrain_learning_rate = 3e-3
    config.num_epochs = 1
    config.learning_rates = ml_collections.ConfigDict(
        {"frozen": 3e-3, "full": 1e-3, "scratch": 3e-3}
    )
    return config
