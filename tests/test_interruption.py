"""Interrupted equals uninterrupted: a run stopped or killed at any point, then run again, ends
with the files of a run that never stopped (every metrics record, result.json, the reports),
timing fields aside.

The default suite stops runs in-process (`stop_after_step`, which takes the SIGTERM path) at
points between log, evaluation and checkpoint points, crashes one after its final checkpoint,
and kills one `adamlab train` process with SIGKILL at a checkpoint's commit; the matrix over
every command and more kill points is `slow` (`pytest -m slow tests/test_interruption.py`).
"""

import csv
import dataclasses
import json
import math
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import pytest

from adamlab import config_dict
from adamlab.training import run_io, train
from adamlab.training.checkpoint import MANIFEST_FILE as MANIFEST

from helpers import persisted_outputs, without_timing

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Configs by path: a shipped config's name resolves through the installed package, which in a
# second checkout (a worktree sharing one environment) is another checkout's configs/.
_DIGITS = str(ROOT / "configs" / "digits.py")
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
    # This process timed no step: the rate is what the first attempt recorded, not NaN.
    (row,) = json.loads((tmp_path / train.RESULT_FILE).read_text())["rows"]
    assert row["steps_per_sec"] == train.recorded_rate(run_io.read_metrics(tmp_path))


def test_the_recorded_rate_weighs_each_log_window_by_its_steps():
    records = [
        {"step": 4, "split": "train", "loss": 1.0, "steps_per_sec": 100.0},
        {"step": 4, "split": "validation", "accuracy": 0.5},
        {"step": 8, "split": "train", "loss": 0.5, "steps_per_sec": 50.0},
        {"step": 8, "split": "test", "accuracy": 0.6},
    ]
    assert train.recorded_rate(records) == pytest.approx(8 / (4 / 100 + 4 / 50))
    assert math.isnan(train.recorded_rate(records[1:2]))


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
        [sys.executable, "-c", _LAUNCHER, *args],  # `adamlab *args`, this checkout's configs.
        env=env,
        cwd=ROOT,
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
    return ["train", "--config", _DIGITS, "--workdir", str(workdir), *flags]


def test_adamlab_train_killed_at_a_checkpoint_commit_resumes_to_the_same_files(
    uninterrupted, tmp_path
):
    workdir = tmp_path / "run"
    process = _run_adamlab(*_train_args(workdir))
    assert _kill_when(process, workdir / "checkpoints" / "6"), process.stderr.read()
    done = _run_adamlab(*_train_args(workdir))
    assert done.wait() == 0, done.stderr.read()
    assert persisted_outputs(workdir) == persisted_outputs(uninterrupted)


# ---------------------------------------------------------------------------- the kill matrix
# Every command, run as a process, killed at many points (slow): each case runs the command in a
# fresh workdir, kills it at its point (SIGKILL, or SIGTERM for one point per command), runs the
# same command again to completion, and compares every persisted output with an uninterrupted
# run's. A process that ends before its kill point still makes a valid case (it is compared).

# Every command runs through this launcher (then as `adamlab <command> ...`). It makes this
# checkout's configs/ the package `adamlab.configs` (an editable install shared by several
# checkouts maps it to one of them: a shipped config's name, and the defaults that
# run_io.check_resumable reads from configs/digits.py on every resume, would come from another
# checkout), and it shrinks the benchmark's workloads, shipped configs that the command takes no
# overrides for (tiny CNN, 24 steps, a 2 x 2 heatmap).
_LAUNCHER = """
import importlib.util, pathlib, sys

configs = pathlib.Path.cwd() / "configs"
spec = importlib.util.spec_from_file_location(
    "adamlab.configs", configs / "__init__.py", submodule_search_locations=[str(configs)]
)
sys.modules["adamlab.configs"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sys.modules["adamlab.configs"])

from adamlab import cli, config_dict

_load = config_dict.load_config


def load_config(name):
    config = _load(name)
    if str(name).startswith("bench_"):
        config.model.features = (8,)
        config.model.dense_features = 16
        config.optimizer.warmup_steps = 2
        config.train.update(
            num_steps=24, batch_size=32, eval_batch_size=256, log_every_steps=4,
            eval_every_steps=4, checkpoint_every_steps=8, progress_bar=False,
        )
        config.benchmark.target = 0.3
        config.benchmark.heatmap.update(
            learning_rates=(1e-3, 1e-2), strengths=(1e-4, 1e-2), seeds=(0,)
        )
    return config


config_dict.load_config = load_config
cli.console(["adamlab", *sys.argv[1:]])
"""

