"""Tests for adamlab.checkpoint: round trips, retention, resume, device counts, errors, crashes,
read-only readers, integrity (damaged and unverified steps, falling back to a trusted one) and
storage errors (a full disk, a file size limit, a step deleted while it is read).

Every test writes to its own `tmp_path`; states are tiny so that orbax's I/O dominates (~50 ms
per save). Five tests start a subprocess (a crash mid-save, a crash before the manifest, a live
save that a reader opens, a restore on a 1-device machine, a file size limit).
"""

import errno
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

from adamlab.training.checkpoint import (
    MANIFEST_FILE,
    CheckpointCorruptError,
    Checkpointer,
    CheckpointMismatchError,
    CheckpointVanishedError,
    CheckpointWriteError,
)

from helpers import assert_trees_equal


def _make_state(seed: int = 0, scale: float = 1.0):
    """A realistic train state: Flax-like params, optax Adam state, int step and rng keys."""
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    params = {
        "Dense_0": {
            "kernel": scale * jax.random.normal(k1, (3, 4)),
            "bias": scale * jnp.arange(4, dtype=jnp.float32),
        },
        "Embed_0": {"embedding": jax.random.normal(k2, (5, 2)).astype(jnp.bfloat16)},
    }
    opt_state = optax.adam(1e-3).init(params)  # (ScaleByAdamState(count, mu, nu), EmptyState())
    adam = opt_state[0]._replace(
        count=jnp.asarray(7, jnp.int32),
        mu=jax.tree.map(lambda p: 0.1 * p, params),
        nu=jax.tree.map(lambda p: p * p, params),
    )
    return {
        "params": params,
        "batch_stats": {"BatchNorm_0": {"mean": jnp.full((4,), 0.5), "var": jnp.ones((4,))}},
        "opt_state": (adam, opt_state[1]),
        "step": jnp.asarray(123, jnp.int32),
        "epoch": 2,  # a Python int leaf
        "rng": jax.random.key_data(k3),  # raw key data (uint32[2])
        "dropout_rng": jax.random.key(seed + 1),  # a typed key, wrapped back by orbax
        "data_order": np.arange(6, dtype=np.int64),  # a numpy leaf stays numpy
    }


def _zeros_like(x):
    """A target leaf of the same kind (jax/numpy array, Python scalar) holding no saved data."""
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.key(99)
    if isinstance(x, jax.Array):
        return jnp.zeros_like(x)
    return np.zeros_like(x) if isinstance(x, np.ndarray) else type(x)(0)


def _step_dirs(directory) -> list[int]:
    """Finished steps on disk: plain integer directories (unfinished ones carry a suffix)."""
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


@pytest.fixture(scope="module")
def state():
    return _make_state()


@pytest.fixture(scope="module")
def mesh():
    return Mesh(np.array(jax.devices()[:4]), ("data",))


# -- round trips --------------------------------------------------------------------------------


def test_round_trip_is_exact_and_keeps_structure(tmp_path, state):
    extra = {"data_position": {"epoch": 2, "batch": 17}, "seed": 0, "lr": 3e-4, "tag": None}
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.save(123, state, extra=extra, metrics={"loss": jnp.float32(0.25)})
        restored, restored_extra = ckpt.restore(jax.tree.map(_zeros_like, state))
        assert ckpt.metrics(123) == {"loss": 0.25}
    assert_trees_equal(restored, state)
    assert isinstance(restored["opt_state"][0], optax.ScaleByAdamState)
    assert isinstance(restored["data_order"], np.ndarray) and restored["epoch"] == 2
    assert restored_extra == extra


def test_restore_extra_reads_metadata_only_and_follows_json_rules(tmp_path, state):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state, extra={"position": (3, 4), "config": {"b1": 0.9}})
        ckpt.save(2, state)  # no extra: an empty dict comes back
        assert ckpt.restore_extra(1) == {"position": [3, 4], "config": {"b1": 0.9}}
        assert ckpt.restore_extra() == {}
        assert ckpt.metrics(2) == {}


def test_async_save_round_trips_even_if_buffers_are_donated_meanwhile(tmp_path, state):
    live = _make_state()  # equal to `state`, but its buffers are ours to delete
    with Checkpointer(tmp_path, async_save=True, best_metric="acc") as ckpt:
        assert ckpt.save(5, live, extra={"k": 1}, metrics={"acc": 0.5})
        assert ckpt.best_step() == 5  # known before the background write commits
        for leaf in jax.tree.leaves(live):  # what a jitted step with donate_argnums does
            if isinstance(leaf, jax.Array):
                leaf.delete()
        ckpt.wait_until_finished()
        assert _step_dirs(tmp_path) == [5]
        restored, extra = ckpt.restore(state)
    assert_trees_equal(restored, state)
    assert extra == {"k": 1}


def test_flax_train_state_restores_into_an_eval_shape_target(tmp_path):
    """TrainState.create leaves `step` a Python int; eval_shape makes it an int32 struct."""
    params = {"Dense_0": {"kernel": jnp.arange(6.0).reshape(2, 3)}}
    created = train_state.TrainState.create(apply_fn=None, params=params, tx=optax.adamw(1e-3))
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(0, created)
        restored, _ = ckpt.restore(jax.eval_shape(lambda: created))
    assert isinstance(restored, train_state.TrainState) and int(restored.step) == 0
    assert_trees_equal(restored.params, params)
    assert_trees_equal(restored.opt_state, created.opt_state)


