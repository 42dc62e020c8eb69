"""Transfer learning offline on digits: pretrain the CNN on classes 0-4, transfer to 5-9.

    adamlab study transfer --workdir reports/transfer [--seeds N]

Transfer is config (the `init` section, adamlab/training/transfer.py): the study pretrains one
run on `study.pretrain_data`, then trains on `data` (the target classes) in each mode: "frozen"
(the pretrained backbone frozen, a new head trained), "full" (everything fine-tuned from the
pretrained weights, the head re-initialised) and "scratch" (the same CNN from a random
initialisation), with our Adam, each for 10 epochs on the target (~100 steps).
"""

import pathlib

import ml_collections

from adamlab.config_dict import load_config_file


def get_config() -> ml_collections.ConfigDict:
    config = load_config_file(pathlib.Path(__file__).with_name("digits.py"))
    config.data.classes = (5, 6, 7, 8, 9)  # Target task (labels remapped to 0..4).
    config.train.num_epochs = 10.0  # Fine-tuning epochs (target: ~10 steps of 64 per epoch).
    config.runs.seeds = (0, 1, 2, 3, 4)  # Summaries: mean ± 95% t-interval over these.
    config.study = study = ml_collections.ConfigDict()
    study.warmup_fraction = 0.1  # warmup_cosine: linear warmup over this part of the steps.
    study.pretrain_data = ml_collections.ConfigDict({"classes": (0, 1, 2, 3, 4)})  # Over `data`.
    study.pretrain_epochs = 10.0
    study.pretrain_learning_rate = 1e-2
    study.pretrain_seed = 0
    study.modes = ("frozen", "full", "scratch")  # Of studies.TRANSFER_MODES.
    # Peak learning rate per mode: the head alone and from scratch take the default rate; the
    # pretrained backbone is fine-tuned more gently.
    study.learning_rates = ml_collections.ConfigDict(
        {"frozen": 1e-2, "full": 3e-3, "scratch": 1e-2}
    )
    study.head = "Dense_1"  # The classifier's parameters (the CNN's last Dense): not loaded.
    return config
