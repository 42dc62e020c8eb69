"""Keep Python's cyclic garbage collector off the objects a command's libraries create at import.

Why: importing jax, flax, optax, orbax, TensorFlow and TFDS creates ~370,000 objects that live
until the process exits, and every full collection walks all of them (~0.25 s each on a
2-core CPU). Six full collections ran while they imported (the heap keeps growing by the
quarter that triggers one), and at exit the interpreter collects again as it tears the modules
down. On the 2-core CPU: the imports of the training stack 3.3-3.8 s with the collector on,
2.8-3.0 s with it off; the process exit after `adamlab train --config mnist` logged its result
1.19-1.41 s, 0.22-0.32 s with everything frozen (`gc.freeze`) first
(`benchmarks/time_to_result.py --gc_default`).

So the `adamlab` command, which owns its process, pauses the collector while it imports a
command's libraries (`pause`), then freezes what exists (the modules' objects, and the
import's own cyclic garbage, ~2 MB that is never freed) and turns the collector back on
(`resume`): the run's collections then walk only what the run creates. Before the process
exits, everything is frozen (`freeze_before_exit`): the interpreter still frees every object it
frees today by reference counting, and `atexit` handlers still run; only the final walks over
the heap are skipped (their cyclic garbage goes back to the OS with the process).

Nothing here changes what a run computes. `ADAMLAB_GC_FREEZE=0` turns it off; code that
imports adamlab as a library (tests, notebooks) is untouched: `resume` does nothing unless
`pause` turned the collector off.
"""

from __future__ import annotations

import gc

from adamlab import switches

ENV_SWITCH = "ADAMLAB_GC_FREEZE"

# Whether `pause` turned the collector off (and `resume` should turn it back on).
_paused = False


def switched_off() -> bool:
    """True when the environment asks for Python's default collection."""
    return switches.switched_off(ENV_SWITCH)


def pause() -> bool:
    """Turn the collector off while libraries import; True if this call did."""
    global _paused
    if switched_off() or not gc.isenabled():
        return False
    gc.disable()
    _paused = True
    return True


def resume() -> bool:
    """After `pause`: freeze every object that exists now and turn the collector back on.

    True if it did; a no-op (False) when `pause` did not turn the collector off.
    """
    global _paused
    if not _paused:
        return False
    gc.freeze()
    gc.enable()
    _paused = False
    return True


def freeze_before_exit() -> bool:
    """Freeze every object, so the interpreter's exit does not walk them; True if it did."""
    if switched_off():
        return False
    gc.freeze()
    return True
