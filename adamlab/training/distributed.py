"""Multi-host setup: JAX's multi-controller runtime (`jax.distributed`), from config or environment.

One process per host runs the same program; each reads its slice of every batch and process 0
alone writes. The coordinator's parameters come from the config's `distributed` section, else
the environment, else JAX's cluster auto-detection; docs/internals.md and docs/scaling.md.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax

from adamlab.optim import validation

ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
    """Where this process stands: index, count and devices (local and global)."""

    process_index: int
    process_count: int
    local_device_count: int
    device_count: int

    @property
    def is_primary(self) -> bool:
        return self.process_index == 0


def process_info() -> ProcessInfo:
    return ProcessInfo(
        jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count()
    )


def is_primary() -> bool:
    """True on the process that writes metrics, logs and config.json (process 0)."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Waits until every process reaches this point (a no-op for one process): after it, what
    process 0 wrote to the shared filesystem before it is there for every process to read."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an int") from None


def resolve_parameters(
    config: Any = None, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """`jax.distributed.initialize` keywords from the `distributed` config section and the
    environment (config first); None where neither says (JAX then auto-detects the cluster).

    Raises:
      ValueError: a value is malformed, e.g. a non-int count or a process_id outside
        [0, num_processes).
    """
    environ = os.environ if environ is None else environ
    config = {} if config is None else config
    params = {
        "coordinator_address": config.get("coordinator_address") or environ.get(ENV_COORDINATOR),
        "num_processes": config.get("num_processes"),
        "process_id": config.get("process_id"),
    }
    if params["num_processes"] is None:
        params["num_processes"] = _env_int(environ, ENV_NUM_PROCESSES)
    if params["process_id"] is None:
        params["process_id"] = _env_int(environ, ENV_PROCESS_ID)
    n, i = params["num_processes"], params["process_id"]
    if n is not None and not validation.is_int(n, 1):
        raise ValueError(f"distributed.num_processes={n!r} must be an int >= 1")
    if i is not None and not validation.is_int(i, 0):
        raise ValueError(f"distributed.process_id={i!r} must be an int >= 0")
    if n is not None and i is not None and i >= n:
        raise ValueError(
            f"distributed.process_id={i} must be < num_processes={n} (processes are 0..{n - 1})"
        )
    address = params["coordinator_address"]
    if address is not None and (not isinstance(address, str) or ":" not in address):
        raise ValueError(
            f"distributed.coordinator_address={address!r} must be 'host:port' of process 0"
        )
    return params


def initialize(config: Any = None, environ: Mapping[str, str] | None = None) -> ProcessInfo:
    """Calls `jax.distributed.initialize` once if `config.enabled`; returns the process info.

    Must run before anything touches a JAX backend (`train_and_evaluate` calls it first).
    A disabled or absent config leaves JAX single-process. Calling it again after a successful
    initialization is a no-op, so library code may call it defensively.
    """
    if config is None or not config.get("enabled", False) or jax.distributed.is_initialized():
        return process_info()
    params = resolve_parameters(config, environ)
    logging.info("jax.distributed.initialize(%s)", params)
    jax.distributed.initialize(**params)
    info = process_info()
    logging.info(
        "process %d of %d: %d local devices, %d in all",
        info.process_index,
        info.process_count,
        info.local_device_count,
        info.device_count,
    )
    return info
