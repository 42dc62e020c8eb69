"""`adamlab benchmark`: the tuning protocol, time-to-target, performance profiles, the stages.

The math is checked against hand-computed examples; one tiny benchmark (logistic regression on
digits, 6 steps, 2 trials, 2 seeds) runs every stage through the one loop, writes the report,
and is resumed without training anything again; two more (two studies under each ruleset)
check the studies and the AlgoPerf score against `algoperf.score` on the per-study times.
"""

import collections
import inspect
import json
import math
import re
import shutil

import jax
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

from adamlab import cli, config_dict, optim
from adamlab.experiments import algoperf, benchmark, benchmark_report, profiles, report, tuning
from adamlab.training import optimizers, run_io, train

INF = math.inf


def _space(label="adam", workload="digits_cnn"):
    config = config_dict.load_config(benchmark.WORKLOAD_PREFIX + workload)
    return tuning.SearchSpace.from_config(label, config.benchmark.search_spaces[label])


# ---------------------------------------------------------------------------- tuning


def test_scales_map_the_unit_interval_onto_the_declared_range():
    u = np.array([0.0, 0.5])
    np.testing.assert_allclose(tuning.scale_unit(u, 1e-4, 1e-2, "log"), [1e-4, 1e-3])
    # 1 - b1 log-uniform in [0.02, 0.2]: its midpoint is 1 - sqrt(0.02 * 0.2).
    np.testing.assert_allclose(
        tuning.scale_unit(u, 0.8, 0.98, "log1m"), [0.8, 1 - math.sqrt(0.02 * 0.2)]
    )
    np.testing.assert_allclose(tuning.scale_unit(u, 0.0, 0.2, "linear"), [0.0, 0.1])


def test_halton_trials_lie_in_the_declared_ranges_and_are_reproducible():
    space = _space("adamw")
    trials = tuning.halton_trials(space, 16, seed=0)
    assert set(trials) == set(space.ranges)
    for field, (low, high, _) in space.ranges.items():
        assert len(trials[field]) == 16
        assert all(low <= v <= high for v in trials[field]), field
        assert len(set(trials[field])) == 16  # Quasi-random points do not repeat.
    assert tuning.halton_trials(space, 16, seed=0) == trials
    assert tuning.halton_trials(space, 16, seed=1) != trials
    first = tuning.halton_trials(space, 4, seed=0)  # A sequence: a smaller budget is a prefix.
    assert all(first[f] == trials[f][:4] for f in trials)
    # Low discrepancy: the first field (Halton base 2) puts one of the 16 trials into each
    # sixteenth of its range, on its scale.
    first_field, (low, high, scale) = next(iter(space.ranges.items()))
    edges = tuning.scale_unit(np.linspace(0, 1, 17), low, high, scale)
    bins = np.histogram(trials[first_field], bins=np.sort(edges))[0]
    np.testing.assert_array_equal(bins, np.ones(16))


@pytest.mark.parametrize(
    "ranges, match",
    [
        ({"learning_rate": (0.0, 1.0, "log")}, "log scale needs low > 0"),
        ({"b1": (0.9, 1.0, "log1m")}, "needs high < 1"),
        ({"learning_rate": (1e-3, 1e-1, "cubic")}, "scale in"),
        ({"nesterov": (0.0, 1.0, "linear")}, "not sweepable"),
        ({}, "no ranges"),
    ],
)
def test_a_malformed_search_space_is_a_clear_error(ranges, match):
    with pytest.raises(ValueError, match=match):
        tuning.SearchSpace("x", {"name": "adam"}, ranges)


def test_selection_uses_steps_to_target_then_validation_metrics():
    # Fastest to the target wins; a tie goes to the better final validation accuracy.
    assert tuning.select_trial([INF, 40, 40, 60], [0.99, 0.95, 0.97, 0.99], [0, 0, 0, 0]) == 2
    # Nobody reaches it: the best final validation accuracy, then loss.
    assert tuning.select_trial([INF, INF, INF], [0.9, 0.95, 0.95], [0.3, 0.4, 0.2]) == 2
    # A diverged trial (NaN metrics) is never selected, whatever its steps say.
    assert tuning.select_trial([20, 40], [math.nan, 0.97], [math.nan, 0.1]) == 1


