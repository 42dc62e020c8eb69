r"""Fashion-MNIST: the default CNN with Adam on 28x28 clothing images (10 classes).

Run it (the first run downloads Fashion-MNIST through TFDS):

    adamlab train --config configs/fashion_mnist.py --workdir runs/fashion \
        --config.data.download=True

Expected: about 91-92% test accuracy after 10 epochs. This is the target, not yet measured
here: the machine this was written on has no network, so the data could not be downloaded.
"""

import pathlib

import ml_collections

from adamlab.config_dict import load_config_file

# The config this one builds on (loaded by path: configs/ is not a package).
_BASE = pathlib.Path(__file__).with_name("mnist.py")

# A target, not a measurement (no data offline where this was written).
RESULT = "target: ~0.915 test accuracy (not yet measured here)"


def get_config() -> ml_collections.ConfigDict:
    """Returns MNIST's config with what changes for Fashion-MNIST."""
    config = load_config_file(_BASE)
    config.data.name = "fashion_mnist"
    # Not bundled: pass --config.data.download=True on first use (TFDS then caches it).
    config.data.download = False
    config.model.dropout_rate = 0.25  # Fashion-MNIST overfits sooner than MNIST.
    config.train.num_epochs = 10.0  # 10 epochs of ~420 steps.
    return config
