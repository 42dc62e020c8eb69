r"""CIFAR-10: a small ResNet (with normalisation) and AdamW, with crop + flip augmentation.

Run it (the first run downloads CIFAR-10 through TFDS; use a GPU):

    adamlab train --config configs/cifar10.py --workdir runs/cifar10 --config.data.download=True

Expected: about 93% test accuracy after 100 epochs. This is the target, not yet measured here:
the machine this was written on has no network (and no accelerator).
"""

import pathlib

import ml_collections

from adamlab.config_dict import load_config_file

# The config this one builds on (loaded by path: configs/ is not a package).
_BASE = pathlib.Path(__file__).with_name("digits.py")

# A target, not a measurement (no data offline and no accelerator where this was written).
RESULT = "target: ~0.93 test accuracy (not yet measured here)"


def get_config() -> ml_collections.ConfigDict:
    """Returns digits' config with what changes for CIFAR-10."""
    config = load_config_file(_BASE)
    config.data.name = "cifar10"
    # Not bundled: pass --config.data.download=True on first use (TFDS then caches it).
    config.data.download = False
    config.data.augment = True  # Random crop (4-pixel padding) + horizontal flip.

    # A new model section: the CNN's fields (features, ...) are not fields of the ResNet.
    config.model = model = ml_collections.ConfigDict()
    model.name = "resnet"  # CIFAR-style ResNet with BatchNorm (He et al. 2016).
    model.dtype = "bfloat16"  # Faster on GPUs/TPUs; params and optimizer stay float32.
    model.stage_sizes = (3, 3, 3)  # Residual blocks per stage: ResNet-20.
    model.num_filters = 16  # Channels of the first stage; doubled at each later stage.

    config.optimizer.name = "adamw"  # Decoupled weight decay.
    config.optimizer.learning_rate = 2e-3  # Peak learning rate.
    config.optimizer.warmup_steps = 1_000  # ~2.5 epochs of warmup.
    config.optimizer.weight_decay = 5e-2  # Decoupled decay (AdamW-style).

    config.train.batch_size = 128  # Global batch.
    config.train.num_epochs = 100.0  # 100 x 352 steps.
    config.train.eval_batch_size = 1000  # 10 batches for the 10k test images.
    config.train.log_every_steps = 100  # Train metrics every 100 steps.
    config.train.eval_every_steps = 1_000  # Validation (and checkpoint) every ~3 epochs.
    config.train.checkpoint_every_steps = 1_000  # Checkpoint every ~3 epochs.
    return config
