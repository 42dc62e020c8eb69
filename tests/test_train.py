"""End-to-end tests of a single run (`train_and_evaluate`, the one-member case of the one
loop `adamlab.training.train.run`) on the offline digits dataset.

Tiny runs (a one-conv CNN, batch 32, 12 steps on 4 simulated CPU devices); one trained workdir
is shared by the module. Runs of several members are tested in test_compare.py and
test_sweep.py. The full default config (>= 97% test accuracy) is a slow test.
"""

import json
import pathlib

import jax
import numpy as np
import pytest

from adamlab import config_dict
from adamlab.experiments import groups
from adamlab.training import engines, experiment, optimizers, run_io, train

from helpers import assert_trees_equal

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN_FIELDS = ("loss", "accuracy", "learning_rate", "grad_norm", "update_norm", "param_norm",
                "update_param_ratio")  # fmt: skip
NUM_STEPS = 12


def tiny_config(**train_overrides):
    """configs/digits.py shrunk to seconds: 12 steps, log every 4, checkpoint/eval every 6."""
    config = config_dict.load_config_file(ROOT / "configs" / "digits.py")
    config.model.features = (8,)
    config.model.dense_features = 16
    config.optimizer.learning_rate = 1e-2  # Tiny runs learn in 12 steps.
    config.optimizer.warmup_steps = 2  # warmup_cosine over the run: resume must keep it exact.
    config.train.update(
        batch_size=32,
        eval_batch_size=128,
        num_steps=NUM_STEPS,
        log_every_steps=4,
        eval_every_steps=6,
        checkpoint_every_steps=6,
        keep_checkpoints=2,
        progress_bar=False,
    )
    config.train.update(train_overrides)
    return config


