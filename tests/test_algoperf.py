"""AlgoPerf's score: each rule on hand-computed numbers, and small synthetic log trees read,
scored and written as `adamlab algoperf-score` does (never the published logs)."""

import csv
import math
import pathlib

import numpy as np
import pytest

from adamlab import cli
from adamlab.experiments import algoperf, profiles

INF = math.inf
V05 = algoperf.V05
BASE = V05.base_workloads
STEP = 3.0 / 99.0  # The spacing of AlgoPerf's grid.


# ---------------------------------------------------------------------------- the grid, the area


def test_the_grid_is_algoperfs_100_taus_from_1_to_4():
    np.testing.assert_array_equal(profiles.ALGOPERF_TAUS, np.linspace(1.0, 4.0, 100))
    assert profiles.R_MAX == 4.0
    assert profiles.ALGOPERF_TAUS[33] == 2.0  # 1 + 33 * 3/99: a grid point, exactly.


def test_the_area_is_the_trapezoid_on_the_grid_not_the_exact_integral():
    # One workload at twice the fastest time: rho = 0 below tau = 2, 1 from tau = 2 on.
    rho = (profiles.ALGOPERF_TAUS >= 2.0).astype(float)
    # Trapezoid: half a step on the rising segment [tau_32, tau_33], then 66 full steps.
    assert profiles.profile_area(rho) == pytest.approx((0.5 + 66) * STEP / 3.0, abs=1e-15)
    exact = (4.0 - 2.0) / 3.0
    assert profiles.profile_area(rho) - exact == pytest.approx(0.5 * STEP / 3.0)
    assert profiles.profile_area(np.ones(100)) == pytest.approx(1.0)
    assert profiles.profile_area(np.zeros(100)) == 0.0


