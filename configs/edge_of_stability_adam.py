"""Cohen et al. 2022 on digits: full-batch Adam trains at the adaptive edge of stability.

    adamlab train --config configs/edge_of_stability_adam.py --workdir runs/eos_adam
    adamlab diagnostics --workdir runs/eos_adam    # preconditioned sharpness vs 38/eta

For Adam with momentum b1 and step eta, Cohen et al. (Adaptive Gradient Methods at the Edge of
Stability, 2022) show that the preconditioned sharpness, the top eigenvalue of P^-1 H with
Adam's current preconditioner P = diag(sqrt(v_hat) + eps), rises to the stability threshold of
heavy-ball momentum (2 + 2 b1) / ((1 - b1) eta) = 38 / eta for b1 = 0.9 and hovers there. The
setup is the GD reproduction's (`edge_of_stability_gd.py`: squared loss, tanh network, full
batch of the 1293 training examples) with Adam (b1 = 0.9, b2 = 0.999, eps = 1e-8).
"""

import pathlib

import ml_collections

from adamlab.config_dict import load_config_file


def get_config() -> ml_collections.ConfigDict:
    config = load_config_file(pathlib.Path(__file__).with_name("edge_of_stability_gd.py"))
    config.optimizer.name = "adam"
    config.optimizer.implementation = "ours"
    config.optimizer.learning_rate = 5e-3  # eta; the threshold is 38 / eta = 7600.
    config.train.num_steps = 1500
    config.optimizer.b1 = 0.9
    config.diagnostics.preconditioned = True
    return config
