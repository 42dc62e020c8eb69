"""Transfer learning as config (as big_vision does it): start from another run's parameters.

The optional `init` section of a config:

    init.workdir = "runs/pretrain"       # a finished (or checkpointed) single run; None: off
    init.checkpoint = "best"             # "latest", "best" or a step
    init.dont_load = ("Dense_1/.*",)     # regexes of parameter paths NOT loaded (re-initialised)
    init.frozen = ("Conv_.*",)           # regexes of parameter paths that never change

Paths are "/"-joined parameter keys (`Conv_0/kernel`, `Dense_1/bias`), matched with
`re.search`. A parameter is loaded when its path exists in the pretrained run with the same
shape and matches no `dont_load` pattern; every other parameter keeps its fresh initialisation
from the run's seed (a new head for new classes, say). Frozen parameters get zero updates
through `optax.set_to_zero()`: "frozen" is one label of the optimizer's partition of the
parameters (`optimizers.param_labels`, beside `optimizer.groups`).

Optimizer state policy: the optimizer state always starts fresh (zero moments, count 0) for
every parameter, loaded ones included; the pretrained run's optimizer state is never loaded.
A fine-tune is a new optimization problem (new data, often a new learning rate), and Adam's
moments of the old loss would bias its first steps. BatchNorm statistics are not transferred.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import jax
import numpy as np

from adamlab.training.optimizers import param_labels, path_of

_logged: set[tuple] = set()  # What was logged already: each seed's merge logs once per setup.


def enabled(init: Any) -> bool:
    """Whether `init` (a config section or None) names a run to start from."""
    return init is not None and init.get("workdir") is not None


def frozen_patterns(init: Any) -> tuple[str, ...]:
    """The `init.frozen` regexes (none without an init section)."""
    return tuple(init.get("frozen") or ()) if init is not None else ()


def validate_init(init: Any) -> None:
    """Raises ValueError naming the `init` field that is invalid."""
    if init is None:
        return
    for field in ("dont_load", "frozen"):
        patterns = init.get(field) or ()
        if isinstance(patterns, str):
            raise ValueError(f"init.{field}={patterns!r} must be a tuple of regexes, not a string")
        for pattern in patterns:
            try:
                re.compile(pattern)
            except (re.error, TypeError) as e:
                raise ValueError(f"init.{field} has an invalid regex {pattern!r}: {e}") from None
    checkpoint = init.get("checkpoint", "latest")
    if checkpoint not in ("latest", "best") and not (
        isinstance(checkpoint, int) and not isinstance(checkpoint, bool) and checkpoint >= 0
    ):
        raise ValueError(f"init.checkpoint={checkpoint!r} must be 'latest', 'best' or a step")
    if init.get("dont_load") and not enabled(init):
        raise ValueError("init.dont_load needs init.workdir (the run to load parameters from)")


def _flat(tree: Any) -> dict[str, Any]:
    return {path_of(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def merge_params(fresh: Any, pretrained: Any, init: Any) -> Any:
    """`fresh` with every loadable leaf replaced by the pretrained one (see module docstring).

    Logs the loaded, skipped (not in the pretrained run, reshaped, or `dont_load`) and frozen
    leaves once.
    """
    dont_load = [re.compile(p) for p in init.get("dont_load") or ()]
    saved = _flat(pretrained)
    loaded, skipped = [], []

    def choose(path, leaf):
        key = path_of(path)
        source = saved.get(key)
        ok = source is not None and np.shape(source) == np.shape(leaf)
        if ok and not any(p.search(key) for p in dont_load):
            loaded.append(key)
            return np.asarray(source, np.asarray(leaf).dtype)
        skipped.append(key)
        return leaf

    merged = jax.tree_util.tree_map_with_path(choose, fresh)
    if not loaded:
        raise ValueError(
            f"init.workdir={init.workdir!r}: no parameter could be loaded (none matches a "
            f"pretrained leaf of the same shape outside init.dont_load); the pretrained run must "
            f"be a single run of a compatible model. Pretrained leaves: {sorted(saved)}"
        )
    labels = _flat(param_labels(frozen=frozen_patterns(init))(fresh))
    frozen_keys = [k for k, label in labels.items() if label == "frozen"]
    report = (str(init.workdir), tuple(loaded), tuple(skipped), tuple(frozen_keys))
    if report not in _logged:
        _logged.add(report)
        logging.info(
            "init from %s: loaded %s; re-initialised %s; frozen %s",
            init.workdir,
            loaded,
            skipped,
            frozen_keys,
        )
    return merged