# -- which steps are saved and kept -------------------------------------------------------------


def test_keeps_last_k_plus_best_also_after_reopening(tmp_path):
    small = {"w": jnp.zeros(2)}
    losses = {1: 0.9, 2: 0.2, 3: 0.5, 4: 0.6, 5: float("nan"), 6: 0.7}
    with Checkpointer(tmp_path, max_to_keep=2, best_metric="loss", best_mode="min") as ckpt:
        for step, loss in losses.items():
            ckpt.save(step, small, metrics={"loss": loss, "acc": 1.0 - loss})
            # The best (lowest) loss so far is always on disk, NaN never counts as best.
            finite = [s for s in losses if s <= step and not math.isnan(losses[s])]
            assert min(finite, key=losses.get) in _step_dirs(tmp_path)
        assert _step_dirs(tmp_path) == ckpt.all_steps() == [2, 5, 6]
        assert (ckpt.latest_step(), ckpt.best_step()) == (6, 2)
    # A new run in the same directory reads the metrics back: step 2 is still the best.
    with Checkpointer(tmp_path, max_to_keep=2, best_metric="loss", best_mode="min") as ckpt:
        ckpt.save(7, small, metrics={"loss": 0.8})
        assert _step_dirs(tmp_path) == [2, 6, 7]
        ckpt.save(8, small, metrics={"loss": 0.1})  # a new best: old best 2 may now go
        assert _step_dirs(tmp_path) == [7, 8]
        assert ckpt.best_step() == 8


def test_without_best_metric_keeps_last_k_only(tmp_path):
    with Checkpointer(tmp_path, max_to_keep=3) as ckpt:
        for step in range(1, 7):
            ckpt.save(step, {"w": jnp.zeros(1)}, metrics={"acc": 1.0 if step == 1 else 0.0})
        assert _step_dirs(tmp_path) == [4, 5, 6]
        assert ckpt.best_step() is None
        with pytest.raises(ValueError, match="best_metric"):
            ckpt.restore({"w": jnp.zeros(1)}, step="best")


def test_save_interval_force_and_existing_steps(tmp_path):
    small = {"w": jnp.zeros(1)}
    with Checkpointer(tmp_path, save_interval_steps=3, max_to_keep=None) as ckpt:
        saved = [step for step in range(1, 8) if ckpt.save(step, small)]
        assert saved == [3, 6]
        assert ckpt.save(7, small, force=True)  # the end of training
        assert not ckpt.save(7, small, force=True)  # already on disk: not rewritten
        assert _step_dirs(tmp_path) == [3, 6, 7]


def test_restore_latest_best_and_int_step(tmp_path):
    accuracy = {10: 0.3, 20: 0.8, 30: 0.5}
    with Checkpointer(tmp_path, max_to_keep=3, best_metric="acc") as ckpt:
        for step, acc in accuracy.items():
            ckpt.save(
                step, {"w": jnp.full((2,), float(step))}, metrics={"acc": acc}, extra={"step": step}
            )
        target = {"w": jnp.zeros(2)}
        for which, expected in [("latest", 30), ("best", 20), (10, 10), (np.int64(20), 20)]:
            restored, extra = ckpt.restore(target, step=which)
            np.testing.assert_array_equal(restored["w"], [expected, expected])
            assert extra == {"step": expected}


def test_reopened_directory_resumes(tmp_path, state):
    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        ckpt.save(1, state, extra={"batch": 1})
        ckpt.save(2, _make_state(seed=1), extra={"batch": 2})
    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        assert (ckpt.all_steps(), ckpt.latest_step()) == ([1, 2], 2)
        restored, extra = ckpt.restore(state)
        assert_trees_equal(restored, _make_state(seed=1))
        assert extra == {"batch": 2}
        ckpt.save(3, state)
        assert _step_dirs(tmp_path) == [2, 3]


# -- restoring onto another device count ---------------------------------------------------------


def _target(tree, sharding):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


@pytest.mark.parametrize("saved_spec", [P("data"), P()], ids=["sharded", "replicated"])
def test_state_saved_on_4_devices_restores_onto_1(tmp_path, mesh, saved_spec):
    values = {"w": jnp.arange(16.0).reshape(8, 2), "b": jnp.arange(4, dtype=jnp.int32)}
    saved = jax.device_put(values, NamedSharding(mesh, saved_spec))
    one_device = SingleDeviceSharding(jax.devices()[0])
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, saved)
        restored, _ = ckpt.restore(_target(values, one_device))
    for name, value in values.items():
        assert restored[name].sharding == one_device
        np.testing.assert_array_equal(restored[name], value)


