"""A Python child process whose answer is the JSON object it printed last.

Settings a process reads once (XLA's flags, the allocator, what it has imported) need a fresh
process to measure or test: the benchmarks and tests/helpers.child_json start it here.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence


def json_of(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    timeout: float | None = None,
) -> dict:
    """Runs `argv` and returns the JSON object on the last line of its stdout; a nonzero exit
    raises RuntimeError with the end of its stderr."""
    done = subprocess.run(
        list(argv), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv[:3])} ... exited with {done.returncode}:\n{done.stderr[-3000:]}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])
