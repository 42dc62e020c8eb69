"""Fields shared by the study configs (`study_*.py`, `kingma_ba_*.py`); not a study itself.

The data and model sections are those of `digits.py` (the offline default: the small CNN on
scikit-learn's 8x8 digits); the rest is what `adamlab.studies` reads for every run.
"""

import pathlib

import ml_collections

from adamlab.config_dict import load_config_file

_BASE = pathlib.Path(__file__).with_name("digits.py")


def get_config() -> ml_collections.ConfigDict:
    """The shared study fields: data, model, seeds, batch size, epochs, schedule."""
    base = load_config_file(_BASE)
    config = ml_collections.ConfigDict()
    config.data = base.data  # digits, 10% of train held out for validation.
    config.model = base.model  # The default CNN (32 -> 64 channels, dense 128).
    config.seeds = (0, 1)  # Few by default (shared 2-core machine); --seeds n for more.
    config.batch_size = 64  # Global batch of each run (one device per run).
    config.num_epochs = 10  # Epochs per run (digits: 20 steps of 64 per epoch).
    config.schedule = "warmup_cosine"  # "constant", "warmup_cosine" or "inverse_sqrt".
    config.warmup_fraction = 0.1  # warmup_cosine: linear warmup over this part of the steps.
    return config