@pytest.mark.parametrize("target_spec", [P("data"), P()], ids=["sharded", "replicated"])
def test_state_saved_on_1_device_restores_onto_4(tmp_path, mesh, target_spec):
    values = {"w": jnp.arange(16.0).reshape(8, 2), "b": jnp.arange(4, dtype=jnp.int32)}
    saved = jax.device_put(values, jax.devices()[0])
    sharding = NamedSharding(mesh, target_spec)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, saved)
        restored, _ = ckpt.restore(_target(values, sharding))
    for name, value in values.items():
        result = restored[name]
        assert result.sharding == sharding and len(result.addressable_shards) == 4
        shard_rows = value.shape[0] // 4 if target_spec == P("data") else value.shape[0]
        assert all(s.data.shape[0] == shard_rows for s in result.addressable_shards)
        np.testing.assert_array_equal(result, value)


def test_sharded_state_restores_in_a_one_device_process(tmp_path, mesh, state):
    """A separate process with 1 device (another machine) restores a 4-device checkpoint,
    from a target without shardings (`jax.eval_shape` output)."""
    sharded = dict(state, params=jax.device_put(state["params"], NamedSharding(mesh, P())))
    sharded["batch_stats"] = jax.device_put(state["batch_stats"], NamedSharding(mesh, P("data")))
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, sharded)
    script = f"""
        import json, jax, numpy as np, optax, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_checkpoint import _make_state
        from adamlab.training.checkpoint import Checkpointer
        target = jax.eval_shape(_make_state)
        target["data_order"] = np.zeros(6, np.int64)  # x64 is off: keep numpy's int64
        restored, _ = Checkpointer({str(tmp_path)!r}).restore(target)
        leaves = [x for x in jax.tree.leaves(restored) if isinstance(x, jax.Array)]
        print(json.dumps({{
            "devices": jax.device_count(),
            "placed": sorted({{d.id for x in leaves for d in x.devices()}}),
            "kernel": np.asarray(restored["params"]["Dense_0"]["kernel"]).tolist(),
            "mean": np.asarray(restored["batch_stats"]["BatchNorm_0"]["mean"]).tolist(),
        }}))
    """
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["devices"] == 1 and out["placed"] == [0]
    np.testing.assert_array_equal(out["kernel"], state["params"]["Dense_0"]["kernel"])
    np.testing.assert_array_equal(out["mean"], state["batch_stats"]["BatchNorm_0"]["mean"])


# -- errors ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory, state):
    directory = tmp_path_factory.mktemp("saved")
    with Checkpointer(directory) as ckpt:
        ckpt.save(42, state)
    return directory


def _with(tree, path, value):
    """A copy of `tree` (nested dicts) with `path` set to `value`, or removed if value is None."""
    tree = dict(tree)
    if len(path) == 1:
        if value is None:
            del tree[path[0]]
        else:
            tree[path[0]] = value
    else:
        tree[path[0]] = _with(tree[path[0]], path[1:], value)
    return tree


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            ("params", "Dense_0", "extra_bias"),
            ["missing from checkpoint", "params/Dense_0/extra_bias", "float32[7]"],
        ),
        (
            ("batch_stats", "BatchNorm_0", "var"),
            ["unexpected in checkpoint", "batch_stats/BatchNorm_0/var", "float32[4]"],
        ),
        (
            ("params", "Dense_0", "kernel"),
            ["shape differs", "params/Dense_0/kernel", "(3, 4)", "(4, 3)"],
        ),
        (
            ("params", "Embed_0", "embedding"),
            ["dtype differs", "params/Embed_0/embedding", "bfloat16", "float32"],
        ),
    ],
    ids=["extra_leaf_in_target", "missing_leaf_in_target", "shape", "dtype"],
)
def test_mismatch_names_the_leaf_and_both_specs(saved_dir, state, change, expected):
    replacement = {
        "extra_bias": jnp.zeros(7),
        "var": None,
        "kernel": jnp.zeros((4, 3)),
        "embedding": jnp.zeros((5, 2), jnp.float32),
    }[change[-1]]
    target = _with(state, change, replacement)
    with Checkpointer(saved_dir) as ckpt:
        with pytest.raises(CheckpointMismatchError) as info:
            ckpt.restore(target)
    message = str(info.value)
    assert f"step 42 in {saved_dir}" in message and "model or optimizer config" in message
    for fragment in expected:
        assert fragment in message
    assert len(info.value.differences) == 1


def test_mismatch_of_an_optimizer_state_and_a_long_listing(saved_dir, state):
    # A different optimizer (SGD with momentum) has a different state tree.
    target = dict(state, opt_state=optax.sgd(0.1, momentum=0.9).init(state["params"]))
    with Checkpointer(saved_dir) as ckpt, pytest.raises(CheckpointMismatchError) as info:
        ckpt.restore(target)
    assert "unexpected in checkpoint (not in target): opt_state/0/count int32[]" in str(info.value)
    assert "missing from checkpoint (in target only): opt_state/0/trace/Dense_0/bias" in str(
        info.value
    )
    # 40 distinct missing leaves are capped at 20 lines plus a count.
    many = dict(state, more={f"leaf_{i:02d}": jnp.zeros(1) for i in range(40)})
    with Checkpointer(saved_dir) as ckpt, pytest.raises(CheckpointMismatchError) as info:
        ckpt.restore(many)
    lines = str(info.value).splitlines()
    assert len(info.value.differences) == 40
    assert "more/leaf_19" in str(info.value) and "more/leaf_20" not in str(info.value)
    assert lines[-1].strip() == "... and 20 more"