def test_every_search_space_has_a_declared_default_setting():
    """Self-tuning's setting: every tuned field but the warmup (the workload's schedule runs),
    each the optimizer constructor's default where it declares one."""
    config = config_dict.load_config("bench_digits_cnn")
    for label in config.benchmark.search_spaces:
        space = _space(label)
        setting = tuning.default_setting(space)
        assert set(setting) == set(space.ranges) - {"warmup_fraction"}, label
        assert setting["learning_rate"] > 0
        name = space.fixed["name"]
        constructor = getattr(optim, name, None) or getattr(optax, name)
        for field, parameter in inspect.signature(constructor).parameters.items():
            if field in setting and parameter.default not in (None, parameter.empty):
                assert setting[field] == parameter.default, (label, field)
    assert tuning.default_setting(_space("sgd")) == {"learning_rate": 1e-2, "momentum": 0.9}
    assert tuning.default_setting(_space("adabelief"))["eps"] == 1e-16


# ---------------------------------------------------------------------------- measures


def test_steps_to_target_is_the_first_evaluation_at_or_past_it_else_inf():
    steps = [20, 40, 60]
    values = np.array([[0.5, 0.97, 0.96], [0.5, 0.6, 0.7], [0.98, math.nan, 0.99]])
    np.testing.assert_array_equal(profiles.steps_to_target(steps, values, 0.97), [40, INF, 20])
    losses = np.array([[1.0, 0.5, 0.2], [math.nan, math.nan, math.nan]])
    reached = profiles.steps_to_target(steps, losses, 0.5, higher_is_better=False)
    np.testing.assert_array_equal(reached, [40, INF])