def test_the_profile_counts_over_a_fixed_workload_count():
    times = {"a": {"w1": 1.0}, "b": {"w1": 2.0, "w2": 5.0}}
    rho = profiles.performance_profile(times, [1.0, 2.0, 4.0], workloads=["w1", "w2", "w3"])
    # n = 3: w3, which nobody ran, counts against everyone; a has no time for w2.
    np.testing.assert_allclose(rho["a"], [1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(rho["b"], [1 / 3, 2 / 3, 2 / 3])
    ratios = profiles.performance_ratios(times, ["w1", "w2", "w3"])
    assert ratios["b"] == {"w1": 2.0, "w2": 1.0, "w3": INF}


# ---------------------------------------------------------------------------- trial selection


def _target(higher=True, value=0.5):
    return algoperf.Target("validation/accuracy" if higher else "validation/loss", value, higher)


def test_first_reached_is_inclusive_and_nan_never_reaches():
    assert algoperf.first_reached([0.1, 0.5, 0.9], _target()) == 1  # At the target counts.
    assert algoperf.first_reached([math.nan, 0.4], _target()) is None
    assert algoperf.first_reached([0.9, math.nan, 0.5], _target(higher=False)) == 2
    assert algoperf.first_reached([], _target()) is None


def test_the_selected_trial_reaches_at_the_earliest_evaluation_not_the_least_time():
    # Trial 0 evaluates every 10 s and reaches at its 3rd evaluation (30 s); trial 1 evaluates
    # every 50 s and reaches at its 2nd (100 s). AlgoPerf's code takes trial 1 (index 1 < 2),
    # its docs' "fastest trial" would take trial 0.
    fast_evals = (np.array([10.0, 20.0, 30.0]), np.array([0.1, 0.2, 0.6]))
    slow_evals = (np.array([50.0, 100.0, 150.0]), np.array([0.1, 0.6, 0.7]))
    assert algoperf.select_trial([fast_evals, slow_evals], _target()) == (1, 100.0)


def test_ties_go_to_the_first_trial_and_no_trial_reaching_is_inf():
    a = (np.array([10.0, 25.0]), np.array([0.1, 0.6]))
    b = (np.array([10.0, 20.0]), np.array([0.1, 0.9]))
    assert algoperf.select_trial([a, b], _target()) == (0, 25.0)
    missed = (np.array([10.0, 20.0]), np.array([0.1, math.nan]))
    assert algoperf.select_trial([missed, missed], _target()) == (None, INF)


# ---------------------------------------------------------------------------- the rules


def test_the_median_over_studies_counts_a_miss_as_inf():
    assert algoperf.median_over_studies([3.0, 1.0, 2.0, INF, INF]) == 3.0
    assert algoperf.median_over_studies([1.0, 2.0, INF, INF, INF]) == INF  # Most missed.
    assert algoperf.median_over_studies([1.0, 2.0, 4.0, INF]) == 3.0  # Even: the middle two.
    assert algoperf.median_over_studies([1.0, INF]) == INF
    assert algoperf.median_over_studies([1.0, math.nan, 2.0]) == 2.0  # NaN: a miss.


def test_no_credit_beyond_4x_the_fastest_and_exactly_4x_counts():
    board = algoperf.score({"a": {"w": [10.0]}, "b": {"w": [40.0]}, "c": {"w": [40.5]}}, ["w"])
    assert board.times == {"a": {"w": 10.0}, "b": {"w": 40.0}, "c": {"w": INF}}
    assert board.rho["b"][-1] == 1.0 and board.rho["b"][-2] == 0.0  # Only at tau = 4.
    assert board.scores["b"] == pytest.approx(0.5 * STEP / 3.0)
    assert board.scores["c"] == 0.0


def _one_variant(**times):
    """submission -> (base time, variant time): `score` with one base workload and a variant."""
    study_times = {s: {"w": [b], "w_variant": [v]} for s, (b, v) in times.items()}
    return algoperf.score(study_times, ["w"], {"w_variant": "w"})


def test_a_missed_variant_makes_its_base_workload_a_miss():
    board = _one_variant(a=(10.0, 20.0), b=(10.0, INF))
    assert board.times == {"a": {"w": 10.0}, "b": {"w": INF}}
    assert board.scores == {"a": 1.0, "b": 0.0}


def test_a_variant_beyond_4x_its_fastest_makes_its_base_workload_a_miss():
    board = _one_variant(a=(20.0, 10.0), b=(10.0, 45.0))  # b: fastest on w, 4.5x on the variant.
    assert board.times == {"a": {"w": 20.0}, "b": {"w": INF}}
    assert board.ratios["a"]["w"] == 1.0  # The fastest left.


def test_only_submissions_that_reach_the_base_target_set_the_fastest_variant_time():
    # a misses w but is fastest on the variant: were it counted, b and c (10x and 30x) would
    # lose w. It is not: the fastest variant time is b's 10, and c's 30 is within 4x.
    board = _one_variant(a=(INF, 1.0), b=(10.0, 10.0), c=(20.0, 30.0))
    assert board.times == {"a": {"w": INF}, "b": {"w": 10.0}, "c": {"w": 20.0}}


def test_a_base_time_beyond_4x_still_sets_the_fastest_variant_time():
    # b reaches w at 5x the fastest (no credit there), yet b reached w, so its variant time sets
    # the fastest variant time: c's variant (4.5x b's) gets no credit, and with it c's w.
    board = _one_variant(a=(10.0, 100.0), b=(50.0, 10.0), c=(12.0, 45.0))
    assert board.times["b"]["w"] == INF and board.times["c"]["w"] == INF
    assert board.times["a"]["w"] == INF  # a's variant is 10x b's.


def test_a_submission_without_a_variant_misses_its_base_workload():
    board = algoperf.score(
        {"a": {"w": [10.0], "w_variant": [10.0]}, "b": {"w": [10.0]}}, ["w"], {"w_variant": "w"}
    )
    assert board.times == {"a": {"w": 10.0}, "b": {"w": INF}}


def test_the_score_against_a_hand_computed_example():
    study_times = {
        "a": {"w1": [10.0, 12.0, 11.0], "w2": [30.0, INF, 30.0]},  # medians 11, 30
        "b": {"w1": [22.0, 22.0, INF], "w2": [15.0, 15.0, 15.0]},  # medians 22, 15
        "c": {"w1": [INF, INF, 5.0]},  # median inf; no w2
    }
    board = algoperf.score(study_times, ["w1", "w2", "w3"])  # w3: nobody's.
    assert board.ratios["a"] == {"w1": 1.0, "w2": 2.0, "w3": INF}
    assert board.ratios["b"] == {"w1": 2.0, "w2": 1.0, "w3": INF}
    taus = profiles.ALGOPERF_TAUS
    expected = ((taus >= 1.0).astype(float) + (taus >= 2.0)) / 3  # n = 3, fixed.
    np.testing.assert_allclose(board.rho["a"], expected)
    assert board.scores["a"] == pytest.approx(profiles.profile_area(expected))
    assert board.scores["a"] == board.scores["b"]
    assert board.scores["c"] == 0.0
    assert board.ranked() == ["a", "b", "c"]


# ---------------------------------------------------------------------------- synthetic logs


def _write_trial(path: pathlib.Path, times, values, column: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    with (path / algoperf.MEASUREMENTS).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["accumulated_submission_time", "global_step", "score", column])
        for i, (t, v) in enumerate(zip(times, values, strict=True)):
            writer.writerow([t, 100 * (i + 1), t, "" if v is None else v])


def _reach(workload: str, time: float) -> tuple[list, list]:
    """A trial that first reaches the workload's v0.5 target at `time` (inf: never), at its
    third evaluation, with an empty cell before (an evaluation without the metric)."""
    target = V05.targets[workload]
    miss = target.value - 1 if target.higher_is_better else target.value + 1
    hit = target.value  # At the target counts.
    if math.isinf(time):
        return [10.0, 20.0, 30.0], [miss, None, miss]
    return [time / 3, time / 2, time], [miss, None, hit]


def _framework(workload: str) -> str:
    return f"{workload}_jax"


def write_logs(root: pathlib.Path, logs) -> pathlib.Path:
    """logs: submission -> workload -> per study a list of trial times (inf: never reaches).
    Written as `root/<submission>/study_<j>/<workload>_jax/trial_<i+1>/eval_measurements.csv`.
    """
    for sub, per in logs.items():
        for workload, studies in per.items():
            column = V05.targets[workload].column
            for j, trials in enumerate(studies):
                for i, time in enumerate(trials):
                    path = root / sub / f"study_{j}" / _framework(workload) / f"trial_{i + 1}"
                    _write_trial(path, *_reach(workload, time), column)
    return root


def _full(time: float, studies: int = 5, trials: int = 5) -> list[list[float]]:
    """Every study's trials: the first reaches at `time`, the others later."""
    return [[time * (1 + 0.1 * i) for i in range(trials)] for _ in range(studies)]


def _submission(times: dict[str, float], **kw) -> dict[str, list[list[float]]]:
    """Every v0.5 workload (base and variant) at the base's time, `times` overriding."""
    all_times = {w: times.get(w, times.get(V05.held_out.get(w, w), 100.0)) for w in V05.targets}
    return {w: _full(t, **kw) for w, t in all_times.items()}


def test_a_full_track_reads_and_scores_like_its_study_times(tmp_path):
    root = write_logs(
        tmp_path / "external_tuning",
        {
            "fast": _submission({"wmt": 100.0, "ogbg": 300.0}),
            "slow": _submission({"wmt": 250.0, "ogbg": 100.0, "fastmri": 450.0}),
        },
    )
    logs = algoperf.read_track(root, "external_tuning")
    assert logs.warnings == ()
    study = logs.studies["slow"]["wmt"]["study_2"]
    assert (study.time, study.trial, study.trials) == (250.0, "trial_1", 5)
    board = algoperf.score(logs.study_times(), BASE, V05.held_out)
    assert board.ratios["slow"]["wmt"] == 2.5 and board.ratios["fast"]["ogbg"] == 3.0
    assert board.times["slow"]["fastmri"] == INF  # 4.5x.
    assert board.scores["fast"] > board.scores["slow"]


def test_trials_select_and_studies_median_with_misses(tmp_path):
    # w's studies: the best trial per study (150, 120, never, 200, never): median 200.
    studies = [[INF, 150.0, 400.0], [120.0, 130.0], [INF], [200.0, INF], [INF, INF]]
    sub = _submission({})
    sub["ogbg"] = studies
    logs = algoperf.read_track(write_logs(tmp_path / "self_tuning", {"s": sub}), "self_tuning")
    by_study = logs.studies["s"]["ogbg"]
    assert [st.time for st in by_study.values()] == [150.0, 120.0, INF, 200.0, INF]
    assert [st.trial for st in by_study.values()] == ["trial_2", "trial_1", None, "trial_1", None]
    board = algoperf.score(logs.study_times(), BASE, V05.held_out)
    assert board.medians["s"]["ogbg"] == 200.0


def test_uneven_logs_are_scored_with_warnings_naming_what_is_missing(tmp_path):
    short = _submission({})
    del short["wmt_glu_tanh"]  # A held-out variant without logs: wmt is missed.
    del short["imagenet_vit"]  # A base workload without logs.
    short["ogbg"] = short["ogbg"][:3]  # Two studies missing.
    short["fastmri"] = [[200.0, 300.0]] * 5  # Studies short of trials.
    short["criteo1tb"] = [[100.0]] * 5  # One trial per study.
    root = write_logs(tmp_path / "external_tuning", {"full": _submission({}), "short": short})
    logs = algoperf.read_track(root, "external_tuning")
    text = "\n".join(logs.warnings)
    assert "short: no logs for imagenet_vit, wmt_glu_tanh: imagenet_vit, wmt scored as missed" in (
        text
    )
    assert "short/ogbg: 3 of 5 studies (study_0, study_1, study_2)" in text
    assert "short/fastmri: trials per study (expected 5): study_0 2, study_1 2" in text
    assert "short/criteo1tb: trials per study (expected 5): study_0 1" in text
    assert "full" not in text
    board = algoperf.score(logs.study_times(), BASE, V05.held_out)
    assert board.times["short"]["wmt"] == INF and board.times["short"]["imagenet_vit"] == INF
    assert board.times["short"]["ogbg"] == 100.0  # Median over the 3 studies there.
    assert board.times["short"]["fastmri"] == 200.0
    # Fastest (tied) on 5 of the 8, fastmri at 2x, imagenet_vit and wmt missed.
    at_2x = profiles.profile_area(profiles.ALGOPERF_TAUS >= 2.0)
    assert board.scores["short"] == pytest.approx(5 / 8 + at_2x / 8)


def test_self_tuning_expects_one_trial_per_study(tmp_path):
    root = write_logs(tmp_path / "logs", {"s": _submission({}, trials=1)})
    assert algoperf.read_track(root, "self_tuning").warnings == ()
    warnings = algoperf.read_track(root, "external_tuning").warnings
    assert len(warnings) == len(V05.targets)  # One per workload: 1 of 5 trials.


def test_stray_trials_unscored_workloads_and_trials_without_measurements_warn(tmp_path):
    sub = _submission({})
    root = write_logs(tmp_path / "external_tuning", {"s": sub})
    _write_trial(root / "s" / "study_1" / "trial_3", [1.0], [0.9], "validation/accuracy")
    _write_trial(root / "s" / "study_0" / "ogbg_gelu_jax" / "trial_1", [1.0], [0.9], "x")
    (root / "s" / "study_0" / "wmt_jax" / "trial_9").mkdir()  # No eval_measurements.csv.
    logs = algoperf.read_track(root, "external_tuning")
    assert logs.warnings == (
        "s/study_0/wmt_jax: no eval_measurements.csv in trial_9: skipped",
        "s: trials outside any workload, ignored: study_1/trial_3",
        "s: not scored in AlgoPerf v0.5, ignored: ogbg_gelu",
    )
    assert logs.studies["s"]["wmt"]["study_0"].trials == 5


# ---------------------------------------------------------------------------- bad input


@pytest.fixture
def good(tmp_path):
    return write_logs(tmp_path / "external_tuning", {"s": _submission({})})


def _error(path, track="external_tuning") -> str:
    with pytest.raises(algoperf.LogError) as e:
        algoperf.read_track(path, track)
    return str(e.value)


def test_an_unknown_track_or_a_missing_directory_is_an_error(good, tmp_path):
    assert "unknown track 'open'" in _error(good, "open")
    assert "expected one of external_tuning, self_tuning" in _error(good, "open")
    assert f"{tmp_path / 'nowhere'}: not a directory" in _error(tmp_path / "nowhere")
    assert "holds external_tuning logs, not self_tuning" in _error(good, "self_tuning")


def test_a_wrong_layout_is_an_error_naming_the_directory(good, tmp_path):
    assert f"{good / 's'}: holds study_<n> directories" in _error(good / "s")
    (tmp_path / "empty").mkdir()
    assert "no submission directories" in _error(tmp_path / "empty")
    (tmp_path / "flat" / "sub" / "wmt_jax").mkdir(parents=True)
    assert f"{tmp_path / 'flat' / 'sub'}: no study_<n> directories" in _error(tmp_path / "flat")
    (good / "s" / "study_0" / "wmt").mkdir()
    message = _error(good)
    assert f"{good / 's' / 'study_0' / 'wmt'}: expected a workload directory" in message


def test_an_unknown_workload_is_an_error(good):
    (good / "s" / "study_0" / "mystery_jax").mkdir()
    assert "mystery_jax: unknown workload 'mystery' for AlgoPerf v0.5" in _error(good)


def test_one_workload_in_two_frameworks_is_an_error(good):
    (good / "s" / "study_1" / "wmt_pytorch").mkdir()
    assert "wmt logged in both jax and pytorch" in _error(good)


def test_a_csv_without_the_needed_columns_is_an_error(good):
    path = good / "s" / "study_2" / "ogbg_jax" / "trial_1" / algoperf.MEASUREMENTS
    path.write_text("score,global_step\n1.0,100\n")
    assert _error(good) == (
        f"{path}: no column validation/mean_average_precision; expected AlgoPerf's "
        "eval_measurements.csv with the columns score, validation/mean_average_precision"
    )
    path.write_text("")
    assert f"{path}: no column score, validation/mean_average_precision" in _error(good)


def test_a_non_numeric_value_is_an_error_naming_file_line_and_column(good):
    path = good / "s" / "study_3" / "wmt_jax" / "trial_2" / algoperf.MEASUREMENTS
    path.write_text("score,validation/bleu\n10.0,1.5\n20.0,high\n")
    assert _error(good) == f"{path}, line 3, column validation/bleu: 'high' is not a number"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    assert _error(good) == f"{path}: not a text file; expected AlgoPerf's eval_measurements.csv"


# ---------------------------------------------------------------------------- the command


def test_the_command_writes_the_leaderboard(tmp_path, capsys):
    root = write_logs(
        tmp_path / "self_tuning",
        {
            "fast": _submission({}, trials=1),
            "slow": _submission({"wmt": 300.0}, trials=1),
        },
    )
    out = tmp_path / "out"
    args = ["adamlab", "algoperf-score", str(root), "--track", "self_tuning", "--out", str(out)]
    assert cli.main(args) == cli.EXIT_OK
    printed = capsys.readouterr().out
    assert "1. fast" in printed and "2. slow" in printed
    names = {"leaderboard.csv", "studies.csv", "summary.md", "profiles.png"}
    assert {p.name for p in out.iterdir()} == names
    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert [r["submission"] for r in rows] == ["fast", "slow"]
    assert float(rows[0]["score"]) == 1.0 and float(rows[1]["wmt_ratio"]) == 3.0
    board = algoperf.score(
        algoperf.read_track(root, "self_tuning").study_times(), BASE, V05.held_out
    )
    assert float(rows[1]["score"]) == board.scores["slow"]  # The same code, the same number.
    studies = list(csv.DictReader((out / "studies.csv").open()))
    assert len(studies) == 2 * len(V05.targets) * 5
    summary = (out / "summary.md").read_text()
    assert "| 2 | slow | " in summary and "![profiles](profiles.png)" in summary


def test_the_command_on_bad_logs_exits_2_naming_the_file_and_writes_nothing(good, tmp_path, capsys):
    path = good / "s" / "study_0" / "fastmri_jax" / "trial_1" / algoperf.MEASUREMENTS
    path.write_text("score\n1.0\n")
    out = tmp_path / "out"
    args = ["adamlab", "algoperf-score", str(good), "--track", "external_tuning", "--out", str(out)]
    assert cli.main(args) == cli.EXIT_USAGE
    assert f"{path}: no column validation/ssim" in capsys.readouterr().err
    assert not out.exists()
    assert cli.main([*args[:4], "open", *args[5:]]) == cli.EXIT_USAGE
    assert "external_tuning|self_tuning" in capsys.readouterr().err
    assert cli.main(args[:2] + args[3:]) == cli.EXIT_USAGE  # No DIR.
    assert "give one log directory DIR" in capsys.readouterr().err


def test_an_out_path_that_is_a_file_is_an_error_before_anything_is_read(good, tmp_path):
    out = tmp_path / "board"
    out.write_text("mine")
    with pytest.raises(algoperf.LogError, match="is a file, not a directory"):
        algoperf.score_track(good, "external_tuning", out)
    assert out.read_text() == "mine"