def test_missing_checkpoints_raise_file_not_found(tmp_path, state):
    with Checkpointer(tmp_path / "empty", best_metric="acc") as ckpt:
        with pytest.raises(FileNotFoundError, match="No checkpoint in .*available steps: none"):
            ckpt.restore(state)
        with pytest.raises(FileNotFoundError, match="No checkpoint with metric 'acc'"):
            ckpt.restore_extra("best")
        ckpt.save(3, {"w": jnp.zeros(1)}, metrics={})  # no metrics: not a "best" candidate
        with pytest.raises(FileNotFoundError, match=r"step 4 .*available steps: \[3\]"):
            ckpt.restore({"w": jnp.zeros(1)}, step=4)
        with pytest.raises(ValueError, match="'latest' or 'best'"):
            ckpt.restore({"w": jnp.zeros(1)}, step="last")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"max_to_keep": 0}, ValueError, "max_to_keep must be a positive int"),
        ({"best_mode": "maximum"}, ValueError, "best_mode must be 'max' or 'min'"),
        ({"save_interval_steps": 0}, ValueError, "save_interval_steps must be a positive"),
    ],
)
def test_bad_options_are_rejected(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        Checkpointer(tmp_path, **kwargs)


def test_bad_save_arguments_are_rejected_before_writing(tmp_path):
    small = {"w": jnp.zeros(1)}
    with Checkpointer(tmp_path, best_metric="acc") as ckpt:
        with pytest.raises(TypeError, match="extra must be JSON-serialisable"):
            ckpt.save(1, small, extra={"array": np.zeros(2)})
        with pytest.raises(ValueError, match="metrics lack best_metric 'acc'"):
            ckpt.save(1, small, metrics={"loss": 1.0})
        with pytest.raises(TypeError, match="metric 'acc' must be a scalar"):
            ckpt.save(1, small, metrics={"acc": np.zeros(3)})
        with pytest.raises(ValueError, match="step must be >= 0"):
            ckpt.save(-1, small)
        with pytest.raises(TypeError, match="step must be an int"):
            ckpt.save(1.5, small)
        assert ckpt.all_steps() == [] and _step_dirs(tmp_path) == []


# -- crash safety ---------------------------------------------------------------------------------


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, state):
    """A process dies (os._exit, no cleanup) after writing step 2's data, just before orbax's
    atomic rename commits it. The next run sees step 1 only, restores it, removes the debris."""
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state, extra={"ok": True})
    script = f"""
        import os, jax.numpy as jnp
        from orbax.checkpoint._src.path import atomicity
        from adamlab.training.checkpoint import Checkpointer

        async def die(*args, **kwargs):
            os._exit(17)

        atomicity.AtomicRenameTemporaryPath.finalize = die
        Checkpointer({str(tmp_path)!r}).save(2, {{"w": jnp.ones(3)}})
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 17, result.stderr[-3000:]  # it died inside the commit step
    leftovers = [name for name in os.listdir(tmp_path) if name.startswith("2.")]
    assert leftovers, os.listdir(tmp_path)  # the unfinished step 2 is on disk...
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.all_steps() == [1]  # ...but is not a checkpoint,
        restored, extra = ckpt.restore(state)
        assert_trees_equal(restored, state)
        assert extra == {"ok": True}
        assert not [n for n in os.listdir(tmp_path) if n.startswith("2.")]  # and is removed.
        assert ckpt.save(2, state)  # The run can go on and save step 2 again.
        assert ckpt.all_steps() == [1, 2]


def _run(script: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,
    )


# -- readers --------------------------------------------------------------------------------------


def _tree_snapshot(directory) -> dict:
    """{relative path: (size, mtime)} of every file and directory under `directory`."""
    snapshot = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = os.path.join(root, name)
            stat = os.stat(path)
            snapshot[os.path.relpath(path, directory)] = (stat.st_size, stat.st_mtime_ns)
    return snapshot


def test_a_reader_leaves_a_live_save_alone(tmp_path):
    """Issue 15.1: `adamlab evaluate` opened the checkpoints while the trainer was committing
    a step, deleted its `*.orbax-checkpoint-tmp` directory, and the trainer died. Here the
    trainer (a subprocess) is held inside orbax's commit while a read-only Checkpointer lists,
    restores and closes: nothing on disk changes, and the trainer then commits step 2."""
    ckpt_dir, ready, go = tmp_path / "ckpt", tmp_path / "ready", tmp_path / "go"
    trainer = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import asyncio, os, jax.numpy as jnp
            from orbax.checkpoint._src.path import atomicity
            from adamlab.training.checkpoint import Checkpointer
            commit = atomicity.AtomicRenameTemporaryPath.finalize
            async def held_commit(self, *args, **kwargs):
                open({str(ready)!r}, "w").close()
                while not os.path.exists({str(go)!r}):
                    await asyncio.sleep(0.05)
                return await commit(self, *args, **kwargs)
            with Checkpointer({str(ckpt_dir)!r}) as ckpt:
                ckpt.save(1, {{"w": jnp.ones(3)}})
                atomicity.AtomicRenameTemporaryPath.finalize = held_commit
                ckpt.save(2, {{"w": jnp.full(3, 2.0)}})
        """)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert trainer.poll() is None and time.monotonic() < deadline, trainer.stderr.read()
            time.sleep(0.05)
        before = _tree_snapshot(ckpt_dir)
        assert any(".orbax-checkpoint-tmp" in name for name in before), before
        with Checkpointer(ckpt_dir, read_only=True) as reader:
            assert reader.all_steps() == [1]
            restored, _ = reader.restore({"w": jnp.zeros(3)})
            with pytest.raises(PermissionError, match="read-only"):
                reader.save(3, {"w": jnp.zeros(3)})
        assert _tree_snapshot(ckpt_dir) == before  # nothing created, deleted or renamed
    finally:
        go.touch()
        _, stderr = trainer.communicate(timeout=120)
    np.testing.assert_array_equal(restored["w"], np.ones(3))
    assert trainer.returncode == 0, stderr[-3000:]
    with Checkpointer(ckpt_dir, read_only=True) as reader:
        assert reader.all_steps() == [1, 2] and reader.verify(2)


