"""Config files and sections: where a config comes from and how builders read it.

A config is a shipped one by name (`adamlab.configs`, the repository's `configs/` installed as
package data: `--config digits` works from any directory) or any file by path; `as_dict` reads
a section given as a ConfigDict or a mapping, as the builders accept either.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import ml_collections


def as_dict(config: Any, what: str) -> dict[str, Any]:
    """`config` as a new dict; `what` ("model config", ...) names it in the error otherwise."""
    if hasattr(config, "to_dict"):
        return config.to_dict()
    if isinstance(config, Mapping):
        return dict(config)
    raise TypeError(f"{what} must be a ConfigDict or a mapping, got {type(config).__name__}")


def shipped_configs() -> tuple[str, ...]:
    """Names of the configs shipped with adamlab (`configs/*.py`), for `--config NAME`."""
    root = importlib.resources.files("adamlab.configs")
    return tuple(
        sorted(
            p.name[:-3]
            for p in root.iterdir()
            if p.name.endswith(".py") and not p.name.startswith("_")
        )
    )


def resolve_config_path(name_or_path: str | os.PathLike) -> pathlib.Path:
    """A config file from a path (`configs/digits.py`) or a shipped config's name (`digits`).

    Raises:
      FileNotFoundError: neither a file nor a shipped name; the message lists the names.
    """
    path = pathlib.Path(name_or_path)
    if path.is_file():
        return path
    name = str(name_or_path)
    if name.endswith(".py"):
        name = pathlib.Path(name).stem if not path.parent.parts else ""
    if name in shipped_configs():
        return pathlib.Path(str(importlib.resources.files("adamlab.configs") / f"{name}.py"))
    raise FileNotFoundError(
        f"config {str(name_or_path)!r} is neither a file nor a shipped config; shipped: "
        f"{', '.join(shipped_configs())}"
    )


def load_config_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """Calls `get_config()` of a Python config file, as `--config=path` does.

    Config files use it to build on a sibling (`mnist.py` starts from `digits.py`) by path,
    which works in a clone and in the installed package alike.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"_adamlab_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {str(path)!r} defines no get_config()")
    return module.get_config()


def load_config(name_or_path: str | os.PathLike) -> ml_collections.ConfigDict:
    """`load_config_file(resolve_config_path(name_or_path))`: `load_config("digits")`."""
    return load_config_file(resolve_config_path(name_or_path))
