"""Evaluation: a model state on one split, and a saved run's checkpoint from its workdir.

`evaluate_split` is what the training loop calls on validation/test; `evaluate_checkpoint` is
`adamlab evaluate`: it rebuilds the run from its `config.json`, restores a checkpoint (latest,
best or a step), evaluates a split and writes `workdir/eval_<split>_<step>.json`.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import ml_collections

from adamlab import data
from adamlab.training import metrics, run_io
from adamlab.training.engines import Engine

SPLITS = ("test", "validation", "train")


class NoCheckpointError(FileNotFoundError):
    """The workdir holds no checkpoint to evaluate."""


def evaluate_split(
    engine: Engine,
    state: Any,
    data_config: ml_collections.ConfigDict,
    *,
    split: str,
    batch_size: int,
) -> dict[str, Any]:
    """Loss, accuracy, macro precision/recall/F1 and confusion matrix of `state` on `split`.

    Every example counts exactly once: the last batch is padded and the padding masked out.

    Args:
      engine: the engine `state` lives in (its `eval_step` and batch layout are used).
      state: the model state in the engine's layout (`engine.put_state`).
      data_config: the `data` part of the experiment config.
      split: "train", "validation" or "test".
      batch_size: global eval batch size (divisible by the engine's devices).
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not a split; allowed: {', '.join(SPLITS)}")
    total = None
    batches = data.eval_batches(
        data_config, split=split, global_batch_size=batch_size, layout=engine.batch_layout
    )
    for batch in batches:
        total = metrics.accumulate_eval_sums(
            total, engine.eval_step(state, engine.put_batch(batch))
        )
    if total is None:
        raise ValueError(f"split {split!r} of dataset {data_config.name!r} is empty")
    return metrics.metrics_from_sums(total)


def evaluate_checkpoint(
    workdir: str | os.PathLike,
    *,
    checkpoint: str | int = "latest",
    split: str = "test",
) -> tuple[dict[str, Any], pathlib.Path]:
    """Evaluates a saved checkpoint of the run in `workdir`; writes and returns its metrics.

    Args:
      workdir: a run directory written by `train_and_evaluate` (config.json + checkpoints/).
      checkpoint: "latest", "best" (by the run's `train.best_metric`) or a step number.
      split: "test", "validation" or "train".

    Returns:
      (metrics, path): metrics as `evaluate_split` plus "step", "split" and "checkpoint"; path of
      the JSON file written, `workdir/eval_<split>_<step>.json`.

    Raises:
      FileNotFoundError: no config.json in `workdir`; NoCheckpointError: no checkpoint (or not
      the one asked for).
    """
    from adamlab.training import train  # Here, not at the top: train imports this module.

    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not a split; allowed: {', '.join(SPLITS)}")
    workdir = pathlib.Path(workdir)
    config = run_io.read_config(workdir)
    experiment = train.build_experiment(config)
    checkpointer = train.make_checkpointer(workdir, config)
    try:
        try:
            step = checkpointer.resolve_step(checkpoint)
        except FileNotFoundError as e:
            raise NoCheckpointError(f"Run {str(workdir)!r}: {e}") from None
        state, _ = checkpointer.restore(train.abstract_state(config, experiment), step=step)
    finally:
        checkpointer.close()
    engine = experiment.engine
    result = evaluate_split(
        engine,
        engine.put_state(state),
        config.data,
        split=split,
        batch_size=config.train.eval_batch_size,
    )
    result = {"step": step, "split": split, "checkpoint": str(checkpoint), **result}
    path = workdir / f"eval_{split}_{step}.json"
    run_io.write_json(path, result)
    return result, path


def format_metrics(result: dict[str, Any]) -> str:
    """A human-readable table of an evaluation: the scalars, then the confusion matrix."""
    lines = [f"{result.get('split', '?')} @ step {result.get('step', '?')}"]
    for name in ("loss", "accuracy", "precision", "recall", "f1", "count"):
        if name in result:
            value = result[name]
            lines.append(
                f"  {name:<10} {value:.4f}" if isinstance(value, float) else f"  {name:<10} {value}"
            )
    confusion = result.get("confusion")
    if confusion:
        width = max(len(str(v)) for row in confusion for v in row) + 1
        lines.append("  confusion [true, predicted]:")
        lines += ["    " + "".join(f"{v:>{width}}" for v in row) for row in confusion]
    return "\n".join(lines)