def final_state(workdir, config=None):
    """The latest checkpoint of a run, restored read-only as a host pytree: the run's
    `members.Members` (for one run: its TrainState in `states[0]`, no grid axes)."""
    config = config or tiny_config()
    built = experiment.build_experiment(config)
    with experiment.make_checkpointer(workdir, config, read_only=True) as checkpointer:
        carry, extra = checkpointer.restore(experiment.abstract_members(built))
    return jax.device_get(carry), extra


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One uninterrupted tiny run: (workdir, returned metrics)."""
    workdir = tmp_path_factory.mktemp("run")
    return workdir, train.train_and_evaluate(tiny_config(), workdir)


def test_run_writes_config_metrics_events_and_checkpoints(run):
    workdir, result = run
    assert json.loads((workdir / "config.json").read_text()) == run_io.config_to_dict(tiny_config())

    records = run_io.read_metrics(workdir)
    train_lines = [r for r in records if r["split"] == "train"]
    # The first step, every log_every_steps, and every checkpoint step (6 and 12).
    assert [r["step"] for r in train_lines] == [1, 4, 6, 8, 12]
    for r in train_lines:
        assert set(TRAIN_FIELDS) <= set(r)
        assert all(np.isfinite(r[k]) for k in TRAIN_FIELDS)
    # Throughput leaves out compiling (done ahead of each program's first call), not the steps
    # of that call: even the first line, one step, has it.
    assert all(r["steps_per_sec"] > 0 for r in train_lines)
    assert train_lines[0]["learning_rate"] == 0.0  # Warmup starts at 0.
    assert [r["step"] for r in records if r["split"] == "validation"] == [6, 12]
    (test_line,) = [r for r in records if r["split"] == "test"]
    assert test_line["step"] == NUM_STEPS
    assert np.array(test_line["confusion"]).sum() == test_line["count"] == 360

    assert result["step"] == NUM_STEPS and result["interrupted"] is False
    assert result["test_accuracy"] == test_line["accuracy"]
    assert result["train_loss"] == train_lines[-1]["loss"]
    # 12 tiny steps learn: the loss falls and the test accuracy is twice chance (10%).
    assert train_lines[-1]["loss"] < 0.85 * train_lines[0]["loss"]
    assert result["test_accuracy"] > 0.2

    events = list(workdir.glob("events.out.tfevents.*"))
    assert len(events) == 1
    tags = _event_tags(events[0])
    assert {"train/loss", "train/grad_norm", "validation/accuracy", "test/accuracy"} <= tags

    checkpoints = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.is_dir())
    assert checkpoints == [6, 12]
    carry, extra = final_state(workdir)
    (state,) = carry.states
    assert int(state.step) == NUM_STEPS and extra["data_start_step"] == NUM_STEPS
    assert state.rng.dtype == np.uint32  # The rng is stored as key data.
    assert bool(carry.alive.all()) and int(carry.diverged_at.max()) == 0
    saved = json.loads((workdir / train.RESULT_FILE).read_text())
    assert saved["step"] == NUM_STEPS and saved["rows"][0]["test_accuracy"] == test_line["accuracy"]


def _event_tags(path):
    import tensorflow as tf

    tags = set()
    for event in tf.compat.v1.train.summary_iterator(str(path)):
        tags |= {value.tag for value in event.summary.value}
    return tags


def test_resumed_run_ends_bitwise_equal_to_uninterrupted(run, tmp_path):
    workdir, result = run
    interrupted = train.train_and_evaluate(tiny_config(), tmp_path, stop_after_step=5)
    assert interrupted["interrupted"] is True and interrupted["step"] == 5
    assert "test_accuracy" not in interrupted
    resumed = train.train_and_evaluate(tiny_config(), tmp_path)
    assert resumed["step"] == NUM_STEPS and not resumed["interrupted"]

    (expected, _), (actual, _) = final_state(workdir), final_state(tmp_path)
    assert_trees_equal(actual, expected)  # params, batch_stats, opt_state, step, rng, alive
    assert resumed["test_accuracy"] == result["test_accuracy"]
    # The metrics file holds one trajectory, equal to the uninterrupted one after the resume.
    lines = run_io.read_metrics(tmp_path)
    steps = [(r["split"], r["step"]) for r in lines]
    assert len(steps) == len(set(steps))
    by_step = {(r["split"], r["step"]): r for r in run_io.read_metrics(workdir)}
    for split, step in [("train", 8), ("train", 12), ("validation", 12), ("test", 12)]:
        new = next(r for r in lines if (r["split"], r["step"]) == (split, step))
        old = by_step[(split, step)]
        assert {k: v for k, v in new.items() if k != "steps_per_sec"} == {
            k: v for k, v in old.items() if k != "steps_per_sec"
        }


def test_rerunning_a_finished_run_trains_nothing(run):
    workdir, result = run
    lines_before = (workdir / "metrics.jsonl").read_text()
    again = train.train_and_evaluate(tiny_config(), workdir)
    assert again["step"] == NUM_STEPS
    assert again["test_accuracy"] == result["test_accuracy"]
    assert (workdir / "metrics.jsonl").read_text() == lines_before


def test_a_different_config_in_the_same_workdir_is_refused(run):
    workdir, _ = run
    config = tiny_config()
    config.optimizer.name = "adamw"
    config.train.batch_size = 64
    with pytest.raises(run_io.ConfigMismatchError) as error:
        train.train_and_evaluate(config, workdir)
    message = str(error.value)
    assert "optimizer.name: 'adam' (saved) != 'adamw' (given)" in message
    assert "train.batch_size: 32 (saved) != 64 (given)" in message
    assert "train.num_steps" in message  # Says what may change.


def test_extending_the_number_of_steps_continues_the_run(run, tmp_path):
    workdir, _ = run
    # A copy of the finished run, extended by 2 steps (allowed: only train.num_steps changes).
    for path in workdir.rglob("*"):
        target = tmp_path / path.relative_to(workdir)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.write_bytes(path.read_bytes())
    config = tiny_config(num_steps=NUM_STEPS + 2)
    result = train.train_and_evaluate(config, tmp_path)
    assert result["step"] == NUM_STEPS + 2
    assert json.loads((tmp_path / "config.json").read_text())["train"]["num_steps"] == 14
    carry, _ = final_state(tmp_path, config)
    assert int(carry.states[0].step) == NUM_STEPS + 2


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    config = tiny_config(inject_nan_at_step=7, checkpoint_every_steps=4, eval_every_steps=4)
    with pytest.raises(train.NonFiniteError) as error:
        train.train_and_evaluate(config, tmp_path)
    assert error.value.step == 7 and error.value.quantity == "loss"
    assert "non-finite loss at step 7" in str(error.value)
    assert "last good checkpoint (step 4)" in str(error.value)
    checkpoints = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert checkpoints == [4]  # Step 8 (due) was not saved: the state was already bad.
    carry, _ = final_state(tmp_path, config)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(carry.states[0].params))
    assert not (tmp_path / train.RESULT_FILE).exists()  # The run did not finish.


def test_a_run_that_failed_before_its_first_checkpoint_restarts_its_metrics(tmp_path):
    config = tiny_config(inject_nan_at_step=3)  # Fails at the log of step 4; checkpoint at 6.
    for _ in range(2):
        with pytest.raises(train.NonFiniteError):
            train.train_and_evaluate(config, tmp_path)
    steps = [(r["split"], r["step"]) for r in run_io.read_metrics(tmp_path)]
    assert steps == [("train", 1)]  # The second attempt's lines only, not both attempts'.


def test_a_disabled_distributed_section_ignores_the_environment(monkeypatch):
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "2")  # Invalid, but unused: distributed is disabled.
    assert train.validate_config(tiny_config()) == NUM_STEPS


def test_pmap_engine_matches_jit_engine(run, tmp_path):
    workdir, _ = run
    config = tiny_config(engine="pmap")
    result = train.train_and_evaluate(config, tmp_path, stop_after_step=6)
    assert result["interrupted"] and result["step"] == 6
    jit_lines = {(r["split"], r["step"]): r for r in run_io.read_metrics(workdir)}
    for r in run_io.read_metrics(tmp_path):
        expected = jit_lines[(r["split"], r["step"])]
        for key in ("loss", "accuracy", "grad_norm", "update_norm", "param_norm", "f1"):
            if key in r:
                np.testing.assert_allclose(r[key], expected[key], rtol=2e-5, atol=1e-6)


def test_scan_chunks_match_one_step_per_call(run, tmp_path):
    """train.steps_per_dispatch: 6 steps per compiled call (a lax.scan) give the numbers of one
    step per call, to float32 rounding (in a scan on CPU convolutions run as matmuls)."""
    workdir, _ = run
    result = train.train_and_evaluate(
        tiny_config(steps_per_dispatch=6), tmp_path, stop_after_step=6
    )
    assert result["interrupted"] and result["step"] == 6
    expected = {(r["split"], r["step"]): r for r in run_io.read_metrics(workdir)}
    lines = {(r["split"], r["step"]): r for r in run_io.read_metrics(tmp_path)}
    # Chunks end at every log point (4 = the first chunk's end, 6): the same lines at 6,
    # both the means of steps 5-6.
    assert [step for split, step in lines if split == "train"] == [4, 6]
    for key in [("train", 6), ("validation", 6)]:
        for name in ("loss", "accuracy", "grad_norm", "update_norm", "param_norm"):
            if name in lines[key]:
                np.testing.assert_allclose(
                    lines[key][name], expected[key][name], rtol=2e-5, atol=1e-6, err_msg=name
                )


def test_a_run_whose_chunks_all_differ_in_length_compiles_one_program(tmp_path, monkeypatch):
    """Logs every 5 and evaluations every 9 of 12 steps give chunks of 5, 4, 1 and 2 steps;
    padded to 5 rows they are one train program (it was one per length, four here), compiled
    ahead of its first call, so that call's steps count as training (steps_per_sec finite)."""
    assert train.chunk_lengths(0, 12, [5, 9, 12], 12) == [5, 4, 1, 2]
    compiles, compile_train = [], engines.Engine.compile_train

    def counted(self, carry, chunk, **options):
        compiles.append((self, chunk.length, options))
        return compile_train(self, carry, chunk, **options)

    monkeypatch.setattr(engines.Engine, "compile_train", counted)
    config = tiny_config(
        steps_per_dispatch=12, log_every_steps=5, eval_every_steps=9, checkpoint_every_steps=12
    )
    result = train.run(config, tmp_path)
    assert result.step == 12 and not result.interrupted
    assert [(length, options) for _, length, options in compiles] == [(5, {"layer_stats": False})]
    engine = compiles[0][0]
    assert engine._train[False]._cache_size() == 1  # no length compiled another at its call
    assert np.isfinite(result.steps_per_sec) and result.steps_per_sec > 0
    assert result.phases["compile"] > 0 and result.phases["train"] > 0


