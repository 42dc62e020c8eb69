"""Multi-host training: 2 processes x 2 CPU devices train to the same state as 1 process x 4.

The test starts two copies of this file as processes on localhost (`jax.distributed` with a
coordinator on 127.0.0.1 and gloo CPU collectives between the processes), each with 2 simulated
CPU devices, and runs `train_and_evaluate` on a tiny digits config in one shared workdir. The
reference trains the same config in the test process over its 4 devices, on the same global
batches: each process of a multi-host run reads its own part of the dataset (TFDS's per-process
split, shuffled per process), so the reference concatenates the two processes' streams
(`train_batches(process_index=i, process_count=2)`). It checks that

* the final checkpoint (saved by orbax from both processes) equals the reference's members; the
  2-process run also shards Adam's moments over the 4 devices (ZeRO-1, `train.shard_optimizer`),
  which `get_members` gathers across the processes for the checkpoint;
* both processes report the test metrics of that state;
* process 0 alone wrote config.json, metrics.jsonl (no duplicate lines) and TensorBoard events.

The subprocesses have a hard timeout and are killed on any failure. Three processes importing
TensorFlow and compiling take minutes on 2 cores: those two tests are `slow`
(`pytest -m slow tests/test_distributed.py`); the configuration checks below run by default.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from adamlab import config_dict, data
from adamlab.training import distributed, evaluate, experiment, run_io, train

TIMEOUT_S = 150
NUM_STEPS = 6
# Tolerance: both runs do the same float32 math on the same devices' shares of the batch, but
# the cross-process all-reduce (gloo) may add the 4 device gradients in another order than the
# in-process one: ~1e-7 relative per step, carried by Adam into updates of size <= lr = 1e-2,
# i.e. ~1e-9 per step over 6 steps. atol 1e-6 leaves margin; a wrong data split or a missing
# device in the reduction changes parameters by ~lr.
ATOL, RTOL = 1e-6, 1e-5


def _config():
    config = config_dict.load_config_file(
        pathlib.Path(__file__).parents[1] / "configs" / "digits.py"
    )
    config.model.features = (4, 8)
    config.model.dense_features = 16
    config.optimizer.warmup_steps = 2
    config.train.update(
        batch_size=16,
        num_steps=NUM_STEPS,
        eval_batch_size=64,
        log_every_steps=3,
        eval_every_steps=NUM_STEPS,
        checkpoint_every_steps=NUM_STEPS,
        progress_bar=False,
    )
    return config


def _reference(config):
    """The 2-process run's global batches, trained over this process's 4 devices."""
    built = train.build_experiment(config)
    engine = built.engine
    assert engine.num_devices == 4 and built.steps_per_dispatch == 1
    initial = experiment.initial_members(built)  # host: survives donation
    carry = engine.put_members(initial)
    streams = [
        data.train_batches(
            config.data,
            global_batch_size=config.train.batch_size,
            seed=config.seed,
            num_local_devices=2,
            process_index=i,
            process_count=2,
        )
        for i in range(2)
    ]
    losses = []
    for _ in range(NUM_STEPS):
        parts = [next(s) for s in streams]
        chunk = {k: np.concatenate([p[k] for p in parts])[None] for k in parts[0]}  # K = 1
        carry, metrics = engine.train(carry, engine.put_chunk(chunk))
        losses.append(float(metrics["loss"][0, 0]))
    batches = data.eval_batches(config.data, split="test", global_batch_size=64)
    test = evaluate.evaluate_members(engine, carry, batches, built.who.names())[0]
    return {"initial": initial, "final": engine.get_members(carry), "losses": losses, "test": test}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _final_members(workdir):
    config = run_io.read_config(workdir)
    built = train.build_experiment(config)
    with experiment.make_checkpointer(workdir, config, read_only=True) as ckpt:
        carry, _ = ckpt.restore(experiment.abstract_members(built), step="latest")
    return jax.device_get(carry)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("two_processes")
    port = _free_port()
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    env["JAX_PLATFORMS"] = "cpu"
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(i), str(port), str(workdir)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        reference = _reference(_config())  # Meanwhile, in this process.
        outputs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, (p, out) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"process {i} failed:\n{out[-5000:]}"
    results = [json.loads((workdir / f"result_{i}.json").read_text()) for i in range(2)]
    return workdir, results, reference


@pytest.mark.slow
def test_two_processes_train_like_one(two_process_run):
    workdir, results, reference = two_process_run
    got, want = _final_members(workdir), reference["final"]
    assert int(got.states[0].step) == int(want.states[0].step) == NUM_STEPS
    assert got.alive.tolist() == [True] and got.diverged_at.tolist() == [0]
    # Every leaf of the members: parameters, moments (gathered from the 4 shards on 2
    # processes), step counter, key.
    assert jax.tree.structure(got) == jax.tree.structure(want)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, atol=ATOL, rtol=RTOL), want, got)
    pairs = zip(
        jax.tree.leaves(got.states[0].params),
        jax.tree.leaves(reference["initial"].states[0].params),
        strict=True,
    )
    moved = [np.max(np.abs(a - b)) for a, b in pairs]
    assert max(moved) > 1e3 * ATOL, "training must move the parameters far beyond the tolerance"
    # Both processes saw 4 devices in all, 2 of their own, and report the same test metrics.
    assert [r["process"] for r in results] == [[0, 2, 4], [1, 2, 4]]
    for r in results:
        assert r["final"]["test_accuracy"] == reference["test"]["accuracy"]
        np.testing.assert_allclose(r["final"]["test_loss"], reference["test"]["loss"], rtol=1e-5)


@pytest.mark.slow
def test_only_process_zero_writes(two_process_run):
    workdir, _, reference = two_process_run
    assert run_io.read_config(workdir).distributed.process_id == 0  # written by process 0
    records = run_io.read_metrics(workdir)
    assert [(r["step"], r["split"]) for r in records] == [
        (1, "train"), (3, "train"), (6, "train"), (6, "validation"), (6, "test"),
    ]  # fmt: skip
    losses = reference["losses"]
    expected = [losses[0], np.mean(losses[1:3]), np.mean(losses[3:6])]
    got = [r["loss"] for r in records if r["split"] == "train"]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert len(list(workdir.glob("events.out.tfevents.*"))) == 1  # one TensorBoard writer


def test_resolve_parameters_config_over_environment():
    environ = {"JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3", "JAX_COORDINATOR_ADDRESS": "h:1"}
    got = distributed.resolve_parameters({"process_id": 1}, environ)
    assert got == {"coordinator_address": "h:1", "num_processes": 4, "process_id": 1}
    assert distributed.resolve_parameters({}, {}) == {
        "coordinator_address": None,
        "num_processes": None,
        "process_id": None,
    }


@pytest.mark.parametrize(
    "config, environ, match",
    [
        ({"num_processes": 2, "process_id": 2}, {}, "must be < num_processes=2"),
        ({"num_processes": 0}, {}, "num_processes=0 must be an int >= 1"),
        ({}, {"JAX_PROCESS_ID": "one"}, "JAX_PROCESS_ID='one' must be an int"),
        ({"coordinator_address": "localhost"}, {}, "must be 'host:port'"),
    ],
)
def test_resolve_parameters_rejects_bad_values(config, environ, match):
    with pytest.raises(ValueError, match=match):
        distributed.resolve_parameters(config, environ)


def test_disabled_config_stays_single_process():
    info = distributed.initialize({"enabled": False})
    assert (info.process_index, info.process_count, info.is_primary) == (0, 1, True)
    assert not jax.distributed.is_initialized()


def test_resume_ignores_process_fields_only(tmp_path):
    config = _config()
    saved = run_io.config_to_dict(config)
    del saved["distributed"]  # How the processes meet may change between a run and its resume.
    (tmp_path / run_io.CONFIG_FILE).write_text(json.dumps(saved))
    config.distributed.update(enabled=True, process_id=1, num_processes=2)
    assert run_io.check_resumable(tmp_path, config)
    config.train.shard_optimizer = True  # Not the behaviour of that run: refused.
    with pytest.raises(run_io.ConfigMismatchError, match="train.shard_optimizer"):
        run_io.check_resumable(tmp_path, config)


def test_bad_distributed_config_is_a_config_error(tmp_path):
    config = _config()
    config.distributed.update(enabled=True, num_processes=2, process_id=5)
    with pytest.raises(train.ConfigError, match="process_id=5 must be < num_processes=2"):
        train.train_and_evaluate(config, tmp_path)
    assert not jax.distributed.is_initialized()


def _worker(process_id: int, port: int, workdir: str) -> None:
    """One process of the 2-process run (the test runs this file as a script)."""
    config = _config()
    config.distributed.update(
        enabled=True,
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=2,
        process_id=process_id,
    )
    # ZeRO-1 across the processes too: the moments are sharded over all 4 devices, gathered
    # from both processes for the checkpoint (the reference keeps them replicated).
    config.train.shard_optimizer = True
    final = train.train_and_evaluate(config, workdir)
    info = distributed.process_info()
    process = [info.process_index, info.local_device_count, info.device_count]
    result = {"process": process, "final": final}
    run_io.write_json(pathlib.Path(workdir) / f"result_{process_id}.json", result)


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
