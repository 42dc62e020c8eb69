"""Schedule study: constant learning rate vs linear warmup + cosine decay, at three peak rates.

    python experiments/schedules.py --report_dir reports/schedules

Results and their reading: experiments/README.md.
"""

import pathlib

import ml_collections

from adamlab.config_dict import load_config_file

_BASE = pathlib.Path(__file__).with_name("study_common.py")


def get_config() -> ml_collections.ConfigDict:
    config = load_config_file(_BASE)
    config.schedules = ("constant", "warmup_cosine")
    config.learning_rates = (1e-3, 1e-2, 3e-2)  # Peak learning rates.
    return config
