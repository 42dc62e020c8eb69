"""`adamlab.switches`: every ADAMLAB_* switch reads 0/false/no/off (any case) as off."""

import pytest

from adamlab import runtime, switches
from adamlab.optim import native

NAME = "ADAMLAB_TEST_SWITCH"


@pytest.mark.parametrize("value", ["0", "false", "No", " OFF ", "off\n"])
def test_off_values_turn_a_switch_off(monkeypatch, value):
    monkeypatch.setenv(NAME, value)
    assert switches.switched_off(NAME)


@pytest.mark.parametrize("value", ["1", "true", "yes", "on", "", "2", "disable"])
def test_anything_else_leaves_it_on(monkeypatch, value):
    monkeypatch.setenv(NAME, value)
    assert not switches.switched_off(NAME)


def test_unset_is_on(monkeypatch):
    monkeypatch.delenv(NAME, raising=False)
    assert not switches.switched_off(NAME)


@pytest.mark.parametrize("value", ["0", "no"])
def test_every_adamlab_switch_reads_the_same_rule(monkeypatch, value):
    process = (runtime.MEMORY_SWITCH, runtime.CONV_SWITCH, runtime.GC_SWITCH, runtime.CACHE_SWITCH)
    for name in (*process, native.ENV_SWITCH):
        monkeypatch.setenv(name, value)
    assert all(switches.switched_off(name) for name in process)
    assert not native.enabled()
    for name in (*process, native.ENV_SWITCH):
        monkeypatch.setenv(name, "1")
    assert not any(switches.switched_off(name) for name in process)
    assert native.enabled()