def test_a_reader_creates_nothing(tmp_path):
    with Checkpointer(tmp_path / "absent", read_only=True, best_metric="acc") as reader:
        assert reader.all_steps() == [] and reader.best_step() is None
        with pytest.raises(FileNotFoundError, match="No checkpoint"):
            reader.restore({"w": jnp.zeros(1)})
    assert not (tmp_path / "absent").exists()


# -- integrity ------------------------------------------------------------------------------------

_SMALL = {"w": jnp.arange(12.0).reshape(3, 4), "b": jnp.ones(4), "key": jax.random.key(0)}
_TARGET = {"w": jnp.zeros((3, 4)), "b": jnp.zeros(4), "key": jax.random.key(1)}


def _small(step: int):
    return dict(_SMALL, w=_SMALL["w"] + step)


@pytest.fixture(scope="module")
def three_steps(tmp_path_factory):
    """Steps 100, 200, 300 with acc 0.1, 0.2, 0.3 (300 is latest and best), with manifests."""
    directory = tmp_path_factory.mktemp("three_steps")
    with Checkpointer(directory, best_metric="acc", max_to_keep=None) as ckpt:
        for step in (100, 200, 300):
            ckpt.save(step, _small(step), metrics={"acc": step / 1000}, extra={"at": step})
    return directory


def _copy(directory, tmp_path, *, manifests=True):
    copy = tmp_path / "ckpt"
    shutil.copytree(directory, copy)
    if not manifests:
        for step in (100, 200, 300):
            os.remove(copy / str(step) / MANIFEST_FILE)
    return copy


