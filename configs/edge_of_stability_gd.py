"""Cohen et al. 2021 on digits: full-batch gradient descent trains at the edge of stability.

    adamlab train --config configs/edge_of_stability_gd.py --workdir runs/eos_gd
    adamlab diagnostics --workdir runs/eos_gd      # sharpness vs 2/eta, per-layer figures

Gradient descent with step eta is stable on a quadratic only while the sharpness (the top
Hessian eigenvalue) stays below 2/eta. Cohen et al. found that on neural networks the sharpness
rises during training (progressive sharpening) until it reaches 2/eta, then hovers there while
the loss keeps falling non-monotonically. As in their setup: the squared loss, a tanh network,
full batch (the batch is the whole training split, 1293 examples with the default 10% held out
for validation), constant step; the sharpness is measured every few steps on that same
training set by Lanczos (`adamlab.diagnostics.hessian`).
"""

import pathlib

import ml_collections

from adamlab.config_dict import load_config_file

NUM_TRAIN = 1293  # digits' training split with data.validation_fraction = 0.1.


def get_config() -> ml_collections.ConfigDict:
    config = load_config_file(pathlib.Path(__file__).with_name("digits.py"))
    config.model.name = "mlp"
    config.model.hidden = (64, 64)
    config.model.activation = "tanh"
    config.model.dropout_rate = 0.0
    config.optimizer.name = "sgd"  # optax's: plain gradient descent (no momentum).
    config.optimizer.implementation = "optax"
    config.optimizer.learning_rate = 0.1  # eta; the threshold is 2 / eta = 20.
    config.optimizer.schedule = "constant"
    config.optimizer.warmup_steps = 0
    config.train.loss = "mse"
    config.train.batch_size = NUM_TRAIN  # Full batch.
    config.train.num_steps = 3000
    config.train.log_every_steps = 100
    config.train.eval_every_steps = 1000
    config.train.checkpoint_every_steps = 3000
    config.train.steps_per_dispatch = 25
    config.train.best_metric = None
    config.diagnostics.layer_stats_every_steps = 100
    config.diagnostics.curvature_every_steps = 25
    config.diagnostics.curvature_examples = NUM_TRAIN  # The training set itself.
    config.diagnostics.preconditioned = False  # GD has no preconditioner.
    return config
