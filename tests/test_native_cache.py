"""The C++ kernel cache (issue 27.8): a cached library is loaded only if its bytes are those
recorded when it was built, and never from a directory that other users can write to.

The compiler and the loader are stand-ins here (a "build" writes known bytes; loading records
what it would load), so these tests need no C++ toolchain and take milliseconds.
"""

import hashlib
import logging
import os
import types

import pytest

from adamlab.optim import native

NAME = "adam_one_pass"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private cache directory, a fake compiler and a fake loader; yields what was loaded."""
    directory = tmp_path / "kernels"
    monkeypatch.setenv(native.CACHE_ENV, str(directory))
    monkeypatch.setenv("CXX", "c++")
    monkeypatch.delenv(native.ENV_SWITCH, raising=False)
    monkeypatch.setattr(native.shutil, "which", lambda name: f"/usr/bin/{name}")
    builds, loaded = [], []

    def compile_(command, **kwargs):
        output = command[command.index("-o") + 1]
        with open(output, "wb") as f:
            f.write(b"built library %d" % len(builds))
        builds.append(output)
        return types.SimpleNamespace(returncode=0, stderr="")

    def load_library(path):
        with open(path, "rb") as f:
            loaded.append(f.read())
        return types.SimpleNamespace(**{native.KERNELS[NAME]: object()})

    monkeypatch.setattr(native.subprocess, "run", compile_)
    monkeypatch.setattr(native.ctypes.cdll, "LoadLibrary", load_library)
    monkeypatch.setattr(native.jax.ffi, "pycapsule", lambda handler: handler)
    monkeypatch.setattr(native.jax.ffi, "register_ffi_target", lambda *args, **kwargs: None)
    return types.SimpleNamespace(directory=directory, builds=builds, loaded=loaded)


def _library(cache):
    return native.library_path(NAME, native.compiler())


def test_a_build_records_its_sha256_beside_the_library(cache):
    assert native.load.__wrapped__(NAME) == native.target_name(NAME)
    library = _library(cache)
    recorded = (library.parent / (library.name + ".sha256")).read_text().strip()
    assert recorded == hashlib.sha256(library.read_bytes()).hexdigest()
    assert cache.loaded == [b"built library 0"] and len(cache.builds) == 1
    assert sorted(p.name for p in cache.directory.iterdir()) == [
        library.name,
        library.name + ".sha256",
    ]  # no temporary file left
    assert native.load.__wrapped__(NAME) and len(cache.builds) == 1  # reused as it is


@pytest.mark.parametrize("change", ["replaced", "hash_missing"])
def test_a_library_that_is_not_what_was_built_is_never_loaded(cache, change):
    native.load.__wrapped__(NAME)
    library = _library(cache)
    if change == "replaced":
        library.write_bytes(b"someone else's library")
    else:
        os.remove(library.parent / (library.name + ".sha256"))
    assert native.load.__wrapped__(NAME) == native.target_name(NAME)
    assert b"someone else's library" not in cache.loaded
    assert cache.loaded == [b"built library 0", b"built library 1"]  # built again, then loaded


def test_a_group_or_world_writable_cache_is_refused_with_a_warning(cache, caplog):
    cache.directory.mkdir(parents=True)
    os.chmod(cache.directory, 0o777)
    with caplog.at_level(logging.WARNING, "adamlab.optim.native"):
        assert native.load.__wrapped__(NAME) is None
    reason = native.unavailable_reason(NAME)
    assert "group- or world-writable" in reason and "XLA program" in reason
    assert [r.getMessage() for r in caplog.records] == [reason]
    assert cache.builds == [] and cache.loaded == []
    os.chmod(cache.directory, 0o755)
    assert native.load.__wrapped__(NAME) == native.target_name(NAME)


def test_a_new_cache_directory_is_not_group_writable(cache):
    previous = os.umask(0o002)
    try:
        native.load.__wrapped__(NAME)
    finally:
        os.umask(previous)
    assert cache.directory.stat().st_mode & 0o022 == 0 and cache.loaded
