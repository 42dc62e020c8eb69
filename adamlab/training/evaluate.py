"""Evaluation: every member of a run on one split, and a saved run's checkpoint.

`evaluate_members` is what the training loop calls on validation/test; `evaluate_checkpoint` is
`adamlab evaluate`. Both evaluate each member at its optimizer's evaluation point (the engine's
`eval_params`: Schedule-Free's average x, not the params y it trains), with BatchNorm's
statistics recomputed there over a few training batches (`batch_stats_batches`).
"""

from __future__ import annotations

import itertools
import logging
import os
import pathlib
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import numpy as np

from adamlab import data
from adamlab.training import checkpoint as checkpoint_lib
from adamlab.training import experiment as experiment_lib
from adamlab.training import metrics, run_io

SPLITS = ("test", "validation", "train")
# Training batches over which BatchNorm's running statistics (momentum 0.9) are recomputed at
# an evaluation point other than the params: the statistics of the params keep 0.9^50 = 0.5%.
BATCH_STATS_BATCHES = 50


class NoCheckpointError(FileNotFoundError):
    """The workdir holds no checkpoint to evaluate."""


class EvaluationError(ValueError):
    """What was asked of a run does not exist in it (a split, a ranked checkpoint)."""


def batch_stats_batches(config: Any, engine: Any, carry: Any) -> list[dict]:
    """The first `BATCH_STATS_BATCHES` full training batches (in the split's order, no
    augmentation), over which BatchNorm's statistics are recomputed at the evaluation point
    before an evaluation; none where the optimizer evaluates its params or the model keeps no
    statistics."""
    if engine.eval_params is None or not jax.tree.leaves(carry.states[0].batch_stats):
        return []
    batches = data.eval_batches(
        config.data, split="train", global_batch_size=config.train.batch_size
    )
    full = (b for b in batches if np.all(b["mask"]))
    return list(itertools.islice(full, BATCH_STATS_BATCHES))


def evaluate_members(
    engine: Any,
    carry: Any,
    batches: Iterable[dict],
    names: Sequence[tuple],
    stats_batches: Sequence[dict] = (),
) -> list[dict[str, Any]]:
    """Loss, accuracy, macro precision/recall/F1 and confusion matrix of every member.

    Every example counts exactly once: the last batch is padded and the padding masked out.

    Args:
      engine: the engine `carry` lives in (`engine.put_members`).
      batches: host eval batches [B, ...] with a "mask" (`data.eval_batches`).
      names: the members, `(implementation index, grid index, name)` as
        `experiment.MemberGrid.names()` lists them; the result follows their order.
      stats_batches: host training batches over which BatchNorm's statistics are first
        recomputed at the evaluation point (`batch_stats_batches`), on a copy of `carry`.
    """
    if stats_batches:
        carry = engine.recompute_batch_stats(carry, [engine.put_batch(b) for b in stats_batches])
    totals = None
    for batch in batches:
        sums = jax.device_get(engine.evaluate(carry, engine.put_batch(batch)))
        totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
    if totals is None:
        raise ValueError("the split is empty: nothing to evaluate")
    out = []
    for m, index, _ in names:
        one = {k: np.asarray(v)[index] for k, v in totals[m].items()}
        out.append(metrics.metrics_from_sums(one))
    return out


def evaluate_checkpoint(
    workdir: str | os.PathLike,
    *,
    checkpoint: str | int = "latest",
    split: str = "test",
) -> tuple[dict[str, Any], pathlib.Path | None]:
    """Evaluates a saved checkpoint of the run in `workdir`; writes and returns its metrics.

    The checkpoints are opened read-only (nothing is created, deleted or renamed there), so a
    run can be evaluated while it trains; the one file written is the result. On one device:
    the training batch size does not constrain evaluation.

    Args:
      workdir: a run directory written by `adamlab train` (config.json + checkpoints/).
      checkpoint: "latest", "best" (by the run's `train.best_metric`) or a step number.
      split: "test", "validation" or "train".

    Returns:
      (metrics, path): metrics of the run (for a run of several members, "members": name ->
      metrics) plus "step", "split" and "checkpoint"; path of the JSON file written,
      `workdir/eval_<split>_<step>.json`, or None if the run directory is not writable.

    Raises:
      FileNotFoundError: no config.json in `workdir`; NoCheckpointError: no checkpoint (or not
      the one asked for); CheckpointCorruptError: the checkpoint is damaged (names an intact
      one); ValueError: a split the run does not have.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not a split; allowed: {', '.join(SPLITS)}")
    workdir = pathlib.Path(workdir)
    config = run_io.read_config(workdir)
    experiment = experiment_lib.build_experiment(config, devices=jax.local_devices()[:1])
    if split == "validation" and not experiment.info.num_validation:
        raise EvaluationError(
            f"run {str(workdir)!r} has no validation split (data.validation_fraction="
            f"{config.data.get('validation_fraction')}); use --split test"
        )
    target = experiment_lib.abstract_members(experiment)
    with experiment_lib.make_checkpointer(workdir, config, read_only=True) as checkpointer:
        try:  # "latest"/"best" are looked up again if the trainer deletes the step meanwhile.
            step, carry, _ = checkpointer.restore_with_step(target, checkpoint)
        except FileNotFoundError as e:
            raise NoCheckpointError(f"Run {str(workdir)!r}: {e}") from None
        except (checkpoint_lib.CheckpointCorruptError, checkpoint_lib.CheckpointMismatchError):
            raise
        except ValueError as e:  # "best" of a run that ranks no checkpoint.
            raise EvaluationError(f"Run {str(workdir)!r}: {e}") from None
    engine = experiment.engine
    batches = data.eval_batches(
        config.data, split=split, global_batch_size=config.train.eval_batch_size
    )
    names = experiment.who.names()
    stats_batches = batch_stats_batches(config, engine, carry)
    results = evaluate_members(engine, engine.put_members(carry), batches, names, stats_batches)
    result = (
        results[0]
        if len(names) == 1
        else {"members": dict(zip([n for *_, n in names], results, strict=True))}
    )
    result = {"step": step, "split": split, "checkpoint": str(checkpoint), **result}
    path = workdir / f"eval_{split}_{step}.json"
    try:
        run_io.write_json(path, result)
    except OSError as e:  # A read-only run directory: the metrics are still returned.
        logging.warning("could not write %s (%s); the metrics are printed only", path, e)
        return result, None
    return result, path


def format_metrics(result: dict[str, Any]) -> str:
    """A human-readable table of an evaluation: the scalars, then the confusion matrix."""
    lines = [f"{result.get('split', '?')} @ step {result.get('step', '?')}"]
    for name in ("loss", "accuracy", "precision", "recall", "f1", "count"):
        if name in result:
            value = result[name]
            shown = f"{value:.4f}" if isinstance(value, float) else value
            lines.append(f"  {name:<10} {shown}")
    confusion = result.get("confusion")
    if confusion:
        width = max(len(str(v)) for row in confusion for v in row) + 1
        lines.append("  confusion [true, predicted]:")
        lines += ["    " + "".join(f"{v:>{width}}" for v in row) for row in confusion]
    return "\n".join(lines)
