"""Weight-decay study: Adam + L2 penalty in the loss vs AdamW's decoupled decay, same lambda.

    python experiments/weight_decay.py --report_dir reports/weight_decay

Strength 0 is plain Adam (run once). Both decay every parameter (biases too), as optax's adamw
does by default, so the two differ only in where the decay enters.
"""

import pathlib

import ml_collections

from adamlab.config_dict import load_config_file

_BASE = pathlib.Path(__file__).with_name("study_common.py")


def get_config() -> ml_collections.ConfigDict:
    config = load_config_file(_BASE)
    config.methods = ("adam_l2", "adamw")  # Of adamlab.studies.WEIGHT_DECAY_METHODS.
    config.strengths = (0.0, 1e-3, 1e-2, 1e-1)  # lambda for both methods.
    config.learning_rate = 1e-2  # Peak of the warmup + cosine schedule.
    return config