_TINY = {
    "model.features": "(8,)", "model.dense_features": "16", "optimizer.warmup_steps": "2",
    "train.batch_size": "32", "train.eval_batch_size": "256", "train.progress_bar": "False",
}  # fmt: skip


def _overrides(**fields) -> list[str]:
    return [f"--config.{k}={v}" for k, v in (_TINY | fields).items()]


_TRAIN = {
    "train.num_steps": "18", "train.log_every_steps": "4", "train.eval_every_steps": "3",
    "train.checkpoint_every_steps": "6", "train.steps_per_dispatch": "1",
}  # fmt: skip
_GROUP = {
    "train.num_steps": "16", "train.log_every_steps": "4", "train.eval_every_steps": "4",
    "train.checkpoint_every_steps": "8",
}  # fmt: skip
_DIAGNOSTICS = {
    "diagnostics.layer_stats_every_steps": "3", "diagnostics.curvature_every_steps": "6",
    "diagnostics.curvature_examples": "128",
}  # fmt: skip
# The study: batch sizes 64 and 128 (20 and 10 steps an epoch on digits) for 3 epochs, a
# checkpoint at each epoch's end (group_config rounds checkpoint_every_steps up to an epoch).
_STUDY = {
    "study.batch_sizes": "(64,128)", "study.rules": "('none','sqrt')", "train.num_epochs": "3.0",
    "train.checkpoint_every_steps": "1",
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class _Command:
    """A command of the matrix: its arguments for a workdir, and where its stages checkpoint
    (directories relative to the workdir, in the order they run, with their final step)."""

    args: Callable[[pathlib.Path], list[str]]
    stages: dict[str, int]
    after: Callable[[pathlib.Path], list[str]] | None = None  # A command run on the result.


_COMMANDS = {
    "benchmark": _Command(
        lambda w: [
            "benchmark",
            "--workloads",
            "digits_cnn",
            "--optimizers",
            "adam,sgd",
            "--trials",
            "2",
            "--seeds",
            "2",
            "--workdir",
            str(w),
        ],
        {f"digits_cnn/{o}/{stage}": 24 for o in ("adam", "sgd") for stage in ("tune", "final")}
        | {"heatmap/adam_l2": 24, "heatmap/adamw": 24},
    ),
    "train": _Command(
        lambda w: ["train", "--config", _DIGITS, "--workdir", str(w), *_overrides(**_TRAIN)],
        {".": 18},
    ),
    "train_diagnostics": _Command(
        lambda w: [
            "train",
            "--config",
            _DIGITS,
            "--workdir",
            str(w),
            *_overrides(**_TRAIN, **_DIAGNOSTICS),
        ],
        {".": 18},
        after=lambda w: ["diagnostics", "--workdir", str(w)],
    ),
    "compare": _Command(
        lambda w: [
            "compare",
            "--config",
            _DIGITS,
            "--optimizers",
            "adam,adamw",
            "--seeds",
            "2",
            "--workdir",
            str(w),
            *_overrides(**_GROUP),
        ],
        {"adam": 16, "adamw": 16},
    ),
    "sweep": _Command(
        lambda w: [
            "sweep",
            "--config",
            _DIGITS,
            "--sweep",
            "optimizer.learning_rate=1e-3,1e-2",
            "--seeds",
            "2",
            "--workdir",
            str(w),
            *_overrides(**_GROUP),
        ],
        {"adam": 16},
    ),
    "study_batch_size": _Command(
        lambda w: [
            "study",
            "batch_size",
            "--config",
            str(ROOT / "configs" / "study_batch_size.py"),
            "--seeds",
            "1",
            "--workdir",
            str(w),
            *_overrides(**_STUDY),
        ],
        {"batch64": 60, "batch128": 30},
    ),
}


@dataclasses.dataclass(frozen=True)
class _KillPoint:
    """Kill when `path` (relative to the workdir; a glob if it has a `*`) exists, `delay` s
    later; or, with no path, at the fraction `after` of the uninterrupted run's training time
    (from its first metrics record to its end: start-up is no part of it) after this run's
    first metrics record."""

    signal: int = signal.SIGKILL
    path: str | None = None
    delay: float = 0.0
    after: float | None = None


def _first_checkpoint(stage: str, final: int) -> int:
    every = {"train": 6, "group": 8}
    if stage.startswith("batch"):
        return final // 3  # One checkpoint an epoch, 3 epochs.
    return every["train"] if stage == "." else every["group"]


def _kill_points(command: _Command) -> dict[str, _KillPoint]:
    """Per command: a timer, the first commit of each stage, a commit mid-way through the
    single-stage ones, the inside of a save, the final step's commit (before its manifest) and
    just after it (its manifest written: the test evaluation, result.json and the report are
    to come), and a SIGTERM."""
    stages = list(command.stages)
    points = {
        "timer": _KillPoint(after=0.5),
        "in_save": _KillPoint(path="**/*.orbax-checkpoint-tmp*"),
    }
    for stage, final in command.stages.items():
        first = _first_checkpoint(stage, final)
        name = "commit" if stage == "." else f"commit_{stage.replace('/', '_')}"
        points[name] = _KillPoint(path=f"{stage}/checkpoints/{first}")
        if len(stages) == 1 and 2 * first < final:
            points[f"{name}_{2 * first}"] = _KillPoint(path=f"{stage}/checkpoints/{2 * first}")
    last = stages[-1]
    final = f"{last}/checkpoints/{command.stages[last]}"
    points["final_commit"] = _KillPoint(path=final)
    points["after_final"] = _KillPoint(path=f"{final}/{MANIFEST}")
    middle = stages[len(stages) // 2]
    if middle != last:  # The benchmark: its last final stage resumed at its last step.
        step = f"{middle}/checkpoints/{command.stages[middle]}/{MANIFEST}"
        points[f"after_final_{middle.replace('/', '_')}"] = _KillPoint(path=step)
    first = _first_checkpoint(middle, command.stages[middle])
    points["sigterm"] = _KillPoint(signal.SIGTERM, path=f"{middle}/checkpoints/{first}")
    return points


_CASES = [(c, p) for c, command in _COMMANDS.items() for p in _kill_points(command)]


def _start(command: _Command, workdir: pathlib.Path, log: pathlib.Path) -> subprocess.Popen:
    """The command as a process of its own, on one CPU device (what a user's machine gives;
    the test session's 4 simulated devices are not passed on), its output in `log`."""
    env = dict(os.environ, ADAMLAB_GC_FREEZE="0")
    env["XLA_FLAGS"] = " ".join(
        f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f
    )
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(command.args(workdir))}\n")
        out.flush()
        return subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, *command.args(workdir)],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip


