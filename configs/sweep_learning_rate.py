r"""The learning-rate study's config: configs/compare_digits.py (digits, 12 epochs).

    python experiments/sweep_learning_rate.py          # 4 optimizers x {ours, optax} x 8 x 2

Every run keeps digits' warmup-cosine schedule; the sweep replaces its peak learning rate.
"""

import pathlib

import ml_collections

from adamlab.config_dict import load_config_file

_BASE = pathlib.Path(__file__).with_name("compare_digits.py")


def get_config() -> ml_collections.ConfigDict:
    """Returns compare_digits' config (the swept field, optimizer.learning_rate, is overridden)."""
    return load_config_file(_BASE)