def test_train_and_evaluate_refuses_several_members(tmp_path):
    config = tiny_config()
    config.runs.seeds = (0, 1)
    with pytest.raises(train.ConfigError, match="several members; use adamlab.training.train.run"):
        train.train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def _profiler_writes_traces(directory) -> bool:
    try:
        jax.profiler.start_trace(str(directory))
        jax.numpy.zeros(3).block_until_ready()
        jax.profiler.stop_trace()
    except Exception:  # No profiler in this jaxlib build.
        return False
    return any(pathlib.Path(directory).rglob("*.xplane.pb"))


def test_profile_steps_write_a_trace(tmp_path):
    """train.profile_steps=(2, 3) traces steps 2-3 into <workdir>/profile (TensorBoard's layout:
    plugins/profile/<time>/<host>.xplane.pb)."""
    if not _profiler_writes_traces(tmp_path / "probe"):
        pytest.skip("jax.profiler writes no xplane trace here")
    config = tiny_config(num_steps=4, profile_steps=(2, 3), log_every_steps=4,
                         eval_every_steps=4, checkpoint_every_steps=4)  # fmt: skip
    result = train.train_and_evaluate(config, tmp_path / "run")
    assert result["step"] == 4
    (trace,) = (tmp_path / "run" / "profile").rglob("*.xplane.pb")
    assert trace.stat().st_size > 0
    assert trace.relative_to(tmp_path / "run" / "profile").parts[:2] == ("plugins", "profile")


