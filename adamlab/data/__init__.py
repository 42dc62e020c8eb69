"""adamlab.data: TFDS input pipelines, the offline `digits` dataset, per-device batch layouts.

    from adamlab import data
    config = data.default_data_config()          # digits: no network needed
    info = data.dataset_info(config)
    batches = data.train_batches(config, global_batch_size=128, seed=0, layout="pmap")
    for batch in data.eval_batches(config, split="test", global_batch_size=128):
        ...  # batch["mask"] marks real examples; padding has mask False.

Importing this package hides GPUs from TensorFlow (TF only runs tf.data here) and registers
the `digits` TFDS builder, so `tfds.builder("digits", data_dir=...)` works.
"""

from adamlab.data import _tf_setup  # noqa: F401  (first: hides GPUs from TF before any TF op)
from adamlab.data.config import DATASETS, default_data_config
from adamlab.data.digits import Digits
from adamlab.data.input_pipeline import (
    LAYOUTS,
    eval_batches,
    steps_per_epoch,
    train_batches,
    train_streams,
)
from adamlab.data.preprocess import AUGMENTATION, NORMALIZATION
from adamlab.data.source import SPLITS, DatasetInfo, DatasetNotPreparedError, dataset_info

__all__ = [
    "AUGMENTATION",
    "DATASETS",
    "LAYOUTS",
    "NORMALIZATION",
    "SPLITS",
    "DatasetInfo",
    "DatasetNotPreparedError",
    "Digits",
    "dataset_info",
    "default_data_config",
    "eval_batches",
    "steps_per_epoch",
    "train_batches",
    "train_streams",
]
