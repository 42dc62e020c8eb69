r"""MNIST: the default CNN with Adam on 28x28 handwritten digits.

Run it (the first run downloads MNIST through TFDS):

    adamlab train --config configs/mnist.py --workdir runs/mnist --config.data.download=True

Expected: >= 99.0% test accuracy after 2 epochs (~840 steps). This is the target, not yet
measured here: the machine this was written on has no network, so MNIST could not be
downloaded. If you run it, please report the number you get.
"""

import pathlib

import ml_collections

from adamlab.run_io import load_config_file

# The config this one builds on (loaded by path: configs/ is not a package).
_BASE = pathlib.Path(__file__).with_name("digits.py")

# A target, not a measurement (no data offline where this was written).
RESULT = "target: >= 0.990 test accuracy after 2 epochs (not yet measured here)"


def get_config() -> ml_collections.ConfigDict:
    """Returns digits' config with what changes for MNIST."""
    config = load_config_file(_BASE)
    config.data.name = "mnist"
    # Not bundled: pass --config.data.download=True on first use (TFDS then caches it).
    config.data.download = False
    config.optimizer.learning_rate = 3e-3  # Peak learning rate, decayed to 0 over the 2 epochs.
    config.optimizer.warmup_steps = 100  # ~1/4 epoch of warmup.
    config.train.batch_size = 128  # Global batch.
    config.train.num_epochs = 2.0  # 2 epochs of ~420 steps (54k training images after validation).
    config.train.eval_batch_size = 1000  # 10 batches for the 10k test images.
    config.train.log_every_steps = 100  # Train metrics every 100 steps.
    config.train.eval_every_steps = 210  # Validation every ~1/2 epoch.
    config.train.checkpoint_every_steps = 420  # Checkpoint every ~epoch.
    return config