def _run_to_completion(
    command: _Command, workdir: pathlib.Path, log: pathlib.Path
) -> tuple[float, float]:
    """Runs `command` to the end (exit 0); (seconds to its first metrics record, to its end)."""
    start, first = time.monotonic(), None
    process = _start(command, workdir, log)
    while process.poll() is None and time.monotonic() - start < 1800:
        if first is None and next(workdir.rglob(run_io.METRICS_FILE), None) is not None:
            first = time.monotonic() - start
        time.sleep(0.02)
    code = process.poll()
    if code is None:
        process.kill()
    assert code == 0, f"exit {code}; see {log}:\n{log.read_text()[-3000:]}"
    wall = time.monotonic() - start
    if command.after:
        done = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, *command.after(workdir)],
            capture_output=True, text=True, timeout=600, cwd=ROOT,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    return (wall if first is None else first), wall


def _reached(point: _KillPoint, workdir: pathlib.Path, training: float | None, timing) -> bool:
    """Whether `point` is reached: its path exists, or (a timer) the fraction `after` of the
    uninterrupted run's training time has passed since this run's first metrics record,
    `training`. Counted from this run's own start of training, not from its launch: its
    start-up and compiling, faster than the uninterrupted run's on a warm cache, would
    otherwise let it finish before the timer fires."""
    if point.path is None:
        first, wall = timing
        return training is not None and time.monotonic() - training >= point.after * (wall - first)
    if "*" in point.path:
        return next(workdir.glob(point.path), None) is not None
    return (workdir / point.path).exists()


