"""`garbage_collector`: the `adamlab` command keeps Python's collector off the imported libraries.

Pausing, freezing and exiting change the collector of the whole process, so those run in child
processes; what must leave a library user's process untouched runs here.
"""

import gc
import json
import os
import subprocess
import sys

import pytest

from adamlab.training import garbage_collector

from helpers import child_json

PAUSE_IMPORT_RESUME = r"""
import gc, json, weakref
from adamlab.training import garbage_collector

paused = garbage_collector.pause()
off_while_importing = not gc.isenabled()
import adamlab.training.train  # jax, flax, optax, orbax, TensorFlow, TFDS
resumed = garbage_collector.resume()
frozen, walked = gc.get_freeze_count(), len(gc.get_objects())

class Node:
    pass

cycle = Node()
cycle.self = cycle
alive = weakref.ref(cycle)
del cycle
gc.collect()
print(json.dumps({
    "paused": paused, "off_while_importing": off_while_importing, "resumed": resumed,
    "enabled": gc.isenabled(), "frozen": frozen, "walked": walked,
    "resumed_again": garbage_collector.resume(), "new_cycle_collected": alive() is None,
}))
"""


def test_pause_import_resume_freezes_the_libraries_and_collects_what_comes_after():
    out = child_json(PAUSE_IMPORT_RESUME)
    assert out["paused"] and out["off_while_importing"] and out["resumed"], out
    assert out["enabled"], out
    # The libraries' objects are frozen (~370,000 measured); a collection walks only the rest.
    assert out["frozen"] > 100_000, out
    assert out["walked"] < out["frozen"] / 10, out
    assert out["new_cycle_collected"], out  # The collector works again on new objects.
    assert out["resumed_again"] is False, out  # Once per pause.


def test_resume_without_pause_leaves_a_library_users_process_alone():
    frozen = gc.get_freeze_count()
    assert garbage_collector.resume() is False
    assert gc.isenabled()
    assert gc.get_freeze_count() == frozen


@pytest.mark.parametrize("value", ["0", "off"])
def test_the_environment_switch_turns_it_off(monkeypatch, value):
    monkeypatch.setenv(garbage_collector.ENV_SWITCH, value)
    frozen = gc.get_freeze_count()
    assert garbage_collector.switched_off()
    assert garbage_collector.pause() is False
    assert gc.isenabled()
    assert garbage_collector.freeze_before_exit() is False
    assert gc.get_freeze_count() == frozen


CONSOLE_EXIT = r"""
import atexit, gc, json, sys
from adamlab import cli

# Registered first, so it runs after every other exit handler: what the interpreter then walks.
atexit.register(lambda: print(json.dumps(
    {"frozen": gc.get_freeze_count(), "walked": len(gc.get_objects()), "enabled": gc.isenabled()}
)))
main, kept = cli.main, []

def main_that_keeps_objects(argv):  # As a run does: objects made after the imports, alive at exit.
    code = main(argv)
    kept.extend([i] for i in range(20_000))  # Lists: tracked by the collector.
    return code

cli.main = main_that_keeps_objects
sys.argv = ["adamlab", "evaluate", "--workdir", sys.argv[1]]
cli.console()
"""


@pytest.mark.parametrize("switch", ["1", "0"])
def test_the_command_exits_with_mains_code_and_frozen_objects(tmp_path, switch):
    env = {**os.environ, garbage_collector.ENV_SWITCH: switch}
    done = subprocess.run(
        [sys.executable, "-c", CONSOLE_EXIT, str(tmp_path / "no_run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr  # main's code: no run there.
    assert "is not a run workdir" in done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["enabled"], out
    if switch == "1":  # Frozen at exit: the run's 20,000 objects too.
        assert out["frozen"] > 100_000 and out["walked"] < 1_000, out
    else:
        assert out["frozen"] == 0 and out["walked"] > 100_000, out