INVALID = [
    # (field, value, what the message must name)
    ("seed", -1, "seed=-1"),
    ("data.name", "imagenet", "digits, mnist, fashion_mnist, cifar10"),
    ("data.validation_fraction", 1.5, "validation_fraction"),
    ("model.name", "vgg", "cnn, resnet, mlp, logreg"),
    ("model.hidden", (8, 0), "model.hidden=(8, 0)"),
    ("model.dtype", "float16", "float32, bfloat16"),
    ("model.dropout_rate", 1.0, "model.dropout_rate=1.0"),
    ("optimizer.name", "adamx", "adam, adamw"),
    ("optimizer.name", "sgd", "implementation='optax'"),  # A baseline, not ours.
    ("optimizer.momentum", 0.9, "unknown hyperparameter(s) momentum"),  # Adam has none.
    ("optimizer.l2", -1.0, "optimizer.l2=-1.0"),
    ("optimizer.implementation", "mine", "ours, optax"),
    ("optimizer.learning_rate", -1.0, "optimizer.learning_rate=-1.0"),
    ("optimizer.schedule", "linear", "constant, warmup_cosine, inverse_sqrt"),
    ("optimizer.warmup_steps", 100, "optimizer.warmup_steps=100"),
    ("train.engine", "tpu", "jit, pmap"),
    ("train.engine", "pjit", "train.engine='pjit' is not an engine; allowed: jit, pmap"),
    ("train.loss", "hinge", "train.loss='hinge' is invalid: allowed: cross_entropy, mse"),
    ("train.batch_size", 30, "divisible by the 4 devices"),
    ("train.eval_batch_size", 0, "train.eval_batch_size=0"),
    ("train.eval_batch_size", None, "train.eval_batch_size=None"),
    ("train.num_epochs", 0.0, "train.num_epochs=0.0"),
    ("train.num_steps", 0, "train.num_steps=0"),
    ("train.log_every_steps", 0, "train.log_every_steps=0"),
    ("train.checkpoint_every_steps", 2.5, "train.checkpoint_every_steps=2.5"),
    ("train.keep_checkpoints", 0, "train.keep_checkpoints=0"),
    ("train.best_metric", "accuracy", "validation_accuracy"),
    ("train.progress_bar", "yes", "train.progress_bar='yes'"),
    ("train.steps_per_dispatch", 0, "train.steps_per_dispatch=0"),
    ("train.profile_steps", (3, 2), "train.profile_steps=(3, 2)"),
    ("runs.seeds", (0, 0), "runs.seeds=(0, 0)"),
    ("runs.implementations", ("ours", "theirs"), "runs.implementations"),
]