def _kill_at(process, point: _KillPoint, workdir: pathlib.Path, timing) -> int | None:
    """Sends `point.signal` once `point` is reached; the process's exit code, None if it ended
    before (a valid case: it is compared all the same)."""
    started, training = time.monotonic(), None
    while not _reached(point, workdir, training, timing):
        if training is None and next(workdir.rglob(run_io.METRICS_FILE), None) is not None:
            training = time.monotonic()  # This run's first metrics record: it trains.
        if process.poll() is not None:
            return None
        if time.monotonic() - started > 1800:
            process.kill()
            raise AssertionError(f"{point} not reached in 30 minutes")
        time.sleep(0.005)
    time.sleep(point.delay)
    process.send_signal(point.signal)
    return process.wait(timeout=600)


@pytest.fixture(scope="module")
def matrix_uninterrupted(tmp_path_factory):
    """Command name -> (workdir of its uninterrupted run, its timing: seconds to the first
    metrics record and to the end), run on first use."""
    runs = {}

    def get(name: str) -> tuple[pathlib.Path, tuple[float, float]]:
        if name not in runs:
            workdir = tmp_path_factory.mktemp(f"uninterrupted-{name}") / "run"
            timing = _run_to_completion(_COMMANDS[name], workdir, workdir.parent / "log.txt")
            runs[name] = workdir, timing
        return runs[name]

    return get


_TIMING_COLUMN = re.compile(r"sec|time|wall|compile|steps/s|speedup", re.IGNORECASE)
_TIMING_TEXT = re.compile(r"(?:\d[\d.e+-]*|nan|inf) (?:s|steps/s)\b|load average [\d., ]+")


def summary_without_timing(text: str) -> list[str]:
    """summary.md's lines, timing aside: table columns whose header names a time (seconds,
    wall, compile, steps/s, speedup), rows about seconds and whole tables under a title naming
    a time (the benchmark's "seconds to target:" AlgoPerf score, whose cells, scores and row
    order all come from timings) are dropped, and durations, rates and load averages in the
    prose masked. Everything else (settings, steps to target, metrics with their intervals)
    must be equal."""
    out, header, timed_table = [], None, False
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            if line.strip():
                timed_table = line.rstrip().endswith(":") and bool(_TIMING_COLUMN.search(line))
            out.append(_TIMING_TEXT.sub("<timing>", line))
            continue
        if timed_table:
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        if set(line) <= set("|-: ") or "seconds" in line:
            continue
        out.append(
            " | ".join(
                c for h, c in zip(header, cells, strict=False) if not _TIMING_COLUMN.search(h)
            )
        )
    return out


