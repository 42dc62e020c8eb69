"""Iterating fast: stages of one process whose programs are equal share them
(`engines.Engine`'s `program_key`, `experiment.program_key`), with the numbers of stages that
compile their own."""

from __future__ import annotations

import collections
import pathlib
import sys

import jax
import pytest

from adamlab import config_dict, models
from adamlab.experiments import groups
from adamlab.training import engines, experiment, train

from helpers import assert_trees_equal, without_timing

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _stage(seed: int, learning_rates: tuple[float, ...], **fields):
    """A 4-step logistic regression on configs/digits.py's data, sweeping the learning rate
    over one seed: what a benchmark's tuning study is (its trials one sweep, its seed the
    study's)."""
    config = config_dict.load_config_file(ROOT / "configs" / "digits.py")
    config.model = models.default_model_config("logreg")  # The quickest to compile.
    config.optimizer.warmup_steps = 1
    config.train.update(
        batch_size=32, eval_batch_size=128, num_steps=4, log_every_steps=2, eval_every_steps=4,
        checkpoint_every_steps=4, progress_bar=False,
    )  # fmt: skip
    return groups.with_members(
        config, seeds=(seed,), sweep={"learning_rate": learning_rates}, **fields
    )


def test_the_key_leaves_out_the_seeds_and_swept_values_alone():
    key = experiment.program_key
    first = _stage(0, (1e-2, 3e-2))
    assert key(first) == key(_stage(7, (2e-2, 5e-3)))  # Another study: data, not program.
    assert key(first) != key(_stage(0, (1e-2, 3e-2), **{"optimizer.name": "adamw"}))
    assert key(first) != key(_stage(0, (1e-2, 3e-2), **{"train.num_steps": 5}))  # schedule
    swept_b1 = groups.with_members(first, sweep={"b1": (0.9, 0.8)})  # Another swept name:
    assert key(first) != key(swept_b1)  # another program.


@pytest.fixture
def traces():
    """The number of functions jax traced to compile since the fixture started (its monitoring
    events; counted whether or not a persistent cache then spares the XLA compile)."""
    counts = collections.Counter()

    def listen(event: str, duration: float, **kwargs) -> None:
        counts[event] += 1

    jax.monitoring.register_event_duration_secs_listener(listen)
    yield lambda: counts["/jax/core/compile/jaxpr_trace_duration"]
    jax.monitoring.unregister_event_duration_listener(listen)


# Slow: three runs, two of which compile (about 30 s on a loaded 2-core CPU). The default
# suite meets shared programs too: its resumed runs share the uninterrupted run's programs and
# are compared with it bit for bit (test_interruption.py, test_train.py).
@pytest.mark.slow
def test_a_second_study_compiles_nothing_and_trains_as_one_that_compiles(
    tmp_path, monkeypatch, traces
):
    monkeypatch.setattr(engines, "_SHARED", collections.OrderedDict())
    train.run(_stage(0, (1e-2, 3e-2)), tmp_path / "study0")
    traced = traces()
    second = train.run(_stage(7, (2e-2, 5e-3)), tmp_path / "study1")
    # The first study traced and compiled the train and eval programs (and jax's small ones);
    # the second, the same programs for other members, traces none of them.
    assert traced >= 2 and traces() == traced
    monkeypatch.setattr(engines, "_SHARED", collections.OrderedDict())  # Nothing to share.
    alone = train.run(_stage(7, (2e-2, 5e-3)), tmp_path / "alone")
    assert traces() >= traced + 2
    # Bit for bit: the rows (losses, accuracies, parameter norms) and the curves.
    assert without_timing(second.rows) == without_timing(alone.rows)
    assert repr(second.curves) == repr(alone.curves)
    assert_trees_equal(second.params, alone.params)


# ---------------------------------------------------------------------------- the benchmark

sys.path.insert(0, str(ROOT))
from benchmarks import iteration, time_to_result  # noqa: E402  (no torch, no jax)

LOG = """\
2026-01-02 03:04:10,000 INFO group 1/2: adam
2026-01-02 03:04:20,000 INFO phases: setup 2.00 s, compile 3.00 s, train 4.00 s; run 10.00 s; \
startup 5.00 s, first_step 10.50 s
2026-01-02 03:04:30,000 INFO phases: setup 0.50 s, compile 1.00 s, train 4.00 s; run 8.00 s; \
startup 0.00 s, first_step 1.60 s
"""


def test_a_command_s_runs_add_up_to_its_wall_time():
    launched = time_to_result.phases_lines(LOG)[0]["logged"] - 15.0  # 5 s before its run
    out = iteration.summarize(launched, launched + 27.0, time_to_result.phases_lines(LOG))
    assert out["wall_s"] == 27.0
    assert out["phases_s"] == {"setup": 2.5, "compile": 4.0, "train": 8.0}
    assert out["compile_and_setup_s"] == 6.5
    assert out["before_first_step_s"] == 10.5  # The first run's: start-up included.
    assert out["before_first_run_s"] == pytest.approx(5.0)
    assert out["after_last_run_s"] == pytest.approx(2.0)  # The second line at launch + 25 s.
    assert [r["run"] for r in out["runs"]] == [10.0, 8.0]


JAX_LOG = """\
WARNING:2026-01-02 03:04:05,000:jax._src.dispatch:204: Finished tracing chunk_fn for jit in 1.25 sec
2026-01-02 03:04:05,000 WARNING Finished tracing chunk_fn for jit in 1.25 sec
2026-01-02 03:04:05,300 WARNING Finished jaxpr to MLIR module conversion jit(chunk_fn) in 0.3 sec
2026-01-02 03:04:05,500 WARNING Finished XLA compilation of jit(chunk_fn) in 0.25 sec
2026-01-02 03:04:06,000 WARNING Finished tracing _init for jit in 0.125 sec
2026-01-02 03:04:06,000 INFO step 20 train: Finished tracing in 9 sec, a metric, not jax's
"""


def test_jax_seconds_sum_each_stage_and_count_a_message_printed_twice_once():
    assert iteration.jax_seconds(JAX_LOG) == {"trace": 1.375, "lower": 0.3, "compile": 0.25}
    assert iteration.jax_seconds("") == {"trace": 0.0, "lower": 0.0, "compile": 0.0}


def test_the_ratios_are_the_issue_s_targets():
    side = lambda wall, compile_setup: {"wall_s": wall, "compile_and_setup_s": compile_setup}
    median = {
        "compare": {"cold": side(40.0, 20.0), "second": side(20.0, 3.0)},
        "train_mnist": {"cold": side(45.0, 4.0), "second": side(40.0, 1.0), "torch": side(50, 0)},
        "benchmark": {"cold": side(400.0, 100.0)},
    }
    out = iteration.ratios(median, recorded_benchmark_s=500.0)
    assert out["compare_second_over_cold_compile_and_setup"] == 0.15
    assert out["compare_second_over_cold_wall"] == 0.5
    assert out["train_mnist_cold_over_torch_wall"] == 0.9
    assert out["train_mnist_second_over_torch_wall"] == 0.8
    assert out["benchmark_cold_over_recorded_wall"] == 0.8
    assert "benchmark_second_over_cold_wall" not in out  # No second run: no ratio.
