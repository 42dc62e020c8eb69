"""Parameter groups on digits: Muon on the hidden dense layer's matrix, AdamW elsewhere, no weight
decay on the biases (`optimizer.groups`, docs/training.md "Parameter groups").

    adamlab train --config configs/digits_muon.py --workdir runs/digits_muon

As Jordan et al.'s Muon recipe: Muon for the hidden matrices, AdamW for the conv kernels, the
classifier and the biases. The same as PyTorch's

    [Muon([dense_0.weight], lr=2e-2), AdamW([{"params": others}, {"params": biases,
     "weight_decay": 0.0}], lr=1e-2, weight_decay=1e-4)]

Expected: ~98% test accuracy (docs/training.md). Everything else is `digits.py`.
"""

import pathlib

import ml_collections

from adamlab.config_dict import load_config_file


def get_config() -> ml_collections.ConfigDict:
    config = load_config_file(pathlib.Path(__file__).with_name("digits.py"))
    config.optimizer.name = "adamw"
    config.optimizer.weight_decay = 1e-4
    config.optimizer.groups = (
        # Muon's paper rate; Muon decays its matrix by the inherited weight_decay.
        {"params": "^Dense_0/kernel$", "name": "muon", "learning_rate": 2e-2},
        {"params": "bias$", "weight_decay": 0.0},
    )
    return config