def test_performance_profile_against_a_hand_computed_example():
    times = {
        "a": {"w1": 10.0, "w2": 30.0, "w3": INF},
        "b": {"w1": 20.0, "w2": 15.0, "w3": INF},
        "c": {"w1": 40.0, "w2": INF, "w3": INF},
    }
    # Ratios to the best: w1 a=1, b=2, c=4; w2 a=2, b=1, c=inf; w3 solved by nobody (inf).
    rho = profiles.performance_profile(times, taus=[1.0, 1.5, 2.0, 3.9, 4.0])
    np.testing.assert_allclose(rho["a"], [1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(rho["b"], [1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(rho["c"], [0, 0, 0, 0, 1 / 3])


def test_speedups_against_adam():
    times = {"adam": {"w1": 30.0, "w2": INF, "w3": INF}, "nadam": {"w1": 20.0, "w2": 5.0}}
    speed = profiles.speedups(times, "adam")
    assert speed["nadam"]["w1"] == 1.5 and speed["nadam"]["w2"] == INF
    assert speed["adam"]["w1"] == 1.0 and math.isnan(speed["adam"]["w2"])
    assert profiles.speedups({"adam": {"w": 10.0}, "sgd": {"w": INF}})["sgd"]["w"] == 0.0
    cells = [benchmark_report._speedup_cell(x, "adamw") for x in (2.0, 0.0, INF, math.nan)]
    assert cells == ["2.00x", "0 (not reached)", "inf (adamw did not reach it)", "-"]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([120, 60, 100, 80, 80], (60, 120, 1 - 2 / 32)),  # 5 seeds: min and max, 93.75%.
        (list(range(20)), (5, 14, 1 - 2 * 21700 / 2**20)),  # x_(6), x_(15): P(B(20) <= 5).
        ([40, INF, 20], (20, INF, 0.75)),  # A seed that never reached it: the upper end.
        ([7], (7, 7, 0.0)),
    ],
)
def test_the_median_interval_is_the_order_statistics_with_their_binomial_coverage(values, expected):
    low, high, coverage = profiles.median_interval(values)
    assert (low, high) == expected[:2]
    assert coverage == pytest.approx(expected[2], abs=1e-12)


def test_a_fractional_warmup_is_optaxs_warmup_cosine_and_can_be_swept():
    base = {"name": "adam", "learning_rate": 0.01, "schedule": "warmup_cosine"}
    steps = np.arange(201)
    by_steps = optimizers.make_schedule(base | {"warmup_steps": 20}, 200)(steps)
    by_fraction = optimizers.make_schedule(base | {"warmup_fraction": 0.1}, 200)(steps)
    np.testing.assert_allclose(by_fraction, by_steps, rtol=1e-6, atol=1e-9)
    # Swept (a state leaf, one compiled update for every fraction) = the plain optimizer.
    swept, _ = optimizers.make_optimizer(base, 200, swept=("warmup_fraction",))
    plain, _ = optimizers.make_optimizer(base | {"warmup_fraction": 0.1}, 200)
    params = {"w": np.linspace(-1, 1, 5, dtype=np.float32)}
    states = {}
    swept = optimizers.with_values(swept, {"warmup_fraction": 0.1})
    for name, tx in (("swept", swept), ("plain", plain)):

        def steps(p, tx=tx):  # 30 steps in one compiled program.
            def step(carry, _):
                p, state = carry
                updates, state = tx.update({"w": p["w"] ** 3}, state, p)
                return (optax.apply_updates(p, updates), state), None

            return jax.lax.scan(step, (p, tx.init(p)), length=30)[0][0]

        states[name] = jax.jit(steps)(params)["w"]
    np.testing.assert_allclose(states["swept"], states["plain"], rtol=1e-6)
    assert not np.allclose(states["plain"], params["w"])
    with pytest.raises(ValueError, match="warmup_fraction=0.1 must be in"):
        optimizers.make_optimizer(base | {"warmup_fraction": 0.1, "warmup_steps": 5}, 200)


# ---------------------------------------------------------------------------- the command


def _tiny_workload(**bench_fields):
    """digits with logistic regression, 6 steps, validation every 2: seconds per stage."""
    config = config_dict.load_config("bench_digits_cnn")
    config.model.name = "logreg"
    config.train.num_steps = 6
    config.train.batch_size = 32
    config.train.log_every_steps = 2
    config.train.eval_every_steps = 2
    config.train.checkpoint_every_steps = 6
    config.train.progress_bar = False
    config.optimizer.warmup_steps = 1  # The heatmap's warmup (the spaces tune a fraction).
    config.benchmark.target = 0.3
    config.benchmark.heatmap.learning_rates = (1e-2, 1e-1)
    config.benchmark.heatmap.strengths = (1e-4, 1e-2)
    config.benchmark.heatmap.seeds = (0,)
    for k, v in bench_fields.items():
        config.benchmark[k] = v
    return config


@pytest.mark.parametrize(
    "request_, match",
    [
        (dict(trials=0), "trials=0 must be an int >= 1"),
        (dict(seeds=0), "seeds=0 must be an int >= 1"),
        (dict(studies=0), "studies=0 must be an int >= 1"),
        (dict(studies=2.0), r"studies=2.0 must be an int >= 1"),
        (dict(ruleset="open"), "ruleset='open' is unknown; allowed: external_tuning, self_tuning"),
        (dict(ruleset="self_tuning", trials=4), "self_tuning ruleset runs one trial per study"),
        (dict(studies=101), r"tuning seeds 0..100 reach the final seeds from 100"),
        (dict(optimizers="adam,adamz"), r"optimizers \['adamz'\] have no search space"),
        (dict(optimizers="adam,adam"), "repeated"),
    ],
)
def test_bad_requests_are_errors_before_anything_is_written(request_, match, tmp_path):
    with pytest.raises(benchmark.BenchmarkError, match=match):
        benchmark.plan_benchmark(
            {"digits_cnn": _tiny_workload()}, **({"optimizers": "adam"} | request_)
        )


def test_unknown_workload_and_missing_data_are_refused_by_the_command(tmp_path, capsys):
    workdir = tmp_path / "bench"
    argv = ["adamlab", "benchmark", "--workloads", "digits_cnn,imagenet", "--workdir", workdir]
    code = cli.main([str(a) for a in argv])
    assert code == cli.EXIT_USAGE and "shipped workloads: " in capsys.readouterr().err
    # MNIST is not prepared in an empty data_dir: named, with how to prepare it.
    config = config_dict.load_config("bench_mnist_logreg")
    config.data.data_dir = str(tmp_path / "empty")
    with pytest.raises(benchmark.BenchmarkError, match="workload 'mnist_logreg': Dataset 'mnist'"):
        benchmark.plan_benchmark({"mnist_logreg": config}, "adam")
    assert not workdir.exists()
    for flag, value, match in (
        ("--studies", "0", "studies=0 must be an int >= 1"),
        ("--ruleset", "open", "ruleset='open' is unknown; allowed: external_tuning, self_tuning"),
    ):
        code = cli.main(["adamlab", "benchmark", flag, value, "--workdir", str(workdir)])
        assert code == cli.EXIT_USAGE and match in capsys.readouterr().err
        assert not workdir.exists()


@pytest.mark.slow  # ~20 s of CPU; tests/test_configs.py validates every bench_* config anyway.
def test_every_workload_is_valid_with_its_search_spaces():
    """Each shipped workload plans (TFDS mock data stands in for the datasets users download;
    nothing is fetched): digits_cnn, where the spaces are declared, with every optimizer, the
    others with the spaces they change and a baseline."""
    with tfds.testing.mock_data(num_examples=64):
        for name in benchmark.workload_names():
            config = config_dict.load_config(benchmark.WORKLOAD_PREFIX + name)
            config.data.download = name != "digits_cnn"
            config.train.update(batch_size=16, eval_batch_size=16)  # 64 mock images.
            config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, 1)
            assert config.benchmark.workload == name
            names = tuple(config.benchmark.search_spaces)
            names = names if name == "digits_cnn" else ("adamw", "sgd")
            plan = benchmark.plan_benchmark({name: config}, names, trials=2, seeds=5)
            assert len(plan.stages()) == len(names)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A finished tiny benchmark: sgd (optax's), 2 trials, 2 seeds, the heatmap (4 stages)."""
    workdir = tmp_path_factory.mktemp("bench")
    plan = benchmark.plan_benchmark({"digits_cnn": _tiny_workload()}, "sgd", trials=2, seeds=2)
    lines = []
    result = benchmark.run_benchmark(plan, workdir, progress=lines.append)
    return plan, workdir, result, lines


def test_a_tiny_benchmark_runs_every_stage_and_writes_the_report(tiny):
    plan, workdir, result, lines = tiny
    assert not result["interrupted"]
    for name in ("trials.csv", "results.csv", "summary.md", "profiles.png", "heatmap.png"):
        assert (workdir / name).is_file(), name
    trials = report.read_csv(workdir / "trials.csv")
    assert [(r["optimizer"], r["trial"]) for r in trials] == [("sgd", "0"), ("sgd", "1")]
    assert sum(r["selected"] == "True" for r in trials) == 1
    assert "test_accuracy" not in trials[0]  # Selection saw validation only.
    # The trials are the declared Halton points, trained in one program per optimizer.
    space = plan.workloads["digits_cnn"].spaces["sgd"]
    expected = tuning.halton_trials(space, 2, seed=0)["learning_rate"]
    assert [float(r["learning_rate"]) for r in trials] == list(expected)
    rows = result["rows"]
    assert [(r["optimizer"], r["seed"]) for r in rows] == [("sgd", 100), ("sgd", 101)]
    for row in rows:  # Seconds = steps x the member's share of the program's step.
        assert row["runs_in_program"] == 2
        if math.isfinite(row["steps_to_target"]):
            assert row["seconds_to_target"] == row["steps_to_target"] * row["seconds_per_step"]
        else:
            assert row["seconds_to_target"] == INF
    summary = (workdir / "summary.md").read_text()
    assert "## Protocol" in summary and "Halton" in summary and "2 new seeds" in summary
    assert "nesterov=True; learning_rate in [0.001, 1] log" in summary
    assert "Learning rate x decay strength on digits_cnn: adam_l2 vs adamw" in summary
    for method in ("adam_l2", "adamw"):  # One row per learning rate, the best strength named.
        for rate in ("1e-02", "1e-01"):
            assert re.search(
                rf"\| {method} \| {rate} \| (1e-0[24] \(\d\.\d{{4}}\)|diverged) \|", summary
            ), (method, rate)
    assert any("2 runs in one program" in line for line in lines)


def test_a_finished_benchmark_reruns_without_training(tiny, monkeypatch):
    plan, workdir, result, _ = tiny

    def no_training(*args, **kwargs):
        raise AssertionError("a finished stage trained again")

    monkeypatch.setattr(train._Loop, "train", no_training)
    lines = []
    again = benchmark.run_benchmark(plan, workdir, progress=lines.append)
    assert again["rows"] == result["rows"]
    assert sum("finished earlier" in line for line in lines) == 4


def test_a_different_budget_in_a_finished_workdir_is_refused_before_training(tiny):
    _, workdir, _, _ = tiny
    bigger = benchmark.plan_benchmark({"digits_cnn": _tiny_workload()}, "sgd", trials=3, seeds=2)
    before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}
    with pytest.raises(run_io.ConfigMismatchError, match="holds .*--trials=2 "):
        benchmark.run_benchmark(bigger, workdir, progress=lambda line: None)
    assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*")} == before


def test_a_benchmark_from_before_studies_resumes_as_one_external_tuning_study(
    tiny, tmp_path, monkeypatch
):
    """A workdir whose benchmark.json predates --studies and --ruleset (recorded results) ran
    their defaults: the same request resumes it without training, and adds the score."""
    workdir = tmp_path / "bench"
    shutil.copytree(tiny[1], workdir)
    saved = json.loads((workdir / benchmark.PLAN_FILE).read_text())
    for key in ("studies", "ruleset", "score"):
        del saved[key]
    saved["heatmap"] = True  # Before the grid had methods: Adam + L2 and AdamW.
    (workdir / benchmark.PLAN_FILE).write_text(json.dumps(saved))
    monkeypatch.setattr(train._Loop, "train", lambda *a, **k: pytest.fail("trained again"))
    again = benchmark.run_benchmark(tiny[0], workdir, progress=lambda line: None)
    assert again["rows"] == tiny[2]["rows"]
    saved = json.loads((workdir / benchmark.PLAN_FILE).read_text())
    assert (saved["studies"], saved["ruleset"]) == (1, "external_tuning") and saved["score"]


@pytest.mark.parametrize(
    "request_",
    [
        {"optimizers": "adam"},
        {"seeds": 3},
        {"heatmap": False},
        {"studies": 2},
        {"ruleset": "self_tuning", "trials": None},
    ],
    ids=str,
)
def test_another_request_in_a_finished_workdir_is_refused_and_the_report_kept(
    tiny, tmp_path, request_
):
    """Issue 27 item 5, as for compare: `--optimizers adam` where an sgd benchmark finished
    replaced its benchmark.json, trials.csv, results.csv and summary.md with adam's alone;
    other seeds rewrote benchmark.json, then stopped at the final stage. Each is refused
    before anything is written, naming what the workdir holds."""
    workdir = tmp_path / "bench"
    shutil.copytree(tiny[1], workdir)
    asked = {"optimizers": "sgd", "trials": 2, "seeds": 2} | request_
    plan = benchmark.plan_benchmark({"digits_cnn": _tiny_workload()}, **asked)
    before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}
    held = "holds .*--optimizers=sgd .*--studies=1 --ruleset=external_tuning"
    with pytest.raises(run_io.ConfigMismatchError, match=held):
        benchmark.run_benchmark(plan, workdir, progress=lambda line: None)
    assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*")} == before


