"""Weight-decay study: Adam + L2 penalty in the loss vs AdamW's decoupled decay, same lambda.

    adamlab study weight_decay --workdir reports/weight_decay [--seeds N]

"adam_l2" is Adam with `optimizer.l2` (the penalty's gradient joins the gradient before Adam's
scaling), "adamw" is AdamW with `optimizer.weight_decay`; each sweeps the strengths in one
compiled program. Strength 0 is plain Adam (trained once). Both decay every parameter (biases
too), as optax's adamw does by default, so the two differ only in where the decay enters.
"""

import pathlib

import ml_collections

from adamlab.config_dict import load_config_file


def get_config() -> ml_collections.ConfigDict:
    config = load_config_file(pathlib.Path(__file__).with_name("digits.py"))
    config.train.num_epochs = 10.0  # 200 steps of 64.
    config.optimizer.learning_rate = 1e-2  # Peak of the warmup + cosine schedule.
    config.runs.seeds = (0, 1, 2, 3, 4)  # Summaries: mean ± 95% t-interval over these.
    config.study = study = ml_collections.ConfigDict()
    study.warmup_fraction = 0.1  # warmup_cosine: linear warmup over this part of the steps.
    study.methods = ("adam_l2", "adamw")  # Of studies.WEIGHT_DECAY_METHODS.
    study.strengths = (0.0, 1e-3, 1e-2, 1e-1)  # lambda for both methods.
    return config
