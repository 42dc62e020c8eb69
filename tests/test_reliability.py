"""Issue 15, "Nothing lost, ever": one writer per workdir (real processes race for it, hold it,
are killed with SIGKILL), and no temporary files left behind by tf.data's AutoGraph. Issue 27:
a storage or config-file error is one line from the command line.

The checkpoint and run-file items of the issues are tested in test_checkpoint.py and
test_run_io.py.
"""

import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from adamlab.training import run_io
from adamlab.training.workdir_lock import (
    LOCK_FILE,
    OWNER_FILE,
    WorkdirBusyError,
    WorkdirLock,
)

_HOLDER = """
    import sys, time
    from adamlab.training.workdir_lock import WorkdirLock
    try:
        lock = WorkdirLock(sys.argv[1])
        while len(sys.argv) > 2 and not __import__("os").path.exists(sys.argv[2]):
            time.sleep(0.01)  # a start line: every process tries at the same moment
        lock.acquire()
    except Exception as e:
        print("refused:", e, flush=True)
        sys.exit(3)
    print("held", flush=True)
    time.sleep(600)
"""


def _start_holder(workdir, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_HOLDER), str(workdir), *map(str, extra)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)  # reaped: its pid no longer exists


def test_a_second_writer_is_refused_until_the_first_is_killed(tmp_path):
    """Issue 15.2, a second `adamlab train` on the same workdir. The holder is a real process;
    after kill -9 (no cleanup at all) the lock is free at once: never stale."""
    holder = _start_holder(tmp_path)
    try:
        assert holder.stdout.readline().strip() == "held", holder.stderr.read()
        with pytest.raises(WorkdirBusyError) as info:
            WorkdirLock(tmp_path).acquire()
        message = str(info.value)
        assert f"{tmp_path} is being written by pid {holder.pid} on host" in message
        assert socket.gethostname() in message and " since 20" in message
        assert message.endswith("wait for it or use another --workdir")
    finally:
        _kill(holder)
    with run_io.WorkdirLock(tmp_path) as lock:  # the same class, from run_io
        assert lock.held
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert (tmp_path / LOCK_FILE).read_text() == ""  # released: no holder named


def test_writers_started_together_one_wins(tmp_path):
    """Issue 15.2, started together: three processes race from one start line."""
    go = tmp_path / "go"
    workdir = tmp_path / "run"
    workdir.mkdir()
    racers = [_start_holder(workdir, go) for _ in range(3)]
    try:
        time.sleep(1.0)  # let them all reach the start line
        go.touch()
        lines = [racer.stdout.readline().strip() for racer in racers]
        assert sorted(line.split(":")[0] for line in lines) == ["held", "refused", "refused"]
        winner = racers[lines.index("held")]
        assert all(f"pid {winner.pid} " in line for line in lines if line != "held")
    finally:
        for racer in racers:
            _kill(racer)


