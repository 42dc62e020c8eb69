"""Every shipped config is valid and trains: digits for real, the others on TFDS mock data.

Users of mnist/fashion_mnist/cifar10 download their data on their machines; here
`tfds.testing.mock_data` stands in (random images, nothing touches the network), so a config
that refers to a missing field, a bad value or a model that does not fit its images fails in CI
rather than after a user's download. Each run is cut to 2 steps on small batches: the model,
optimizer, schedule and data settings are the config's own.
"""

import pathlib

import pytest
import tensorflow_datasets as tfds

from adamlab import config_dict
from adamlab.training import train

# The training configs (`adamlab train --config ...`); study configs are tested with their studies.
CONFIGS = [
    pathlib.Path(__file__).parents[1] / "configs" / f"{name}.py"
    for name in ("digits", "mnist", "fashion_mnist", "cifar10")
]
NEEDS_DOWNLOAD = {"mnist", "fashion_mnist", "cifar10"}


def shortened(config):
    """The same config, cut to 2 steps on batches of 16 so that it runs in seconds."""
    config.train.num_steps = 2
    config.train.batch_size = 16
    config.train.eval_batch_size = 16
    config.train.log_every_steps = 1
    config.train.eval_every_steps = 2
    config.train.checkpoint_every_steps = 2
    config.train.progress_bar = False
    config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, 1)
    return config


def test_every_dataset_has_its_config():
    names = [config_dict.load_config_file(path).data.name for path in CONFIGS]
    assert names == [path.stem for path in CONFIGS]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_is_documented_valid_and_trains(path, tmp_path):
    module_text = path.read_text()
    assert "adamlab train --config configs/" in module_text  # Says how to run it...
    assert "Expected:" in module_text  # ...and what to expect.
    config = shortened(config_dict.load_config_file(path))
    if config.data.name in NEEDS_DOWNLOAD:
        config.data.download = True  # As users pass it; under mock_data nothing is fetched.
        with tfds.testing.mock_data(num_examples=64):
            result = train.train_and_evaluate(config, tmp_path / "run")
    else:
        result = train.train_and_evaluate(config, tmp_path / "run")
    assert result["step"] == 2
    assert 0.0 <= result["test_accuracy"] <= 1.0