@pytest.mark.parametrize("field,value,expected", INVALID, ids=[f for f, _, _ in INVALID])
def test_invalid_config_is_refused_before_training(tmp_path, field, value, expected):
    config = tiny_config()
    section, name = field.split(".") if "." in field else (None, field)
    target = config[section] if section else config
    with target.ignore_type():
        target[name] = value
    with pytest.raises(train.ConfigError) as error:
        train.train_and_evaluate(config, tmp_path / "run")
    assert expected in str(error.value)
    assert not (tmp_path / "run").exists()  # Refused before anything was written.


def test_missing_train_field_is_named(tmp_path):
    config = tiny_config()
    del config.train["log_every_steps"]
    with pytest.raises(train.ConfigError, match="log_every_steps"):
        train.validate_config(config)


def test_best_metric_without_validation_split_is_refused():
    config = tiny_config()
    config.data.validation_fraction = 0.0
    with pytest.raises(train.ConfigError, match="needs a validation split"):
        train.validate_config(config)
    config.train.best_metric = None
    assert train.validate_config(config) == NUM_STEPS


def test_total_steps_from_epochs():
    config = tiny_config(num_steps=None, num_epochs=2.5)
    # digits: 1293 training examples after validation; 1293 // 32 = 40 steps per epoch.
    assert train.validate_config(config) == 100


@pytest.mark.slow
def test_default_digits_config_reaches_97_percent(tmp_path):
    config = config_dict.load_config_file(ROOT / "configs" / "digits.py")
    config.train.progress_bar = False
    result = train.train_and_evaluate(config, tmp_path)
    assert result["test_accuracy"] >= 0.97


def test_stop_on_signal_records_sigterm_and_restores_the_previous_handler():
    import os
    import signal

    calls = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    try:
        with train._StopOnSignal() as stop:
            assert stop.requested is None
            os.kill(os.getpid(), signal.SIGTERM)  # Handled: the process keeps running.
            assert stop.requested == "SIGTERM"
        assert calls == []
        os.kill(os.getpid(), signal.SIGTERM)  # The test's own handler is back.
        assert calls == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("swept", [False, True], ids=["one_run", "sweep"])
def test_one_run_validates_its_config_once_and_builds_each_optimizer_once(
    tmp_path, monkeypatch, swept
):
    """Once per run, also for a sweep of 2 peaks x 2 seeds: its values are checked by their
    rules, not by an optimizer each, and one schedule serves every member's logged rate."""
    calls = {"validated": 0, "make_optimizer": 0, "make_schedule": 0}
    make_schedule = optimizers.make_schedule

    def counted(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(experiment, "_validated", counted("validated", experiment._validated))
    for name in ("make_optimizer", "make_schedule"):
        monkeypatch.setattr(optimizers, name, counted(name, getattr(optimizers, name)))
    config = tiny_config(num_steps=4, checkpoint_every_steps=4)
    peaks = (1e-2, 3e-2)
    if swept:
        config = groups.with_members(config, seeds=(0, 1), sweep={"learning_rate": peaks})
    (train.run if swept else train.train_and_evaluate)(config, tmp_path)
    assert calls == {"validated": 1, "make_optimizer": 1, "make_schedule": int(swept)}
    if swept:  # Each member logs its own peak's schedule (mean over optimizer counts 0..3).
        for peak in peaks:
            expected = float(np.mean(make_schedule(config.optimizer, 4, peak=peak)(np.arange(4))))
            for seed in (0, 1):
                member = tmp_path / "members" / f"ours/learning_rate={peak:.4g}_seed{seed}"
                (record,) = [r for r in run_io.read_metrics(member) if r["split"] == "train"]
                # float32 schedules on both sides; the means may differ in the last bit.
                assert record["learning_rate"] == pytest.approx(expected, rel=1e-6)
