"""Transfer learning from MNIST to Fashion-MNIST (needs both downloads).

    adamlab study transfer --config configs/transfer_mnist_fashion.py \
        --config.data.download=True --workdir reports/transfer_mnist_fashion

Pretrains the CNN on all 10 MNIST digits, then trains a new 10-class head on Fashion-MNIST with
the backbone frozen, fine-tunes everything (new head), or trains from scratch. The realistic
setting for users with the data; tested here for 2 steps on TFDS mock data only (no network).
"""

import pathlib

import ml_collections

from adamlab.config_dict import load_config_file


def get_config() -> ml_collections.ConfigDict:
    config = load_config_file(pathlib.Path(__file__).with_name("transfer_digits.py"))
    config.data.name = "fashion_mnist"  # The target; the source is `study.pretrain_data`.
    config.data.classes = None
    config.data.download = False  # Pass --config.data.download=True on first use (both sets).
    config.train.batch_size = 128
    config.train.num_epochs = 1.0  # ~420 steps.
    config.train.eval_batch_size = 1000
    config.train.checkpoint_every_steps = 420  # ~ an epoch.
    config.study.pretrain_data = ml_collections.ConfigDict({"name": "mnist", "classes": None})
    config.study.pretrain_epochs = 2.0
    config.study.pretrain_learning_rate = 3e-3
    config.study.learning_rates = ml_collections.ConfigDict(
        {"frozen": 3e-3, "full": 1e-3, "scratch": 3e-3}
    )
    return config