def test_summary_without_timing_keeps_results_and_drops_what_timings_decide():
    """The kill matrix's comparison of summary.md (here, in the default suite): a column or a
    table of seconds, and durations in the prose, differ between any two runs; the rest
    must not."""

    def summary(seconds: str, order: tuple[str, str], took: str) -> str:
        rows = {"adam": f"| adam | 1.0000 | 12 (1.00) | {seconds} |", "sgd": "| sgd | 0.9 | 14 |"}
        timed = {"adam": "| adam | 1.0000 | 0.02 (1.00) |", "sgd": "| sgd | 0.93 | 0.03 (1.2) |"}
        return "\n".join(
            [f"Wall time {took} s in all.", "", "steps to target:", "",
             "| optimizer | score | digits_cnn | median seconds to target |", "|---|---|---|---|",
             *(rows[o] for o in ("adam", "sgd")), "", "seconds to target:", "",
             "| optimizer | score | digits_cnn |", "|---|---|---|", *(timed[o] for o in order)]
        )  # fmt: skip

    first = summary("0.0159", ("adam", "sgd"), "12.2")
    again = summary("0.0227", ("sgd", "adam"), "9.1")
    assert summary_without_timing(first) == summary_without_timing(again)
    kept = summary_without_timing(first)
    assert "adam | 1.0000 | 12 (1.00)" in kept  # Steps to target are compared, seconds not.
    assert not any("0.02 (1.00)" in line for line in kept)
    assert summary_without_timing(first.replace("12 (1.00)", "13 (1.00)")) != kept


def _differences(actual: dict, expected: dict, limit: int = 12) -> list[str]:
    """Where two `persisted_outputs` differ: a file missing on either side, or its first
    differing records/rows and fields."""
    lines = [f"missing: {k}" for k in sorted(expected.keys() - actual.keys())]
    lines += [f"extra: {k}" for k in sorted(actual.keys() - expected.keys())]
    for key in sorted(expected.keys() & actual.keys()):
        a, e = actual[key], expected[key]
        if a == e:
            continue
        if isinstance(a, list) and isinstance(e, list):
            if len(a) != len(e):
                lines.append(f"{key}: {len(a)} records, expected {len(e)}")
            for i, (x, y) in enumerate(zip(a, e, strict=False)):
                if x != y:
                    fields = {k for k in set(x) | set(y) if x.get(k) != y.get(k)}
                    shown = {k: (x.get(k), y.get(k)) for k in sorted(fields)[:4]}
                    lines.append(f"{key}[{i}]: (got, expected) {shown}")
                    break
        elif isinstance(a, dict) and isinstance(e, dict):
            fields = sorted(k for k in set(a) | set(e) if a.get(k) != e.get(k))
            lines.append(f"{key}: fields differ: {fields[:8]}")
        else:
            lines.append(f"{key} differs")
    return lines[:limit]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "point"), _CASES, ids=[f"{c}-{p}" for c, p in _CASES])
def test_kill_matrix(matrix_uninterrupted, tmp_path, name, point):
    """`name` killed at `point`, then run again, ends with the uninterrupted run's files."""
    command = _COMMANDS[name]
    kill = _kill_points(command)[point]
    expected_dir, timing = matrix_uninterrupted(name)
    workdir, log = tmp_path / "run", tmp_path / "log.txt"
    code = _kill_at(_start(command, workdir, log), kill, workdir, timing)
    with log.open("a") as out:  # Whether the kill point was reached, for whoever reads the log.
        out.write(f"\n# {point}: {'ended before it' if code is None else f'exit {code}'}\n")
    stopped = {signal.SIGKILL: -signal.SIGKILL, signal.SIGTERM: 75}[kill.signal]
    # A SIGTERM that arrives before the loop's handler is set (imports) ends the process.
    assert code in (None, 0, stopped, -signal.SIGTERM), f"exit {code}; see {log}"
    _run_to_completion(command, workdir, log)
    actual, expected = persisted_outputs(workdir), persisted_outputs(expected_dir)
    assert actual == expected, "\n".join(_differences(actual, expected))
    if (workdir / "benchmark.json").is_file():  # seconds_per_step: a timing, but not 1e-10 s.
        with (workdir / "results.csv").open(newline="") as f:
            assert all(float(row["seconds_per_step"]) > 1e-6 for row in csv.DictReader(f))
    for summary in expected_dir.rglob("summary.md"):
        got = workdir / summary.relative_to(expected_dir)
        assert summary_without_timing(got.read_text()) == summary_without_timing(
            summary.read_text()
        ), got
