"""A config section as a plain dict, whether it came as an `ml_collections.ConfigDict` or a mapping.

The builders (`create_model`, `make_optimizer`, the baselines) accept either, so that library
users can pass a dict and the CLI can pass the parsed config; they all read it through `as_dict`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def as_dict(config: Any, what: str) -> dict[str, Any]:
    """`config` as a new dict; `what` ("model config", ...) names it in the error otherwise."""
    if hasattr(config, "to_dict"):
        return config.to_dict()
    if isinstance(config, Mapping):
        return dict(config)
    raise TypeError(f"{what} must be a ConfigDict or a mapping, got {type(config).__name__}")
