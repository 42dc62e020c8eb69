"""The ``ADAMLAB_*`` environment switches: one rule for reading whether a setting is off.

Each setting adamlab makes on its own (the process settings of `adamlab.runtime`, the native
optimizer kernels) can be turned off from the environment, and every switch reads the same
way: 0, false, no or off (any case, surrounding spaces ignored) turn it off; unset or any
other value leaves it on. Only `os` is imported here: `adamlab.runtime` reads switches before
jax starts, and `adamlab.optim` imports nothing else from adamlab.
"""

import os

OFF_VALUES = ("0", "false", "no", "off")


def switched_off(name: str) -> bool:
    """True when environment variable `name` says off (see the module docstring)."""
    return os.environ.get(name, "1").strip().lower() in OFF_VALUES