def _data_file(step_dir) -> str:
    """The largest array data file of a step (orbax/tensorstore's OCDBT chunks)."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    return str(max(files, key=lambda p: p.stat().st_size).relative_to(step_dir))


def _flip_bytes(path):
    data = bytearray(path.read_bytes())
    for i in (len(data) // 3, len(data) // 2):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# Issue 15.3 and 15.4: what damages step 300, and the file the error must name.
_DAMAGE = {
    "flipped_array_bytes": (lambda d: _flip_bytes(d / _data_file(d)), None),
    "truncated_array_file": (lambda d: _truncate(d / _data_file(d)), None),
    "garbage_state_metadata": (
        lambda d: (d / "state/_METADATA").write_text("{garbage"),
        "state/_METADATA",
    ),
    "garbage_extra": (lambda d: (d / "extra/metadata").write_text("{garbage"), "extra/metadata"),
    "missing_extra": (lambda d: shutil.rmtree(d / "extra"), "extra/"),
    "garbage_metrics": (lambda d: (d / "metrics/metrics").write_text("{garbage"), "metrics"),
}


@pytest.mark.parametrize("damage", sorted(_DAMAGE))
def test_a_damaged_step_is_named_and_resume_falls_back(three_steps, tmp_path, damage, caplog):
    directory = _copy(three_steps, tmp_path)
    apply, file = _DAMAGE[damage]
    file = file or _data_file(directory / "300")
    apply(directory / "300")
    with Checkpointer(directory, best_metric="acc", read_only=True) as reader:
        with pytest.raises(CheckpointCorruptError) as info:
            reader.restore(_TARGET)  # "latest": never falls back on its own
        message = str(info.value)
        assert "\n" not in message and len(message) < 600
        assert f"step 300 is damaged: {directory}/300/{file}" in message
        assert message.endswith("intact steps: [100, 200]")
        assert (info.value.step, info.value.intact_steps) == (300, (100, 200))

        with caplog.at_level(logging.WARNING, "adamlab.training.checkpoint"):
            step, state, extra = reader.restore_newest_intact(_TARGET)
        assert (step, extra) == (200, {"at": 200})
        assert_trees_equal(state, _small(200))
        warnings = [r.getMessage() for r in caplog.records]
        assert any("skipping" in w and "step 300" in w for w in warnings), warnings
        assert any("resuming from step 200" in w for w in warnings), warnings
        assert reader.all_steps() == [100, 200, 300]  # a reader moves nothing
        restored, _ = reader.restore(_TARGET, step=200)  # `--checkpoint 200` works
        assert_trees_equal(restored, _small(200))


def test_a_writer_sets_damaged_steps_aside_and_saves_them_again(three_steps, tmp_path):
    directory = _copy(three_steps, tmp_path)
    _flip_bytes(directory / "300" / _data_file(directory / "300"))
    with Checkpointer(directory, best_metric="acc", max_to_keep=None) as ckpt:
        step, _, _ = ckpt.restore_newest_intact(_TARGET)
        assert step == 200 and ckpt.all_steps() == [100, 200] and ckpt.best_step() == 200
        aside = [n for n in os.listdir(directory) if n.startswith("damaged-300-")]
        assert len(aside) == 1  # kept for inspection, not deleted
        assert ckpt.save(300, _small(300), metrics={"acc": 0.3})  # the run goes on
        assert ckpt.verify(300) and ckpt.restore(_TARGET)[1] == {}
    with Checkpointer(directory, best_metric="acc") as ckpt:  # reopened: the same steps
        assert ckpt.all_steps() == [100, 200, 300] and ckpt.best_step() == 300


def test_garbage_ranking_metrics_leave_the_other_steps_usable(three_steps, tmp_path, caplog):
    """Issue 15.3: orbax reads every step's metrics when it opens a directory; one garbage file
    raised there, making every step unusable (even `--checkpoint 200`)."""
    directory = _copy(three_steps, tmp_path, manifests=False)
    (directory / "300/metrics/metrics").write_text("{garbage")
    with caplog.at_level(logging.WARNING, "adamlab.training.checkpoint"):
        with Checkpointer(directory, best_metric="acc", max_to_keep=None) as ckpt:
            assert ckpt.best_step() == 200  # 300 takes no part in the ranking
            assert ckpt.metrics(300) == {}
            assert ckpt.restore(_TARGET, step="best")[1] == {"at": 200}
            assert ckpt.restore(_TARGET)[1] == {"at": 300}  # its arrays are fine (no manifest)
            ckpt.save(400, _small(400), metrics={"acc": 0.05})
    warnings = [r.getMessage() for r in caplog.records if "unreadable metrics" in r.getMessage()]
    assert len(warnings) == 1 and f"{directory}/300/metrics/metrics" in warnings[0]


def test_best_and_explicit_steps_never_fall_back(three_steps, tmp_path):
    directory = _copy(three_steps, tmp_path)
    _truncate(directory / "300" / _data_file(directory / "300"))
    with Checkpointer(directory, best_metric="acc", read_only=True) as reader:
        for which in ("best", 300):
            with pytest.raises(CheckpointCorruptError, match=r"intact steps: \[100, 200\]$"):
                reader.restore(_TARGET, step=which)
        with pytest.raises(CheckpointCorruptError, match="step 300"):
            reader.restore_extra(300)
        assert reader.intact_steps() == (100, 200)


def test_no_intact_step_left_is_an_error(three_steps, tmp_path):
    directory = _copy(three_steps, tmp_path)
    for step in (100, 200, 300):
        (directory / str(step) / "state/_METADATA").write_text("")
    with Checkpointer(directory, read_only=True) as reader:
        with pytest.raises(CheckpointCorruptError, match="step 300 .*intact steps: none"):
            reader.restore_newest_intact(_TARGET)


def test_steps_without_a_manifest_are_verified_by_restoring(three_steps, tmp_path):
    """Steps saved before manifests existed: readable ones restore; an unreadable one is a
    one-line error naming the file (not a JSONDecodeError or a tensorstore traceback)."""
    directory = _copy(three_steps, tmp_path, manifests=False)
    (directory / "300/state/_METADATA").write_text("{garbage")
    with Checkpointer(directory, read_only=True) as reader:
        assert not reader.verify(200)  # unverified, not damaged
        with pytest.raises(CheckpointCorruptError) as info:
            reader.restore(_TARGET)
        assert f"{directory}/300/state/_METADATA: unreadable (JSONDecodeError" in str(info.value)
        assert "\n" not in str(info.value) and info.value.__cause__ is None
        assert reader.restore_newest_intact(_TARGET)[0] == 200


def test_a_crash_before_the_manifest_resumes_from_the_step_before(tmp_path, caplog):
    """Issue 27.4: the process dies after orbax committed step 2, before its manifest was
    written. Step 2 cannot be verified: the resume says so and uses step 1; the writer sets
    step 2 aside and can save it again."""
    result = _run(f"""
        import os, jax.numpy as jnp
        from adamlab.training import checkpoint
        with checkpoint.Checkpointer({str(tmp_path)!r}) as ckpt:
            ckpt.save(1, {{"w": jnp.ones(3)}})
            checkpoint._write_manifest = lambda step_dir: os._exit(17)
            ckpt.save(2, {{"w": jnp.full(3, 2.0)}})
    """)  # fmt: skip
    assert result.returncode == 17, result.stderr[-3000:]
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.all_steps() == [1, 2] and ckpt.verify(1) and not ckpt.verify(2)
        with caplog.at_level(logging.WARNING, "adamlab.training.checkpoint"):
            step, state, _ = ckpt.restore_newest_intact({"w": jnp.zeros(3)})
        assert step == 1
        np.testing.assert_array_equal(state["w"], [1.0, 1.0, 1.0])
        assert any("step 2 has no adamlab_manifest.json" in r.getMessage() for r in caplog.records)
        assert ckpt.all_steps() == [1] and [n for n in os.listdir(tmp_path) if "damaged-2-" in n]
        assert ckpt.save(2, {"w": jnp.full(3, 2.0)}) and ckpt.verify(2)


def test_a_manifest_less_step_with_flipped_bytes_is_never_used_silently(
    three_steps, tmp_path, caplog
):
    """Issue 27.4: 8 flipped bytes in the array file of a step without a manifest restore
    without an error (nothing else checks them); the resume must not use it silently."""
    directory = _copy(three_steps, tmp_path)
    os.remove(directory / "300" / MANIFEST_FILE)
    data = directory / "300" / _data_file(directory / "300")
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 8] = bytes(b ^ 0xFF for b in raw[len(raw) // 2 :][:8])
    data.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, "adamlab.training.checkpoint"):
        with Checkpointer(directory, best_metric="acc", read_only=True) as reader:
            step, state, _ = reader.restore_newest_intact(_TARGET)
            assert step == 200 and reader.all_steps() == [100, 200, 300]
            assert_trees_equal(state, _small(200))
            reader.restore(_TARGET, step=300)  # Asked for by number: read, with a warning.
    warnings = [r.getMessage() for r in caplog.records]
    assert any("step 300 has no adamlab_manifest.json" in w for w in warnings), warnings
    assert any("resuming from step 200" in w and "skipped: 300" in w for w in warnings)
    assert any("step 300 in" in w and "read unverified" in w for w in warnings), warnings
    assert all("\n" not in w for w in warnings)


def test_steps_all_without_manifests_resume_from_the_newest_with_a_warning(
    three_steps, tmp_path, caplog
):
    directory = _copy(three_steps, tmp_path, manifests=False)
    with caplog.at_level(logging.WARNING, "adamlab.training.checkpoint"):
        with Checkpointer(directory, max_to_keep=None) as ckpt:
            step, state, _ = ckpt.restore_newest_intact(_TARGET)
            assert step == 300 and ckpt.all_steps() == [100, 200, 300]  # nothing set aside
    assert_trees_equal(state, _small(300))
    assert any("step 300 in" in r.getMessage() and "unverified" in r.getMessage()
               for r in caplog.records)  # fmt: skip


def test_non_finite_saved_values_are_refused(tmp_path):
    """Issue 15.4: a restored NaN (or inf) must not reach an evaluation or a resumed run."""
    state = {"w": jnp.array([1.0, jnp.nan]), "ok": jnp.ones(2), "host": np.array([np.inf])}
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, {"w": jnp.ones(2), "ok": jnp.ones(2), "host": np.zeros(1)})
        ckpt.save(2, state)
        target = {"w": jnp.zeros(2), "ok": jnp.zeros(2), "host": np.zeros(1)}
        with pytest.raises(CheckpointCorruptError, match=r"state: non-finite values in host, w;"):
            ckpt.restore(target)
        assert ckpt.restore_newest_intact(target)[0] == 1


def test_manifests_cover_every_file_and_survive_reopening(tmp_path, state):
    with Checkpointer(tmp_path, async_save=True, max_to_keep=2) as ckpt:
        for step in (1, 2, 3):
            ckpt.save(step, state)
        ckpt.wait_until_finished()  # async: written once orbax has committed
        assert [ckpt.verify(step) for step in ckpt.all_steps()] == [True, True]
    manifest = json.loads((tmp_path / "3" / MANIFEST_FILE).read_text())
    on_disk = {
        str(p.relative_to(tmp_path / "3")) for p in (tmp_path / "3").rglob("*") if p.is_file()
    }
    assert set(manifest["files"]) == on_disk - {MANIFEST_FILE}
    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:  # restoring and saving change nothing
        ckpt.restore(jax.tree.map(_zeros_like, state))
        ckpt.save(4, state)
        assert [ckpt.verify(step) for step in ckpt.all_steps()] == [True, True]


# -- storage errors and readers racing the writer (issue 27, items 6-8) ----------------------


def _tmp_dirs(directory) -> list[str]:
    return [name for name in os.listdir(directory) if ".orbax-checkpoint-tmp" in name]


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_a_disk_full_mid_save_is_one_line_and_leaves_no_temporary_directory(
    tmp_path, monkeypatch, async_save
):
    """Issue 27.7: disk full while orbax writes a step (here its JSON item, after the arrays)."""
    import orbax.checkpoint as ocp

    def full(self, x, directory):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))

    with Checkpointer(tmp_path, async_save=async_save) as ckpt:
        ckpt.save(1, _small(1), extra={"at": 1})
        ckpt.wait_until_finished()
        monkeypatch.setattr(ocp.handlers.JsonCheckpointHandler, "_save_fn", full)
        with pytest.raises(CheckpointWriteError) as info:
            ckpt.save(2, _small(2))
            ckpt.wait_until_finished()
        message = str(info.value)
        assert "\n" not in message and "step 2" in message and str(tmp_path) in message
        assert "No space left on device (ENOSPC)" in message and "intact: [1]" in message
        assert _tmp_dirs(tmp_path) == [] and ckpt.all_steps() == [1]
        monkeypatch.undo()
        assert ckpt.restore(_TARGET)[1] == {"at": 1}
        assert ckpt.save(2, _small(2))  # The disk has room again: the run goes on.
    assert _step_dirs(tmp_path) == [1, 2]


def test_a_file_size_limit_mid_save_is_one_line(tmp_path):
    """Issue 27.7: `ulimit -f` (EFBIG) while tensorstore writes the arrays: one line, no
    traceback logged by orbax's threads, no temporary directory, step 1 intact."""
    result = _run(f"""
        import resource, numpy as np, jax.numpy as jnp
        from adamlab.training.checkpoint import Checkpointer, CheckpointWriteError
        with Checkpointer({str(tmp_path)!r}) as ckpt:
            ckpt.save(1, {{"w": jnp.ones(3)}})
            resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
            try:
                ckpt.save(2, {{"w": jnp.asarray(np.random.rand(100000), jnp.float32)}})
            except CheckpointWriteError as e:
                print(e)
    """)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("\n") == 1 and "File too large (EFBIG)" in result.stdout
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert _tmp_dirs(tmp_path) == [] and _step_dirs(tmp_path) == [1]


