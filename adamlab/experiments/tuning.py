"""The benchmark's tuning protocol: search spaces, quasi-random trials, selection on validation;
docs/internals.md describes the scales, the Halton design and the self-tuning default setting.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import qmc

from adamlab.optim import registry

SCALES: tuple[str, ...] = ("log", "log1m", "linear")


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """One optimizer's search space: fixed optimizer fields and field -> (low, high, scale),
    checked when built."""

    label: str
    fixed: dict[str, Any]
    ranges: dict[str, tuple[float, float, str]]

    @classmethod
    def from_config(cls, label: str, section: Any) -> SearchSpace:
        """From a config's `benchmark.search_spaces.<label>` ({"fixed": ..., "ranges": ...})."""
        section = section.to_dict() if hasattr(section, "to_dict") else dict(section)
        fixed = dict(section.get("fixed") or {})
        ranges = {k: tuple(v) for k, v in (section.get("ranges") or {}).items()}
        return cls(label, fixed, ranges)

    def __post_init__(self) -> None:
        """Raises ValueError naming the label and field of a malformed range."""
        from adamlab.training import optimizers

        if "name" not in self.fixed:
            raise ValueError(f"search space {self.label!r}: fixed.name (the optimizer) is missing")
        if not self.ranges:
            raise ValueError(f"search space {self.label!r} has no ranges to search")
        for field, spec in self.ranges.items():
            where = f"search space {self.label!r}: {field}={spec!r}"
            if field not in optimizers.SWEEPABLE:
                raise ValueError(
                    f"{where}: not sweepable in one program; sweepable: "
                    + ", ".join(optimizers.SWEEPABLE)
                )
            if len(spec) != 3 or spec[2] not in SCALES:
                raise ValueError(f"{where}: expected (low, high, scale), scale in {SCALES}")
            low, high, scale = spec
            if not (math.isfinite(low) and math.isfinite(high) and low <= high):
                raise ValueError(f"{where}: needs finite low <= high")
            if scale == "log" and low <= 0:
                raise ValueError(f"{where}: a log scale needs low > 0")
            if scale == "log1m" and not high < 1:
                raise ValueError(f"{where}: a log1m scale needs high < 1")

    def describe(self) -> str:
        """`name=adam; learning_rate in [1e-4, 1e-1] log; ...` (for reports)."""
        fixed = ", ".join(f"{k}={v}" for k, v in self.fixed.items())
        ranges = "; ".join(
            f"{k} in [{lo:.3g}, {hi:.3g}] {scale}" for k, (lo, hi, scale) in self.ranges.items()
        )
        return f"{fixed}; {ranges}"


def search_spaces() -> dict[str, dict]:
    """Benchmark label -> {"fixed": optimizer fields, "ranges": field -> (low, high, scale)}:
    the spaces of every optimizer of the name table, its name and implementation fixed."""
    spaces = {}
    for name in registry.names("optax"):
        entry = registry.entry(name)
        fixed = {"name": name, "implementation": "ours" if entry.ours else "optax"}
        for label, space in entry.search_spaces.items():
            spaces[label] = {"fixed": fixed | space["fixed"], "ranges": dict(space["ranges"])}
    return spaces


def scale_unit(u: np.ndarray, low: float, high: float, scale: str) -> np.ndarray:
    """Points u in [0, 1) mapped onto [low, high] on `scale` (see the module docstring)."""
    u = np.asarray(u, np.float64)
    if scale == "log":
        return np.exp(np.log(low) + u * (np.log(high) - np.log(low)))
    if scale == "log1m":  # 1 - value is log-uniform in [1 - high, 1 - low]; u = 0 is low.
        start, stop = np.log1p(-low), np.log1p(-high)
        return 1.0 - np.exp(start + u * (stop - start))
    if scale == "linear":
        return low + u * (high - low)
    raise ValueError(f"scale={scale!r} is unknown; allowed: {', '.join(SCALES)}")


def halton_trials(space: SearchSpace, num_trials: int, seed: int) -> dict[str, tuple[float, ...]]:
    """`num_trials` points of a scrambled Halton sequence (seeded), field -> values.

    The same (space, num_trials, seed) gives the same trials on every machine; the first
    `num_trials` points of a larger budget are these plus more (a sequence, not a sample).
    """
    fields = list(space.ranges)
    points = qmc.Halton(d=len(fields), scramble=True, seed=seed).random(num_trials)
    return {
        field: tuple(float(x) for x in scale_unit(points[:, j], *space.ranges[field]))
        for j, field in enumerate(fields)
    }


def default_setting(space: SearchSpace) -> dict[str, float]:
    """The optimizer's declared default for every field `space` tunes, warmup aside (a run
    without search keeps the workload's schedule): field -> value.

    The defaults are those of the optimizer's constructor (`adamlab.optim`'s for ours, optax's
    for the baselines) and its table entry's `defaults` (the learning rate, which no
    constructor defaults, and SGD's momentum, None in optax).

    Raises:
      ValueError: a tuned field with no declared default.
    """
    name = space.fixed["name"]
    entry = registry.entry(name)
    parameters = inspect.signature(entry.ours or entry.twin).parameters
    declared = {k: p.default for k, p in parameters.items() if p.default is not p.empty}
    declared |= entry.defaults
    fields = [f for f in space.ranges if f != "warmup_fraction"]
    missing = [f for f in fields if declared.get(f) is None]
    if missing:
        raise ValueError(
            f"search space {space.label!r}: {name} declares no default {', '.join(missing)}"
        )
    return {f: float(declared[f]) for f in fields}


def select_trial(
    steps_to_target: Sequence[float],
    validation_accuracy: Sequence[float],
    validation_loss: Sequence[float],
) -> int:
    """The selected trial, on validation only: the fewest steps to the target; ties, and the
    case where no trial reaches it, go to the best final validation accuracy, then loss.
    Diverged trials (NaN metrics) are never selected unless all diverged.
    """
    steps = np.asarray(steps_to_target, np.float64)
    accuracy = np.nan_to_num(np.asarray(validation_accuracy, np.float64), nan=-np.inf)
    loss = np.nan_to_num(np.asarray(validation_loss, np.float64), nan=np.inf)
    steps = np.where(accuracy == -np.inf, np.inf, steps)
    order = np.lexsort((loss, -accuracy, steps))  # The last key is the primary one.
    return int(order[0])


def trial_values(trials: Mapping[str, Sequence[float]], index: int) -> dict[str, float]:
    """The hyperparameters of trial `index`: field -> value."""
    return {field: float(values[index]) for field, values in trials.items()}
