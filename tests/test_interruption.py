"""Interrupted equals uninterrupted: a run stopped or killed at any point, then run again, ends
with the files of a run that never stopped (every metrics record, result.json, the reports),
timing fields aside.

The default suite stops runs in-process (`stop_after_step`, which takes the SIGTERM path) at
points between log, evaluation and checkpoint points, crashes one after its final checkpoint,
and kills one `adamlab train` process with SIGKILL at a checkpoint's commit; the matrix over
every command and more kill points is `slow` (`pytest -m slow tests/test_interruption.py`).
"""

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from adamlab import config_dict
from adamlab.training import run_io, train

from helpers import persisted_outputs, without_timing

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_STEPS = 12


def tiny_config(**train_overrides):
    """configs/digits.py shrunk to seconds: 12 steps, log every 4, evaluate every 3,
    checkpoint every 6, one step per call (so a stop can fall between any two points)."""
    config = config_dict.load_config_file(ROOT / "configs" / "digits.py")
    config.model.features = (8,)
    config.model.dense_features = 16
    config.optimizer.learning_rate = 1e-2
    config.optimizer.warmup_steps = 2
    config.train.update(
        batch_size=32, eval_batch_size=128, num_steps=NUM_STEPS, log_every_steps=4,
        eval_every_steps=3, checkpoint_every_steps=6, keep_checkpoints=2, progress_bar=False,
        steps_per_dispatch=1,
    )  # fmt: skip
    config.train.update(train_overrides)
    return config


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    train.train_and_evaluate(tiny_config(), workdir)
    return workdir


def test_stops_between_every_kind_of_point_resume_to_the_same_files(uninterrupted, tmp_path):
    # 2: before the first log; 5: after a log (4) and an evaluation (3), before a checkpoint;
    # 7: after a checkpoint (6), mid-window; 11: one step before the end.
    for stop in (2, 5, 7, 11):
        stopped = train.train_and_evaluate(tiny_config(), tmp_path, stop_after_step=stop)
        assert stopped["interrupted"] and stopped["step"] == stop
    train.train_and_evaluate(tiny_config(), tmp_path)
    assert persisted_outputs(tmp_path) == persisted_outputs(uninterrupted)


def test_a_stop_writes_no_record_the_uninterrupted_run_lacks(uninterrupted, tmp_path):
    train.train_and_evaluate(tiny_config(), tmp_path, stop_after_step=5)
    expected = {(r["split"], r["step"]) for r in run_io.read_metrics(uninterrupted)}
    written = [(r["split"], r["step"]) for r in run_io.read_metrics(tmp_path)]
    assert written == [("train", 1), ("validation", 3), ("train", 4)]
    assert set(written) <= expected


class _Killed(Exception):
    """Stands for a SIGKILL: the process ends where it is, nothing more is written."""


@pytest.mark.parametrize("where", ["before_test", "before_result"])
def test_a_run_killed_after_its_final_checkpoint_finishes(
    uninterrupted, tmp_path, monkeypatch, where
):
    """The final checkpoint committed, then killed before the test evaluation, or after its
    record but before result.json: the next run finishes, with one test record."""
    with monkeypatch.context() as patch:
        if where == "before_test":
            original = train._Loop._evaluate

            def evaluate(self, carry, split):
                if split == "test":
                    raise _Killed
                return original(self, carry, split)

            patch.setattr(train._Loop, "_evaluate", evaluate)
        else:
            original_write = run_io.write_json

            def write_json(path, data):
                if pathlib.Path(path).name == train.RESULT_FILE:
                    raise _Killed
                return original_write(path, data)

            patch.setattr(run_io, "write_json", write_json)
        with pytest.raises(_Killed):
            train.train_and_evaluate(tiny_config(), tmp_path)
    assert not (tmp_path / train.RESULT_FILE).exists()
    assert (tmp_path / "checkpoints" / str(NUM_STEPS)).is_dir()
    finals = train.train_and_evaluate(tiny_config(), tmp_path)
    assert finals["step"] == NUM_STEPS and "test_accuracy" in finals
    assert persisted_outputs(tmp_path) == persisted_outputs(uninterrupted)


def test_several_members_stopped_mid_window_report_the_uninterrupted_curves(tmp_path):
    """A grid (ours and optax x 2 seeds): rows, curves and finals read back from the records."""

    def grid_config():
        config = tiny_config(log_every_steps=3, eval_every_steps=4)
        config.runs.implementations = ("ours", "optax")
        config.runs.seeds = (0, 1)
        return config

    expected = train.run(grid_config(), tmp_path / "a")
    stopped = train.run(grid_config(), tmp_path / "b", stop_after_step=5)
    assert stopped.interrupted
    resumed = train.run(grid_config(), tmp_path / "b")
    assert persisted_outputs(tmp_path / "b") == persisted_outputs(tmp_path / "a")
    for impl, splits in expected.curves.items():
        for split, (steps, values) in splits.items():
            got_steps, got_values = resumed.curves[impl][split]
            np.testing.assert_array_equal(got_steps, steps)
            assert steps[0] <= 4  # The curve starts at the run's start, not at the resume.
            for k in values:
                np.testing.assert_array_equal(got_values[k], values[k])
    assert without_timing(resumed.finals) == without_timing(expected.finals)


def _run_adamlab(*args, **popen):
    env = dict(os.environ, ADAMLAB_GC_FREEZE="0")
    return subprocess.Popen(
        [sys.executable, "-m", "adamlab", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def _kill_when(process, path: pathlib.Path, timeout: float = 300) -> bool:
    """SIGKILLs `process` the moment `path` exists; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return True


def _train_args(workdir):
    overrides = {
        "model.features": "(8,)", "model.dense_features": "16",
        "optimizer.learning_rate": "0.01", "optimizer.warmup_steps": "2",
        "train.batch_size": "32", "train.eval_batch_size": "128",
        "train.num_steps": str(NUM_STEPS), "train.log_every_steps": "4",
        "train.eval_every_steps": "3", "train.checkpoint_every_steps": "6",
        "train.keep_checkpoints": "2", "train.progress_bar": "False",
        "train.steps_per_dispatch": "1",
    }  # fmt: skip
    flags = [f"--config.{k}={v}" for k, v in overrides.items()]
    return ["train", "--config", "digits", "--workdir", str(workdir), *flags]


def test_adamlab_train_killed_at_a_checkpoint_commit_resumes_to_the_same_files(
    uninterrupted, tmp_path
):
    workdir = tmp_path / "run"
    process = _run_adamlab(*_train_args(workdir))
    assert _kill_when(process, workdir / "checkpoints" / "6"), process.stderr.read()
    done = _run_adamlab(*_train_args(workdir))
    assert done.wait() == 0, done.stderr.read()
    assert persisted_outputs(workdir) == persisted_outputs(uninterrupted)
