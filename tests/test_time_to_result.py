"""Time to result: the phases a run reports (train.PHASES), in RunsResult, result.json and one
log line; the start-up work done once; and benchmarks/time_to_result.py's pure helpers.

One tiny digits run (module fixture) serves the run's tests; no torch, no MNIST.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import pathlib
import sys

import jax
import numpy as np
import optax
import pytest

from adamlab import config_dict
from adamlab.training import experiment, optimizers, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import time_to_result  # noqa: E402  (numpy and the standard library only)


def _tiny_config():
    """configs/digits.py shrunk to a few seconds: 8 steps, eval every 4, save at 4 and 8."""
    config = config_dict.load_config("digits")
    config.model.features = (8,)
    config.model.dense_features = 16
    config.optimizer.warmup_steps = 2
    config.train.update(
        batch_size=32,
        eval_batch_size=128,
        num_steps=8,
        log_every_steps=4,
        eval_every_steps=4,
        checkpoint_every_steps=4,
        progress_bar=False,
    )
    return config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run: its RunsResult, its workdir and the "phases:" log records."""
    workdir = tmp_path_factory.mktemp("run")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger().addHandler(handler)
    previous = logging.getLogger().level
    logging.getLogger().setLevel(logging.INFO)
    try:
        result = train.run(_tiny_config(), workdir)
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(previous)
    lines = [r.getMessage() for r in records if r.getMessage().startswith("phases: ")]
    return {"result": result, "workdir": workdir, "lines": lines}


def test_every_phase_is_reported_and_lies_within_the_run(finished):
    result = finished["result"]
    assert tuple(result.phases) == train.PHASES
    assert all(v > 0 for v in result.phases.values()), result.phases
    inside = sum(v for k, v in result.phases.items() if k != "teardown")
    assert inside <= result.wall_time_s * 1.001  # Disjoint: they never add up to more.


def test_phases_land_in_result_json(finished):
    saved = json.loads((finished["workdir"] / train.RESULT_FILE).read_text())
    assert saved["phases"] == pytest.approx(finished["result"].phases)
    assert train._result_from_json(saved).phases == saved["phases"]


def test_one_phases_line_is_logged_and_the_benchmark_reads_it(finished):
    (line,) = finished["lines"]
    stamped = f"2026-01-02 03:04:05,678 INFO {line}"  # As adamlab's log format prints it.
    logged, phases, run_seconds = time_to_result.parse_phases_line(stamped)
    assert list(phases) == list(train.PHASES)
    assert phases == pytest.approx(finished["result"].phases, abs=0.006)  # 2 decimals.
    assert run_seconds >= finished["result"].wall_time_s - 0.006
    assert logged % 60 == pytest.approx(5.678)
    (parsed,) = time_to_result.phases_lines(stamped)
    before = {k: getattr(finished["result"], f"{k}_s") for k in ("startup", "first_step")}
    assert {k: parsed[k] for k in before} == pytest.approx(before, abs=0.006)


def test_the_time_before_the_first_step_is_start_up_setup_data_and_compiling(finished):
    result = finished["result"]
    # The process's start-up if the run was its first (else 0), then setup, data and the
    # first train program's compile.
    assert result.startup_s >= 0.0
    before = result.startup_s + sum(result.phases[k] for k in ("setup", "data", "compile"))
    # At least those phases (8 steps compile one program, before the first call); at most
    # them and what no phase counts before the first call (drawing and placing a chunk).
    assert before <= result.first_step_s <= before + 0.25 * result.wall_time_s, result
    saved = json.loads((finished["workdir"] / train.RESULT_FILE).read_text())
    assert saved["first_step_s"] == result.first_step_s


def test_only_a_process_s_first_run_counts_its_start_up(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "_runs_in_process", itertools.count())
    monkeypatch.setattr(train.runtime, "process_age", lambda: 12.5)
    startups = []

    def stop(*args):
        startups.append(args[-1])  # `_Loop`'s last argument: the run's start-up seconds.
        raise _Stop

    monkeypatch.setattr(train, "_Loop", stop)
    for i in range(2):
        with pytest.raises(_Stop):
            train.run(_tiny_config(), tmp_path / str(i))
    assert startups == [12.5, 0.0]


class _Stop(Exception):
    """Raised where the run would touch its workdir: what came before is start-up."""


def test_train_and_evaluate_validates_the_config_once(tmp_path, monkeypatch):
    calls = []
    validated = experiment._validated
    monkeypatch.setattr(experiment, "_validated", lambda *args: calls.append(1) or validated(*args))

    def stop(workdir):
        raise _Stop

    monkeypatch.setattr(train.run_io, "prepare_workdir", stop)
    with pytest.raises(_Stop):
        train.train_and_evaluate(_tiny_config(), tmp_path / "run")
    assert len(calls) == 1


def test_host_norm_is_optax_tree_norm():
    leaves = [np.random.default_rng(i).standard_normal(s, np.float32) for i, s in enumerate(
        [(3, 3, 1, 8), (8,), (128, 16), (16,)]
    )]  # fmt: skip
    tree = {"a": leaves[:2], "b": {"c": leaves[2], "d": leaves[3]}}
    expected = float(optax.tree.norm(jax.tree.map(np.asarray, tree)))
    assert train._host_norm(tree) == pytest.approx(expected, rel=1e-6)


def test_the_torch_side_follows_adamlab_s_schedule():
    config = config_dict.load_config("mnist")
    total, warmup = 842, config.optimizer.warmup_steps
    schedule = optimizers.make_schedule(config.optimizer, total)
    peak = config.optimizer.learning_rate
    for count in (0, 1, warmup - 1, warmup, warmup + 1, 400, total - 1, total, total + 5):
        expected = float(schedule(count)) / peak
        assert time_to_result.warmup_cosine(count, warmup, total) == pytest.approx(
            expected, abs=1e-6
        ), count


def test_breakdown_accounts_for_the_whole_wall_time():
    phases = {"setup": 1.0, "compile": 2.0, "train": 3.0}
    parts = time_to_result.breakdown(100.0, 112.5, 110.0, phases, run_total=6.5)
    assert parts["interpreter_imports_config"] == pytest.approx(3.5)
    assert parts["other"] == pytest.approx(0.5)
    assert parts["process_exit"] == pytest.approx(2.5)
    assert math.fsum(parts.values()) == pytest.approx(12.5)
