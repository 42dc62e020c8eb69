r"""`adamlab compare`'s default: configs/digits.py trained for 12 epochs instead of 24.

    adamlab compare                                   # this config, adam + adamw, 3 seeds
    adamlab compare --config configs/digits.py        # the full 24-epoch runs of `adamlab train`

Half the epochs keep the default comparison (2 optimizers x {ours, optax} x 3 seeds = 12 runs)
under 2 minutes on a 2-core CPU; see the README for the measured time and numbers.
"""

import pathlib

import ml_collections

from adamlab.config_dict import load_config_file

_BASE = pathlib.Path(__file__).with_name("digits.py")


def get_config() -> ml_collections.ConfigDict:
    """Returns digits' config with 12 epochs (240 steps of 64)."""
    config = load_config_file(_BASE)
    config.train.num_epochs = 12.0
    return config