def test_the_lock_is_exclusive_within_a_process_and_released_on_errors(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with WorkdirLock(tmp_path):
            with pytest.raises(WorkdirBusyError, match=f"pid {os.getpid()} "):
                WorkdirLock(tmp_path).acquire()
            raise RuntimeError("boom")
    with WorkdirLock(tmp_path):  # released by the error above
        pass


def test_only_the_primary_process_takes_the_lock(tmp_path):
    with WorkdirLock(tmp_path, primary=True):
        with WorkdirLock(tmp_path, primary=False) as other:  # process 1..n of a multi-host run
            assert not other.held


# -- where flock is unavailable (some network filesystems) ---------------------------------------


@pytest.fixture
def no_flock(monkeypatch):
    def unsupported(*args):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", unsupported)


def _owner(path, pid, host=None):
    record = {"pid": pid, "host": host or socket.gethostname(), "since": "2024-01-01T00:00:00"}
    (path / OWNER_FILE).write_text(json.dumps(record))


def test_fallback_takes_over_from_a_holder_that_died(tmp_path, no_flock):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # exited and reaped: its pid names no process
    _owner(tmp_path, dead.pid)
    with WorkdirLock(tmp_path) as lock:
        assert lock.held
        assert json.loads((tmp_path / OWNER_FILE).read_text())["pid"] == os.getpid()
        with pytest.raises(WorkdirBusyError, match=f"pid {os.getpid()} .*delete .*lock.owner"):
            WorkdirLock(tmp_path).acquire()
    assert not (tmp_path / OWNER_FILE).exists()


def test_fallback_refuses_a_live_holder_or_one_on_another_host(tmp_path, no_flock):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        _owner(tmp_path, live.pid)
        with pytest.raises(WorkdirBusyError, match=f"pid {live.pid} on host"):
            WorkdirLock(tmp_path).acquire()
    finally:
        _kill(live)
    _owner(tmp_path, live.pid, host="elsewhere")  # cannot be checked from here: held
    with pytest.raises(WorkdirBusyError, match="on host elsewhere"):
        WorkdirLock(tmp_path).acquire()


# -- tf.data / AutoGraph temporary files -------------------------------------------------------


def test_tf_data_leaves_no_autograph_files_and_batches_are_unchanged(tmp_path):
    """Every tf.data run left `__autograph_generated_file*.py` in the temp directory: AutoGraph
    deletes them at a clean exit only. A process that exits without cleanup (os._exit) builds
    the train and eval pipelines: no file; with AutoGraph's default rules back, files appear
    (what the test would catch) and the batches are bitwise the same."""
    script = """
        import glob, hashlib, itertools, os, tempfile
        import tensorflow_datasets as tfds
        from adamlab import data
        from adamlab.data import _tf_setup

        def pipelines_digest():
            config = data.default_data_config()
            config.name, config.download = "cifar10", True
            where = dict(num_local_devices=1, process_index=0, process_count=1)
            train = data.train_batches(config, global_batch_size=8, seed=3, **where)
            batches = [*itertools.islice(train, 3)]
            batches += data.eval_batches(config, split="test", global_batch_size=8, **where)
            digest = hashlib.sha256()
            for batch in batches:
                for key in sorted(batch):
                    digest.update(batch[key].tobytes())
            return digest.hexdigest()

        def generated():
            return len(glob.glob(os.path.join(tempfile.gettempdir(), "__autograph_generated*")))

        with tfds.testing.mock_data(num_examples=24):
            ours = pipelines_digest()
            files_ours = generated()
            rules = _tf_setup.autograph_config.CONVERSION_RULES
            _tf_setup.autograph_config.CONVERSION_RULES = rules[2:]  # AutoGraph's defaults
            default = pipelines_digest()
        print(ours == default, files_ours, generated() > 0, flush=True)
        os._exit(0)  # no atexit: what a killed run does
    """
    env = dict(os.environ, TMPDIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["True", "0", "True"]


# -- one line per storage or config error, from the command line (issue 27.7) -------------------


@pytest.mark.parametrize(
    "config, expected",
    [
        ("def get_config(:\n    pass\n", ":1: SyntaxError: invalid syntax"),
        ("def get_config():\n    return 3\n", "get_config() returned a int, not an"),
    ],
    ids=["syntax_error", "not_a_config"],
)
def test_a_bad_config_file_is_one_line(tmp_path, capsys, config, expected):
    from adamlab import cli

    (tmp_path / "bad.py").write_text(config)
    args = ["adamlab", "train", f"--config={tmp_path / 'bad.py'}", f"--workdir={tmp_path / 'w'}"]
    assert cli.main(args) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and str(tmp_path / "bad.py") in err
    assert not (tmp_path / "w").exists()


def test_storage_errors_are_one_line_from_the_command_line(tmp_path, capsys):
    """A `.lock` that is a directory stops `adamlab train` with one line naming it; the CLI
    prints disk-full errors (here as the checkpointer raises them) the same way."""
    from adamlab import cli
    from adamlab.training import checkpoint

    (tmp_path / LOCK_FILE).mkdir(parents=True)
    args = ["adamlab", "train", "--config=digits", f"--workdir={tmp_path}",
            "--config.train.num_steps=40"]  # fmt: skip
    assert cli.main(args) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert err == f"adamlab train: error: {tmp_path / LOCK_FILE}: cannot take the workdir lock: " \
        "Is a directory\n"  # fmt: skip
    full = OSError(errno.ENOSPC, "No space left on device", "/run/metrics.jsonl")
    assert cli._message(full) == "/run/metrics.jsonl: No space left on device"
    assert cli._message(checkpoint.CheckpointWriteError("could not save")) == "could not save"


def test_a_full_disk_mid_save_stops_training_with_one_line(tmp_path):
    """Issue 27.7: the second checkpoint of `adamlab train` hits a full disk: stderr holds one
    line naming the step and the cause (exit 1; no traceback from orbax's threads), no
    temporary directory is left, the first checkpoint is intact."""
    script = f"""
        import errno, os, sys
        import orbax.checkpoint as ocp
        from adamlab import cli
        json_save = ocp.handlers.JsonCheckpointHandler._save_fn
        async def full_on_step_20(self, x, directory):
            if "/20.orbax-checkpoint-tmp" in str(directory):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
            return await json_save(self, x, directory)
        ocp.handlers.JsonCheckpointHandler._save_fn = full_on_step_20
        sys.exit(cli.main(["adamlab", "train", "--config=digits", "--workdir={tmp_path}",
            "--config.train.num_steps=40", "--config.train.checkpoint_every_steps=10",
            "--config.train.eval_every_steps=10", "--config.train.progress_bar=False",
            "--config.optimizer.warmup_steps=1"]))
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True
    )
    errors = [line for line in result.stderr.splitlines() if " INFO " not in line]
    assert result.returncode == 1 and len(errors) == 1, result.stderr[-3000:]
    assert "could not save checkpoint step 20" in errors[0]
    assert "No space left on device (ENOSPC)" in errors[0] and "intact: [10]" in errors[0]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10"]
