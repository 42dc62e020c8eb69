"""Tests of adamlab.report: interval math on known numbers, tables, CSV round trips, figures."""

import math

import numpy as np
import pytest

from adamlab.experiments import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_t_interval_on_known_numbers():
    # [1, 2, 3]: mean 2, sample sd 1, t_{0.975, 2} = 4.30265273 (tables: 4.303).
    mean, half = report.t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(4.30265273 / math.sqrt(3), rel=1e-9)
    # Two seeds: t_{0.975, 1} = 12.70620474; sd of [0, 1] is 1/sqrt(2).
    mean, half = report.t_interval([0.0, 1.0])
    assert mean == 0.5
    assert half == pytest.approx(12.70620474 * (1 / math.sqrt(2)) / math.sqrt(2), rel=1e-9)


def test_t_interval_uses_scipy_stats_t_quantile_to_the_bit():
    # report takes the quantile from scipy.special (importing scipy.stats costs the commands
    # a fraction of a second): the same numbers as stats.t.ppf.
    from scipy import stats

    rng = np.random.default_rng(0)
    for n in range(2, 41):
        values = rng.normal(size=n)
        for confidence in (0.5, 0.9, 0.95, 0.99):
            quantile = stats.t.ppf(0.5 + confidence / 2, df=n - 1)
            half = float(quantile * np.std(values, ddof=1) / math.sqrt(n))
            assert report.t_interval(values, confidence)[1] == half


def test_t_interval_edge_cases():
    mean, half = report.t_interval([0.9])
    assert mean == 0.9 and math.isnan(half)
    assert report.t_interval([5.0, 5.0, 5.0]) == (5.0, 0.0)
    assert math.isnan(report.t_interval([1.0, float("nan")])[0])  # A diverged run is not hidden.
    with pytest.raises(ValueError, match="at least one value"):
        report.t_interval([])
    with pytest.raises(ValueError, match="confidence"):
        report.t_interval([1.0, 2.0], confidence=95)


def test_format_interval():
    assert report.format_interval(0.98765, 0.0123) == "0.9877 ± 0.0123"
    assert report.format_interval(0.5, math.nan) == "0.5000 (n=1, no interval)"
    mean, half = report.t_interval([0.9, math.nan, 0.95])
    assert report.format_interval(mean, half) == "nan (a run diverged)"


ROWS = [
    {"optimizer": "adam", "implementation": "ours", "seed": 0, "acc": 1.0, "parity": 0.0},
    {"optimizer": "adam", "implementation": "ours", "seed": 1, "acc": 2.0, "parity": 3e-7},
    {"optimizer": "adam", "implementation": "ours", "seed": 2, "acc": 3.0, "parity": 1e-7},
    {"optimizer": "adamw", "implementation": "ours", "seed": 0, "acc": 0.5, "parity": 0.0},
]


def test_summarize_groups_in_order_with_intervals_and_maxima():
    summary = report.summarize(ROWS, by=("optimizer",), metrics=("acc",), maxima=("parity",))
    assert [s["optimizer"] for s in summary] == ["adam", "adamw"]
    adam, adamw = summary
    assert adam["n"] == 3 and adam["acc_mean"] == 2.0
    assert adam["acc_half"] == pytest.approx(4.30265273 / math.sqrt(3), rel=1e-9)
    assert adam["parity_max"] == 3e-7
    assert adamw["n"] == 1 and math.isnan(adamw["acc_half"])


@pytest.mark.parametrize("parities", [(math.nan, 1e-7), (1e-7, math.nan)])
def test_a_nan_in_a_group_is_its_maximum_wherever_it_stands(parities):
    rows = [{"optimizer": "adam", "acc": 1.0, "parity": p} for p in parities]
    (summary,) = report.summarize(rows, by=("optimizer",), metrics=("acc",), maxima=("parity",))
    assert math.isnan(summary["parity_max"])


def test_summary_table():
    _, table = report.summary_table(
        ROWS, by=("optimizer",), metrics={"acc": "accuracy"}, maxima={"parity": "parity"}
    )
    lines = table.strip().splitlines()
    assert lines[0] == "| optimizer | n | accuracy | parity |"
    assert lines[2] == "| adam | 3 | 2.0000 ± 2.4841 | 3.0e-07 |"
    assert lines[3] == "| adamw | 1 | 0.5000 (n=1, no interval) | 0.0e+00 |"


def test_csv_round_trip_is_exact(tmp_path):
    rows = [{"name": "a", "x": 0.1 + 0.2, "ok": True}, {"name": "b", "x": math.nan, "ok": False}]
    path = report.write_csv(tmp_path / "r.csv", rows)
    back = report.read_csv(path)
    assert [r["name"] for r in back] == ["a", "b"]
    assert float(back[0]["x"]) == 0.1 + 0.2 and math.isnan(float(back[1]["x"]))
    assert back[1]["ok"] == "False"
    with pytest.raises(ValueError, match="no rows"):
        report.write_csv(tmp_path / "empty.csv", [])


def test_figures_are_pngs(tmp_path):
    steps = np.arange(1, 6)
    values = np.stack([np.linspace(1, 0.1, 5), np.linspace(1.2, 0.2, 5)])  # [seeds, points]
    curves = report.plot_panels(
        tmp_path / "c.png", {"train loss": {"adam (ours)": (steps, values)}}, xlabel="step",
        title="t",
    )  # fmt: skip
    sweep = report.plot_panels(
        tmp_path / "s.png",
        {"validation accuracy": {"adam": (np.array([1e-3, 1e-2]), np.array([[0.9, 0.95]]))}},
        xlabel="optimizer.learning_rate", log_x=True, marker="o", title="",
    )  # fmt: skip
    for path in (curves, sweep):
        assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5_000
