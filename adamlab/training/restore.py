"""A saved run in one call, for a notebook: its config, model, variables and optimizer state.

    run = adamlab.restore("runs/digits", checkpoint="best")
    logits = run.model.apply(run.variables, images, train=False)

Opened read-only: restoring never changes the run directory, also while it is training.
docs/training.md shows the same checkpoint read with orbax alone.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import ml_collections

from adamlab.training import experiment as experiment_lib
from adamlab.training import members, run_io


@dataclasses.dataclass(frozen=True)
class RestoredRun:
    """A restored run. For a run of several members (compare, sweep) every array leads with the
    grid axes [values, seeds] and `implementation` picks whose state this is."""

    config: ml_collections.ConfigDict
    model: Any  # The linen module: model.apply(variables, images, train=False).
    variables: dict[str, Any]  # {"params": ..., "batch_stats": ...} (numpy).
    # At the optimizer's evaluation point (Schedule-Free's average x, not the params y it
    # trains: `steps.evaluation_params`); its BatchNorm statistics are those kept in training
    # (`adamlab evaluate` recomputes them at x).
    params: Any
    opt_state: Any  # None unless optimizer_state=True.
    step: int
    implementation: str


def restore(
    workdir: str | os.PathLike,
    checkpoint: str | int = "latest",
    *,
    optimizer_state: bool = False,
    implementation: str | None = None,
) -> RestoredRun:
    """Restores `checkpoint` ("latest", "best" or a step) of the run in `workdir`.

    Raises:
      FileNotFoundError: no config.json or no such checkpoint (`CheckpointVanishedError`: a step
      asked for by number was deleted while read; "latest" and "best" are looked up again);
      CheckpointCorruptError: the checkpoint is damaged (the message names an intact one).
    """
    config = run_io.read_config(workdir)
    experiment = experiment_lib.build_experiment(config)
    implementations = experiment.who.implementations
    implementation = implementation or implementations[0]
    if implementation not in implementations:
        raise ValueError(
            f"implementation={implementation!r}: the run trained {', '.join(implementations)}"
        )
    target = experiment_lib.abstract_members(experiment)
    with experiment_lib.make_checkpointer(workdir, config, read_only=True) as checkpointer:
        step, carry, _ = checkpointer.restore_with_step(target, checkpoint)
    state = carry.states[implementations.index(implementation)]
    params = members.evaluation_point(state, experiment.engine.eval_params, experiment.who.grid)
    variables = {"params": params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    return RestoredRun(
        config=config,
        model=experiment.model,
        variables=variables,
        params=params,
        opt_state=state.opt_state if optimizer_state else None,
        step=step,
        implementation=implementation,
    )
