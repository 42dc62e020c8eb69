"""Transfer learning offline on digits: pretrain the CNN on classes 0-4, transfer to 5-9.

    python experiments/transfer.py --report_dir reports/transfer

Compares training only a new head on the frozen pretrained backbone ("frozen"), fine-tuning
everything from the pretrained weights ("full") and the same CNN from scratch ("scratch"), with
our Adam, each for 10 epochs on the target (~100 steps).
"""

import pathlib

import ml_collections

from adamlab.config_dict import load_config_file

_BASE = pathlib.Path(__file__).with_name("study_common.py")


def get_config() -> ml_collections.ConfigDict:
    config = load_config_file(_BASE)
    config.pretrain_data = ml_collections.ConfigDict(config.data.to_dict())
    config.pretrain_data.classes = (0, 1, 2, 3, 4)  # Source task.
    config.data.classes = (5, 6, 7, 8, 9)  # Target task (labels remapped to 0..4).
    config.pretrain_epochs = 10
    config.pretrain_learning_rate = 1e-2
    config.pretrain_seed = 0
    config.num_epochs = 10  # Fine-tuning epochs (target: ~10 steps of 64 per epoch).
    config.modes = ("frozen", "full", "scratch")  # Of adamlab.transfer.MODES.
    # Peak learning rate per mode: the head alone and from scratch take the default rate; the
    # pretrained backbone is fine-tuned more gently.
    config.learning_rates = ml_collections.ConfigDict(
        {"frozen": 1e-2, "full": 3e-3, "scratch": 1e-2}
    )
    return config