def test_a_step_deleted_between_listing_and_reading(three_steps, tmp_path, monkeypatch):
    """Issue 27.6: the trainer's retention deletes the step a reader resolved ("latest" is
    looked up again; a step asked for by number is named in one line)."""
    import orbax.checkpoint as ocp

    directory = _copy(three_steps, tmp_path)
    resolve = Checkpointer.resolve_step
    deleted = []

    def resolve_then_delete(self, step):
        resolved = resolve(self, step)
        if not deleted:
            deleted.append(resolved)
            shutil.rmtree(directory / str(resolved))
        return resolved

    monkeypatch.setattr(Checkpointer, "resolve_step", resolve_then_delete)
    with Checkpointer(directory, best_metric="acc", read_only=True) as reader:
        step, state, extra = reader.restore_with_step(_TARGET)
        assert (deleted, step, extra) == ([300], 200, {"at": 200})
        assert_trees_equal(state, _small(200))
        deleted.clear()
        with pytest.raises(CheckpointVanishedError) as info:
            reader.restore(_TARGET, step=100)
        assert isinstance(info.value, FileNotFoundError) and "\n" not in str(info.value)
        assert f"step 100 in {directory} vanished" in str(info.value)

    # Deleted after the manifest was checked, while orbax/tensorstore read the arrays.
    directory = _copy(three_steps, tmp_path / "again")
    monkeypatch.setattr(Checkpointer, "resolve_step", resolve)
    restore = ocp.CheckpointManager.restore

    def delete_then_restore(self, step, *args, **kwargs):
        if step == 300 and (directory / "300").exists():
            shutil.rmtree(directory / "300")
        return restore(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "restore", delete_then_restore)
    with Checkpointer(directory, best_metric="acc", read_only=True) as reader:
        assert reader.restore_with_step(_TARGET, "best")[0] == 200


