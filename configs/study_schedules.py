"""Schedule study: constant learning rate vs linear warmup + cosine decay, at three peak rates.

    adamlab study schedules --workdir reports/schedules [--seeds N]

One compiled program per schedule trains the peak rates x the seeds. Results and their reading:
experiments/README.md.
"""

import pathlib

import ml_collections

from adamlab.config_dict import load_config_file


def get_config() -> ml_collections.ConfigDict:
    config = load_config_file(pathlib.Path(__file__).with_name("digits.py"))
    config.train.num_epochs = 10.0  # 200 steps of 64.
    config.runs.seeds = (0, 1, 2, 3, 4)  # Summaries: mean ± 95% t-interval over these.
    config.study = study = ml_collections.ConfigDict()
    study.warmup_fraction = 0.1  # warmup_cosine: linear warmup over this part of the steps.
    study.schedules = ("constant", "warmup_cosine")  # Values of optimizer.schedule.
    study.learning_rates = (1e-3, 1e-2, 3e-2)  # Peak learning rates.
    return config
