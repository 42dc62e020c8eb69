"""Keep TensorFlow a quiet, CPU-only input-pipeline engine.

TF is only used by tf.data here. Left alone it would grab (almost) all GPU memory on import of
its first op and log at INFO level. This module runs before anything else in `adamlab.data`
touches TF: it hides every GPU from TF (JAX keeps them) and turns TF's own logging down.
"""

import importlib.util
import os
import warnings

# Must be set before TF's C++ runtime loads; setdefault keeps a user's explicit choice.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN kernels speed up TF's matmuls and convolutions, which tf.data here never runs; left on,
# TF announces them on stderr at every start (through absl, past TF_CPP_MIN_LOG_LEVEL).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

LEGACY_KERAS = "TF_USE_LEGACY_KERAS"


def _skips_keras_at_import() -> bool:
    """Whether TF's import is to skip Keras 3, which tf.data never uses (docs/performance.md):
    TF skips it when `LEGACY_KERAS` asks for tf_keras and tf_keras is not installed. Not when
    the user set the variable (their choice) or has tf_keras (TF would import that instead)."""
    return LEGACY_KERAS not in os.environ and importlib.util.find_spec("tf_keras") is None


# Asked for during TF's import only: `tf.keras`, read later, still finds Keras 3 (TF's lazy
# loader reads the variable on first use and imports Keras then).
_skip_keras = _skips_keras_at_import()
if _skip_keras:
    os.environ[LEGACY_KERAS] = "1"
try:
    import tensorflow as tf
    from tensorflow.python.autograph.core import config as autograph_config
finally:
    if _skip_keras:
        del os.environ[LEGACY_KERAS]


def hide_gpus_from_tensorflow() -> None:
    """Makes TF see no GPU, so that it never allocates GPU memory that JAX needs."""
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError as e:  # TF already initialised its devices (someone used TF before us).
        if tf.config.get_visible_devices("GPU"):
            warnings.warn(
                f"adamlab.data could not hide GPUs from TensorFlow ({e}); TF may take GPU "
                "memory. Import adamlab.data before running any TensorFlow op.",
                stacklevel=2,
            )


hide_gpus_from_tensorflow()
tf.get_logger().setLevel("ERROR")
# tf.data passes every mapped function through AutoGraph, which writes its conversion to
# $TMPDIR/__autograph_generated_file*.py and deletes it only at a clean exit (atexit): every
# killed or os._exit'ed run left them behind. adamlab's and tfds's dataset functions have no
# tensor-dependent Python control flow, so there is nothing to convert: skip both packages (as
# TF's own converter tests do). The batches are unchanged (tests/test_reliability.py).
autograph_config.CONVERSION_RULES = (
    autograph_config.DoNotConvert("adamlab"),
    autograph_config.DoNotConvert("tensorflow_datasets"),
    *autograph_config.CONVERSION_RULES,
)
