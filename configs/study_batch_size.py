"""Batch-size study: Adam at batch sizes 16/64/256, with no, linear and square-root lr scaling.

    python experiments/batch_size.py --report_dir reports/batch_size

The base learning rate is tuned for the base batch (64); each rule moves it to the other batch
sizes (`adamlab.studies.scaled_learning_rate`). Every run trains the same number of epochs, so a
4x larger batch takes 4x fewer steps: the regime the scaling rules are meant for.
"""

import pathlib

import ml_collections

from adamlab.config_dict import load_config_file

_BASE = pathlib.Path(__file__).with_name("study_common.py")


def get_config() -> ml_collections.ConfigDict:
    config = load_config_file(_BASE)
    config.batch_sizes = (16, 64, 256)
    config.rules = ("none", "linear", "sqrt")  # Of adamlab.studies.SCALING_RULES.
    config.base_batch_size = 64
    config.base_learning_rate = 3e-3  # At the base batch size.
    return config
