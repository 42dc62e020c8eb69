"""One short training run of a study, in memory: `fit(...) -> RunResult`.

Studies train many small models (a grid of settings times seeds), so this loop keeps only what
they compare: the mean training loss of every epoch (Kingma & Ba plot it against epochs), the
final validation and test metrics, and the final parameters. It writes no checkpoints or logs
(a study writes one report); use `adamlab.train.train_and_evaluate` for a run to keep.

It reuses the library's pieces unchanged: the TFDS stream (`data.train_batches`), the pure
train/eval steps inside the "jit" engine, and `evaluate_split`. Each run uses one device: the
models are small, and on CPU several simulated devices only add synchronisation.

A run whose training loss becomes non-finite stops at the end of that epoch and comes back with
`diverged=True` (and NaN metrics), so a learning-rate grid can include rates that blow up.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax

from adamlab import data
from adamlab.training import engines
from adamlab.training.evaluate import evaluate_split
from adamlab.training.train_state import create_train_state

EVAL_BATCH_SIZE = 256


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What a study keeps of a run."""

    epoch_loss: list[float]  # Mean training cross-entropy of each epoch (NaN after divergence).
    metrics: dict[str, float]  # validation_/test_ loss and accuracy, param_norm, steps, seconds.
    diverged: bool
    params: Any  # Final parameters (host numpy).


def fit(
    *,
    data_config: Any,
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    batch_size: int,
    num_epochs: int,
    seed: int,
    params: Any = None,
) -> RunResult:
    """Trains `model` with `tx` for `num_epochs` epochs of `data_config`'s training split.

    Args:
      data_config: the data section of a config (`data.default_data_config()` and overrides).
      model: a linen module `model.apply(variables, x, train=...)` (no BatchNorm needed).
      tx: the optimizer, with `schedule` as its learning rate (the step logs `schedule(step)`).
      batch_size: examples per step; an epoch is `train_examples // batch_size` steps.
      num_epochs: int >= 1.
      seed: initialisation, data order and dropout.
      params: start from these parameters instead of the seed's initialisation (the optimizer
        state is initialised for them); used to fine-tune.

    Returns:
      RunResult; metrics has validation_* (if the config holds out a validation split) and test_*
      loss/accuracy, "param_norm" (global L2 norm of the final parameters), "steps", "seconds".
    """
    if isinstance(num_epochs, bool) or not isinstance(num_epochs, int) or num_epochs < 1:
        raise ValueError(f"num_epochs={num_epochs!r} must be an int >= 1")
    start = time.perf_counter()
    info = data.dataset_info(data_config)
    per_epoch = data.steps_per_epoch(info, batch_size)
    engine = engines.make_engine(
        "jit", model, tx, schedule, info.num_classes, devices=jax.local_devices()[:1]
    )
    state = create_train_state(seed, model, tx, info.image_shape)
    if params is not None:
        state = state.replace(params=params, opt_state=tx.init(params))
    state = engine.put_state(state)
    batches = data.train_batches(
        data_config, global_batch_size=batch_size, seed=seed, num_local_devices=1
    )
    epoch_loss: list[float] = []
    diverged = False
    for _ in range(num_epochs):
        losses = []
        for _ in range(per_epoch):
            state, step_metrics = engine.train_step(state, engine.put_batch(next(batches)))
            losses.append(step_metrics["loss"])
        mean = float(np.mean(jax.device_get(losses)))
        epoch_loss.append(mean)
        if not math.isfinite(mean):
            diverged = True
            break
    epoch_loss += [math.nan] * (num_epochs - len(epoch_loss))
    host = engine.get_state(state)
    metrics: dict[str, float] = {}
    splits = ("validation", "test") if info.num_validation else ("test",)
    for split in splits:
        if diverged:
            metrics.update({f"{split}_loss": math.nan, f"{split}_accuracy": math.nan})
            continue
        result = evaluate_split(engine, state, data_config, split=split, batch_size=EVAL_BATCH_SIZE)
        metrics.update({f"{split}_{k}": float(result[k]) for k in ("loss", "accuracy")})
    metrics["param_norm"] = float(optax.tree.norm(host.params))
    metrics["steps"] = float(per_epoch * num_epochs)
    metrics["seconds"] = time.perf_counter() - start
    return RunResult(epoch_loss, metrics, diverged, host.params)