def test_the_heatmap_takes_lion_on_its_own_axes_and_refuses_unknown_methods():
    """`--heatmap_methods lion,adamw`: Lion's grid is the workload's `heatmap.axes.lion` (rates
    a decade lower, strengths a decade higher than AdamW's), swept on its weight_decay."""
    config = config_dict.load_config("bench_digits_cnn")
    plan = benchmark.plan_benchmark({"digits_cnn": config}, "adamw", heatmap="lion,adamw")
    assert plan.heatmap == ("lion", "adamw")
    configs = benchmark.heatmap_configs(plan.workloads["digits_cnn"], plan.heatmap)
    lion, adamw = configs["lion"], configs["adamw"]
    assert (lion.optimizer.name, adamw.optimizer.name) == ("lion", "adamw")
    lion_sweep, adamw_sweep = train.read_members(lion).sweep, train.read_members(adamw).sweep
    assert sorted(set(lion_sweep["learning_rate"])) == [1e-4, 3e-4, 1e-3, 3e-3]
    assert sorted(set(lion_sweep["weight_decay"])) == [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    assert sorted(set(adamw_sweep["learning_rate"])) == [1e-3, 3e-3, 1e-2, 3e-2]
    assert sorted(set(adamw_sweep["weight_decay"])) == [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    assert len(lion_sweep["learning_rate"]) == 20  # Every cell once, flattened.
    default = benchmark.plan_benchmark({"digits_cnn": config}, "adamw")
    assert default.heatmap == ("adam_l2", "adamw")
    off = benchmark.plan_benchmark({"digits_cnn": config}, "adamw", heatmap=False)
    assert off.heatmap == ()
    with pytest.raises(
        benchmark.BenchmarkError,
        match=r"unknown \['adafactor'\]; allowed: "
        r"adam_l2, adamw, lion",
    ):
        benchmark.plan_benchmark({"digits_cnn": config}, "adamw", heatmap="adafactor,adamw")


def test_schedule_free_is_benchmarked_without_a_schedule():
    """Schedule-Free's stages hold its learning rate after the tuned warmup
    (`warmup_constant`), whatever the workload's schedule (digits: warmup-cosine)."""
    config = config_dict.load_config("bench_digits_cnn")
    plan = benchmark.plan_benchmark({"digits_cnn": config}, "schedule_free_adamw,adamw", trials=2)
    workload = plan.workloads["digits_cnn"]
    sf = benchmark.tune_config(workload, "schedule_free_adamw")
    adamw = benchmark.tune_config(workload, "adamw")
    assert (sf.optimizer.schedule, adamw.optimizer.schedule) == ("warmup_constant", "warmup_cosine")
    assert sf.optimizer.warmup_steps == 0 and "warmup_fraction" in train.read_members(sf).sweep


@pytest.mark.slow
def test_cifar10_resnet_workload_smoke_on_mock_data(tmp_path):
    """The GPU-sized workload end to end on CPU: 2 steps, 1 trial, 1 seed, mock images."""
    config = config_dict.load_config("bench_cifar10_resnet")
    config.data.download = True  # Under mock_data nothing is fetched.
    config.train.update(num_steps=2, batch_size=8, eval_batch_size=16, progress_bar=False)
    config.train.update(log_every_steps=1, eval_every_steps=1, checkpoint_every_steps=2)
    config.optimizer.warmup_steps = 1  # CIFAR-10's 1,000 would not fit in 2 steps.
    with tfds.testing.mock_data(num_examples=32):
        plan = benchmark.plan_benchmark(
            {"cifar10_resnet": config}, "adamw", trials=1, seeds=1, heatmap=False
        )
        result = benchmark.run_benchmark(plan, tmp_path, progress=lambda line: None)
    assert len(result["rows"]) == 1 and (tmp_path / "summary.md").is_file()


def test_each_trial_logs_its_own_learning_rate(tiny):
    """The tune stage sweeps the peak and the warmup fraction: each member's logged learning
    rate is the mean of its own schedule over the logged steps, not the config's rescaled."""
    _, workdir, _, _ = tiny
    stage = workdir / "digits_cnn" / "sgd" / "tune"
    config = run_io.read_config(stage)
    num_steps = config.train.num_steps
    paths = sorted(stage.glob("members/*/*/metrics.jsonl"))
    assert len(paths) == 2
    logged = []
    for path in paths:
        values = dict(re.findall(r"([a-z_]+)=([-+.e0-9]+)_", path.parent.name))
        schedule = optimizers.make_schedule(
            config.optimizer,
            num_steps,
            peak=float(values["learning_rate"]),
            warmup_fraction=float(values["warmup_fraction"]),
        )
        records = [r for r in run_io.read_jsonl(path) if r.get("split") == "train"]
        assert [r["step"] for r in records] == [2, 4, 6]
        for r in records:  # Logged every 2 steps: the mean over counts step-2 and step-1.
            expected = np.mean(schedule(np.arange(r["step"] - 2, r["step"])))
            np.testing.assert_allclose(r["learning_rate"], expected, rtol=2e-3)
        logged.append([r["learning_rate"] for r in records])
    ratios = np.asarray(logged[0]) / np.asarray(logged[1])
    assert np.ptp(ratios) > 1e-3  # Different warmups: not one schedule rescaled.


# ---------------------------------------------------------------------------- studies, rulesets


def _run(workdir, optimizers, **request):
    plan = benchmark.plan_benchmark(
        {"digits_cnn": _tiny_workload()}, optimizers, seeds=1, heatmap=False, **request
    )
    return plan, benchmark.run_benchmark(plan, workdir, progress=lambda line: None)


@pytest.fixture(scope="module")
def two_studies(tmp_path_factory):
    """adam and sgd, external tuning: 2 studies of 2 trials, 1 final seed, no heatmap."""
    workdir = tmp_path_factory.mktemp("studies")
    plan, result = _run(workdir, "adam,sgd", trials=2, studies=2)
    return plan, workdir, result


def _recomputed_score(workdir) -> dict[str, algoperf.Scores]:
    """`algoperf.score` on the per-study times read back from trials.csv: in each study the
    trial reaching the target in the fewest steps (its trials share their evaluations, so the
    earliest evaluation), its steps and seconds; inf when none does."""
    studies = collections.defaultdict(list)
    for row in report.read_csv(workdir / "trials.csv"):
        studies[row["optimizer"], row["workload"], row["study"]].append(row)
    times = {m: collections.defaultdict(lambda: collections.defaultdict(list)) for m in MEASURES}
    for (optimizer, workload, _), rows in sorted(studies.items()):
        first = min(rows, key=lambda r: float(r["steps_to_target"]))
        for measure, column in MEASURES.items():
            times[measure][optimizer][workload].append(float(first[column]))
    return {m: algoperf.score(t, ["digits_cnn"]) for m, t in times.items()}


MEASURES = {"steps": "steps_to_target", "seconds": "seconds_to_target"}


def test_each_study_draws_its_own_trials_with_its_own_seeds(two_studies):
    plan, workdir, result = two_studies
    assert not result["interrupted"]
    rows = report.read_csv(workdir / "trials.csv")
    for optimizer in ("adam", "sgd"):
        space = plan.workloads["digits_cnn"].spaces[optimizer]
        mine = [r for r in rows if r["optimizer"] == optimizer]
        assert [(r["study"], r["trial"]) for r in mine] == [
            ("0", "0"),
            ("0", "1"),
            ("1", "0"),
            ("1", "1"),
        ]
        drawn = [[float(r["learning_rate"]) for r in mine if r["study"] == k] for k in "01"]
        for k in (0, 1):  # Study k: Halton seed + k, tuning seed + k, in its own program.
            assert drawn[k] == list(tuning.halton_trials(space, 2, seed=k)["learning_rate"])
            assert {r["seed"] for r in mine if r["study"] == str(k)} == {str(k)}
        assert set(drawn[0]).isdisjoint(drawn[1])
        stage = workdir / "digits_cnn" / optimizer
        assert (stage / "tune").is_dir() and (stage / "tune_study1").is_dir()
        assert sum(r["selected"] == "True" for r in mine) == 1  # One setting for the final.
    studies = report.read_csv(workdir / "studies.csv")
    assert [(r["optimizer"], r["study"], r["trials"]) for r in studies] == [
        ("adam", "0", "2"),
        ("adam", "1", "2"),
        ("sgd", "0", "2"),
        ("sgd", "1", "2"),
    ]
    stages = report.read_csv(workdir / "stages.csv")
    assert [r["stage"] for r in stages] == ["tune", "tune_study1", "final"] * 2


def test_the_score_is_algoperfs_on_the_per_study_times(two_studies):
    """summary.md and benchmark.json give `algoperf.score` of the per-study times in
    trials.csv, in steps and seconds: the scores, medians over studies, ratios and rho."""
    _, workdir, result = two_studies
    expected = _recomputed_score(workdir)
    saved = json.loads((workdir / benchmark.PLAN_FILE).read_text())
    assert (saved["studies"], saved["ruleset"]) == (2, "external_tuning")
    summary = (workdir / "summary.md").read_text()
    assert "## AlgoPerf score" in summary and "Ruleset external_tuning, 2 studies" in summary
    for measure, board in expected.items():
        got = saved["score"][measure]
        assert got["scores"] == pytest.approx(board.scores, rel=1e-12)
        np.testing.assert_allclose(got["taus"], profiles.ALGOPERF_TAUS)
        for optimizer in ("adam", "sgd"):
            np.testing.assert_allclose(got["rho"][optimizer], board.rho[optimizer])
            for table in ("medians", "ratios"):
                value = got[table][optimizer]["digits_cnn"]  # null: inf
                want = getattr(board, table)[optimizer]["digits_cnn"]
                assert (math.inf if value is None else value) == pytest.approx(want, rel=1e-12)
            line = f"| {optimizer} | {board.scores[optimizer]:.4f} |"
            assert line in summary.split(f"{measure} to target:")[1], (measure, optimizer)
        assert result["score"][measure].scores == pytest.approx(board.scores, rel=1e-12)


def test_self_tuning_runs_the_declared_defaults_with_three_times_the_budget(tmp_path):
    config = _tiny_workload()
    plan = benchmark.plan_benchmark(
        {"digits_cnn": config}, "adam,sgd", seeds=1, studies=2, ruleset="self_tuning"
    )
    workload = plan.workloads["digits_cnn"]
    assert (plan.trials, workload.num_steps, workload.budget) == (1, 6, 18)
    # Adam's defaults are its constructor's (adamlab.optim.adam), with its paper's 1e-3.
    defaults = inspect.signature(optim.adam).parameters
    adam = {k: (defaults[k].default,) for k in ("b1", "b2", "eps")} | {"learning_rate": (1e-3,)}
    assert workload.trials["adam"] == (adam, adam)  # One trial per study, the same setting.
    assert workload.trials["sgd"][0] == {"learning_rate": (1e-2,), "momentum": (0.9,)}
    tune = benchmark.tune_config(workload, "adam", study=1)
    assert tune.train.num_steps == 18 and tune.runs.seeds == (1,)
    assert tune.optimizer.warmup_steps == 1  # The workload's schedule, not a tuned warmup.
    assert benchmark.final_config(workload, "adam", {}, 1).train.num_steps == 18

    plan, result = _run(tmp_path, "adam", studies=2, ruleset="self_tuning")
    rows = report.read_csv(tmp_path / "trials.csv")
    assert [(r["study"], float(r["learning_rate"]), r["seed"]) for r in rows] == [
        ("0", 1e-3, "0"),
        ("1", 1e-3, "1"),
    ]
    stages = report.read_csv(tmp_path / "stages.csv")
    assert [(r["stage"], r["runs"], r["steps"]) for r in stages] == [
        ("tune", "1", "18"),
        ("tune_study1", "1", "18"),
        ("final", "1", "18"),
    ]
    summary = (tmp_path / "summary.md").read_text()
    assert "* Ruleset: self_tuning" in summary and "Default settings:" in summary
    assert "18 steps of batch 32" in summary
    saved = json.loads((tmp_path / benchmark.PLAN_FILE).read_text())
    assert saved["ruleset"] == "self_tuning" and saved["trials"] == 1
    expected = _recomputed_score(tmp_path)
    assert saved["score"]["steps"]["scores"] == pytest.approx(expected["steps"].scores)
