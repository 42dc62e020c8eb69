"""Groups of runs: what compare, sweep and the studies share on top of the one loop.

A group is one `train.run` (its members share one compiled program); an experiment is a few
groups (one per optimizer, batch size, schedule ...) that cannot share a program, run one after
another in `workdir/<group name>/`. `run_groups` checks every group's config before anything
is written, and each group resumes on its own: rerunning an interrupted experiment finishes the
unfinished groups and returns the finished ones' saved results at once.
"""

from __future__ import annotations

import functools
import logging
import pathlib
import time
from collections.abc import Mapping
from typing import Any

import ml_collections

from adamlab.experiments import report
from adamlab.training import run_io, train


def with_members(
    config: ml_collections.ConfigDict,
    *,
    seeds: tuple[int, ...] | None = None,
    implementations: tuple[str, ...] | None = None,
    sweep: Mapping[str, tuple[float, ...]] | None = None,
    **fields: Any,
) -> ml_collections.ConfigDict:
    """A copy of `config` with its `runs` section (and dotted `fields`, e.g.
    `**{"optimizer.name": "adamw"}`) set."""
    out = ml_collections.ConfigDict(config.to_dict())
    if seeds is not None:
        out.runs.seeds = tuple(seeds)
    if implementations is not None:
        out.runs.implementations = tuple(implementations)
    if sweep is not None:
        out.runs.sweep = ml_collections.ConfigDict({k: tuple(v) for k, v in sweep.items()})
    for path, value in fields.items():
        *sections, name = path.split(".")
        functools.reduce(getattr, sections, out)[name] = value
    return out


def seeds_from(config: Any, num_seeds: int) -> tuple[int, ...]:
    """`config.seed + i` for i < num_seeds."""
    if isinstance(num_seeds, bool) or not isinstance(num_seeds, int) or num_seeds < 1:
        raise ValueError(f"seeds={num_seeds!r} must be an int >= 1 (the number of seeds)")
    return tuple(config.seed + i for i in range(num_seeds))


def run_groups(
    groups: Mapping[str, ml_collections.ConfigDict],
    workdir: str | pathlib.Path,
    experiment_config: ml_collections.ConfigDict,
) -> dict[str, train.RunsResult]:
    """Trains each group in `workdir/<name>`; returns name -> RunsResult.

    Every group config is validated and built first (once: each run gets what was built),
    then `experiment_config` is written as `workdir/config.json` (a workdir holding another
    experiment or a training run is refused before anything is written).

    Raises:
      train.ConfigError: a group's config is invalid; run_io.ConfigMismatchError: the workdir
      holds something else.
    """
    experiments = {}
    for name, config in groups.items():
        try:
            experiments[name] = train.prepare(config)
        except train.ConfigError as e:
            raise train.ConfigError(f"{name}: {e}") from None
    workdir = pathlib.Path(workdir)
    if (workdir / run_io.CHECKPOINT_DIR).exists():
        raise run_io.ConfigMismatchError(
            f"{workdir} holds a training run; give this experiment its own --workdir"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    run_io.check_resumable(workdir, experiment_config)
    run_io.write_config(workdir, experiment_config)
    results = {}
    for i, (name, config) in enumerate(groups.items()):
        logging.info("group %d/%d: %s", i + 1, len(groups), name)
        results[name] = train.run(config, workdir / name, experiment=experiments[name])
        if results[name].interrupted:
            break  # A signal stopped the group: the experiment resumes from here next time.
    return results


def run_per_optimizer(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    optimizers: tuple[str, ...],
    **members: Any,
) -> dict[str, Any]:
    """One group per optimizer (`workdir/<optimizer>/`), each with the members `with_members`
    sets from `members` (seeds, implementations, sweep): what compare and sweep run.

    A workdir holding groups of optimizers not in `optimizers` is refused before anything is
    written (`report.check_request`): its report would lose them.

    Returns:
      {"workdir", "rows" (every group's member rows), "summary" ("": the caller writes it),
       "wall_time_s", "interrupted" (whether a group was), "results" (optimizer ->
       RunsResult)}.
    """
    held = sorted(p.parent.name for p in pathlib.Path(workdir).glob(f"*/{run_io.CONFIG_FILE}"))
    report.check_request(workdir, {"--optimizers": held}, {"--optimizers": optimizers})
    groups = {
        name: with_members(config, **members, **{"optimizer.name": name}) for name in optimizers
    }
    start = time.perf_counter()
    results = run_groups(groups, workdir, with_members(config, **members))
    wall = time.perf_counter() - start
    interrupted = any(r.interrupted for r in results.values()) or len(results) < len(groups)
    return {
        "workdir": pathlib.Path(workdir),
        "rows": [row for result in results.values() for row in result.rows],
        "summary": "",
        "wall_time_s": wall,
        "interrupted": interrupted,
        "results": results,
    }