def test_a_step_replaced_by_a_file_is_skipped_with_one_warning(three_steps, tmp_path, caplog):
    """Issue 27.8: a file named like a step is not a checkpoint: said once, then ignored."""
    directory = _copy(three_steps, tmp_path)
    shutil.rmtree(directory / "300")
    (directory / "300").write_text("not a step")
    with caplog.at_level(logging.WARNING, "adamlab.training.checkpoint"):
        with Checkpointer(directory, best_metric="acc", read_only=True) as reader:
            assert reader.all_steps() == [100, 200] and reader.latest_step() == 200
            assert reader.best_step() == 200
    warnings = [r.getMessage() for r in caplog.records if "not a checkpoint" in r.getMessage()]
    assert warnings == [f"{directory}/300 is not a checkpoint (a file where a step directory "
                        "should be): skipped"]  # fmt: skip


def test_extra_holds_long_float_lists_and_metrics_may_be_none(tmp_path):
    """A trainer's window of per-step metrics in `extra`; a preemption point saved without
    validation metrics takes no part in the "best" ranking."""
    window = {"loss": [float(i) / 7 for i in range(3000)], "steps": list(range(3000))}
    with Checkpointer(tmp_path, best_metric="acc", max_to_keep=1) as ckpt:
        ckpt.save(1, _small(1), metrics={"acc": 0.5}, extra={"window": window})
        ckpt.save(2, _small(2), metrics=None, extra={"window": window, "preempted": True})
        assert ckpt.best_step() == 1 and ckpt.metrics(2) == {}
        assert ckpt.all_steps() == [1, 2]  # the last one, and the best
        assert ckpt.restore_extra(2) == {"window": window, "preempted": True}
        assert ckpt.restore(_TARGET, "best")[1] == {"window": window}
