"""Batch-size study: Adam at batch sizes 16/64/256, with no, linear and square-root lr scaling.

    adamlab study batch_size --workdir reports/batch_size [--seeds N]

The base learning rate is tuned for the base batch (64); each rule moves it to the other batch
sizes (`adamlab.experiments.studies.scaled_learning_rate`). Every run trains the same number of
epochs, so a 4x larger batch takes 4x fewer steps: the regime the scaling rules are meant for.
One compiled program per batch size trains its distinct learning rates x the seeds. Results:
experiments/README.md.
"""

import pathlib

import ml_collections

from adamlab.config_dict import load_config_file


def get_config() -> ml_collections.ConfigDict:
    config = load_config_file(pathlib.Path(__file__).with_name("digits.py"))
    config.train.num_epochs = 10.0  # For every batch size (digits: 20 steps of 64 per epoch).
    config.runs.seeds = (0, 1, 2, 3, 4)  # Summaries: mean ± 95% t-interval over these.
    config.study = study = ml_collections.ConfigDict()
    study.warmup_fraction = 0.1  # warmup_cosine: linear warmup over this part of the steps.
    study.batch_sizes = (16, 64, 256)
    study.rules = ("none", "linear", "sqrt")  # Of studies.SCALING_RULES.
    study.base_batch_size = 64
    study.base_learning_rate = 3e-3  # At the base batch size.
    return config
