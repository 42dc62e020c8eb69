"""Transfer learning as config (as big_vision does it): start from another run's parameters.

The optional `init` section names a run (`init.workdir`, `init.checkpoint`); every parameter
whose path exists there with the same shape and matches no `init.dont_load` regex is loaded,
those matching `init.frozen` get zero updates, and the optimizer state starts fresh.
docs/training.md#transfer-learning gives the rules and why.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

import jax
import numpy as np

from adamlab.training.optimizers import param_labels, path_of


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


@functools.cache
def _log_once(message: str) -> None:
    """Logs `message` the first time only: each seed's merge reports the same leaves."""
    logging.info(message)


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
    _log_once(
        f"init from {init.workdir}: loaded {loaded}; re-initialised {skipped}; frozen {frozen_keys}"
    )
    return merged
