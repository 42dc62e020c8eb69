"""Tests of `adamlab compare` (adamlab.experiments.compare: a group of runs per optimizer on the
one loop) on the offline digits set.

One tiny comparison (a one-conv CNN, batch 32, 12 steps; adam and nadam, ours and optax, 2
seeds) is shared by the module, checked against a separate `train_and_evaluate` run, and
against the same comparison interrupted and resumed.
"""

import math
import pathlib
import shutil

import jax
import numpy as np
import pytest

from adamlab import cli, config_dict
from adamlab.experiments import compare, groups, report
from adamlab.training import members, restore, run_io, train

from helpers import assert_trees_equal

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_STEPS = 12
SEEDS = 2
TIMING = ("steps_per_sec", "wall_time_s")  # The only fields of a row that may differ.


def tiny_config():
    """configs/digits.py shrunk to seconds (as tests/test_train.py): 12 steps, warmup 2, every
    call 4 steps (one compiled program per group: logs and evaluations every 4 steps)."""
    config = config_dict.load_config_file(ROOT / "configs" / "digits.py")
    config.seed = 3
    config.model.features = (8,)
    config.model.dense_features = 16
    config.optimizer.warmup_steps = 2
    config.train.update(
        batch_size=32, eval_batch_size=128, num_steps=NUM_STEPS, log_every_steps=4,
        eval_every_steps=4, checkpoint_every_steps=NUM_STEPS, progress_bar=False,
    )  # fmt: skip
    return config


def group_config(name: str):
    """The config `run_compare` trains optimizer `name` with: seeds 3, 4; ours and optax."""
    return groups.with_members(
        tiny_config(), seeds=(3, 4), implementations=("ours", "optax"), **{"optimizer.name": name}
    )


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("compare")
    return compare.run_compare(tiny_config(), workdir, optimizers="adam,nadam", num_seeds=SEEDS)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """`adamlab train` of adam (ours) with seed 4 = config.seed + 1: final metrics and params."""
    config = tiny_config()
    config.seed = 4
    workdir = tmp_path_factory.mktemp("train")
    final = train.train_and_evaluate(config, workdir)
    return final, restore.restore(workdir, "latest").params


def test_report_files_parse_with_the_right_rows(compared):
    workdir = compared["workdir"]
    rows = report.read_csv(workdir / "results.csv")
    assert tuple(rows[0]) == compare.COLUMNS
    runs = [(r["optimizer"], r["implementation"], int(r["seed"])) for r in rows]
    assert sorted(runs) == sorted(
        (o, i, s) for o in ("adam", "nadam") for i in ("ours", "optax") for s in (3, 4)
    )
    for row in rows:
        assert int(row["steps"]) == NUM_STEPS and row["finite"] == "True"
        assert int(row["diverged_at"]) == 0 and int(row["runs_in_program"]) == 4
        assert 0.0 < float(row["final_train_loss"]) < 2.4  # ln(10) = 2.30: it learned a bit.
        assert 0.0 <= float(row["test_accuracy"]) <= 1.0 and float(row["steps_per_sec"]) > 0
    summary = (workdir / "summary.md").read_text()
    table = [line for line in summary.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| optimizer | implementation | n | final train loss")
    assert len(table) == 1 + 4  # header + (adam, nadam) x (ours, optax)
    assert all(" ± " in line for line in table[1:])
    assert run_io.read_config(workdir).optimizer.name == "adam"
    assert (workdir / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # Each optimizer is a run directory of its own (changed from one tensorboard/ tree): its
    # config, checkpoints, result.json and one metrics directory per member.
    for name in ("adam", "nadam"):
        assert run_io.read_config(workdir / name).optimizer.name == name
        assert (workdir / name / train.RESULT_FILE).is_file()
    for impl in ("ours", "optax"):
        run = workdir / "nadam" / "members" / impl / "seed4"
        assert list(run.glob("events.out.tfevents.*"))
        records = run_io.read_metrics(run)
        assert [r["step"] for r in records if r["split"] == "train"] == [4, 8, 12]
        assert [r["step"] for r in records if r["split"] == "validation"] == [4, 8, 12]


def test_ours_and_twin_agree(compared):
    rows = compared["rows"]
    for row in rows:
        assert row["parity"] < 1e-5
    by_run = {(r["optimizer"], r["implementation"], r["seed"]): r for r in rows}
    for (name, impl, seed), row in by_run.items():
        if impl == "ours":
            twin = by_run[name, "optax", seed]
            assert row["test_accuracy"] == twin["test_accuracy"]
            assert row["final_train_loss"] == pytest.approx(twin["final_train_loss"], rel=1e-5)
    # The seeds really differ: different init and data order give different losses.
    assert (
        by_run["adam", "ours", 3]["final_train_loss"]
        != by_run["adam", "ours", 4]["final_train_loss"]
    )


def test_matches_train_and_evaluate(compared, reference):
    """Run (adam, ours, seed 4) is `adamlab train` with seed 4, up to float32 rounding.

    The two programs differ only in the order of float32 reductions and in how convolutions
    are computed: train_and_evaluate runs on 4 simulated devices (the batch sharded, gradients
    all-reduced), the vectorized program vmaps the members and, on CPU, computes convolutions
    as matmuls. Measured: a relative parameter difference of ~1e-7 (about 1 ulp) after 12
    steps; the bound 1e-5 leaves ~80 ulps for other XLA versions while any real difference
    (another seed, batch or learning rate) is > 1e-2.
    """
    final, params = reference
    row = next(
        r for r in compared["rows"]
        if (r["optimizer"], r["implementation"], r["seed"]) == ("adam", "ours", 4)
    )  # fmt: skip
    assert row["final_train_loss"] == pytest.approx(final["train_loss"], rel=1e-5)
    assert row["validation_loss"] == pytest.approx(final["validation_loss"], rel=1e-5)
    assert abs(row["test_accuracy"] - final["test_accuracy"]) <= 1 / 360 + 1e-12
    vectorized = jax.tree.map(lambda x: x[0, 1], compared["results"]["adam"].params["ours"])
    assert float(members.relative_difference(vectorized, params)) < 1e-5
    seed_3 = jax.tree.map(lambda x: x[0, 0], compared["results"]["adam"].params["ours"])
    assert float(members.relative_difference(seed_3, params)) > 1e-2


def test_relative_difference():
    a = {"w": np.array([1.0, -2.0, 4.0], np.float32), "b": np.zeros(2, np.float32)}
    assert float(members.relative_difference(a, a)) == 0.0
    b = {"w": np.array([1.0, -2.0, 4.5], np.float32), "b": np.zeros(2, np.float32)}
    assert float(members.relative_difference(b, a)) == pytest.approx(0.5 / 4.0)
    c = {"w": a["w"], "b": np.array([0.0, 1e-3], np.float32)}  # A zero leaf: absolute.
    assert float(members.relative_difference(c, a)) == pytest.approx(1e-3 / 1e-30)
    assert math.isnan(float(members.relative_difference({"w": np.array([np.nan])},
                                                        {"w": np.array([1.0])})))  # fmt: skip


def _without_timing(rows):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """The comparison again, interrupted and resumed: `run_compare` with the adam group's
    `train.run` stopped after step 4 (as SIGTERM would: checkpoint, `interrupted`), then
    `run_compare` twice more (the first resumes adam and trains nadam, the second finds both
    finished).

    Returns {"stopped", "resumed", "again"} (run_compare's results), "calls" (the groups
    `train.run` was called for in the stopped compare), "csv_after_stop", "workdir".
    """
    workdir = tmp_path_factory.mktemp("resumed")
    original_run = train.run
    calls = []

    def stop_adam_after_4(config, group_dir, **kwargs):
        calls.append(pathlib.Path(group_dir).name)
        if config.optimizer.name == "adam":
            kwargs["stop_after_step"] = 4
        return original_run(config, group_dir, **kwargs)

    compare_again = lambda: compare.run_compare(  # noqa: E731
        tiny_config(), workdir, optimizers="adam,nadam", num_seeds=SEEDS
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "run", stop_adam_after_4)  # What run_groups calls.
        out = {"stopped": compare_again(), "calls": calls}
    out["csv_after_stop"] = (workdir / "results.csv").exists()
    out["resumed"] = compare_again()
    out["again"] = compare_again()
    out["workdir"] = workdir
    return out


def test_a_resumed_run_of_several_members_equals_an_uninterrupted_one(compared, resumed):
    """`run` with seeds (3, 4) x (ours, optax), stopped after step 4 and run again, ends with
    bitwise the parameters of every member of the uninterrupted run, and the same rows."""
    stopped = resumed["stopped"]["results"]["adam"]
    assert stopped.interrupted and stopped.step == 4 and len(stopped.rows) == 4
    finished = resumed["resumed"]["results"]["adam"]
    assert not finished.interrupted and finished.step == NUM_STEPS
    uninterrupted = compared["results"]["adam"]
    assert_trees_equal(finished.params, uninterrupted.params)  # {ours, optax}: [1, 2, ...]
    assert _without_timing(finished.rows) == _without_timing(uninterrupted.rows)
    # Each member's metrics hold one trajectory: the resumed run did not log steps twice.
    lines = run_io.read_metrics(resumed["workdir"] / "adam" / "members" / "optax" / "seed4")
    steps = [(r["split"], r["step"]) for r in lines]
    assert len(steps) == len(set(steps)) and steps[-1] == ("test", NUM_STEPS)


def test_an_interrupted_compare_resumes_to_the_uninterrupted_rows(compared, resumed):
    """Changed: compare resumes (each optimizer is a run directory); rerunning an interrupted
    compare finishes the unfinished groups and returns the finished ones' saved results."""
    stopped = resumed["stopped"]
    assert resumed["calls"] == ["adam"]  # The stop ends the experiment: nadam waits.
    assert stopped["interrupted"] and stopped["summary"] == "" and not resumed["csv_after_stop"]
    for phase in ("resumed", "again"):
        result = resumed[phase]
        assert not result["interrupted"] and set(result["results"]) == {"adam", "nadam"}
        assert _without_timing(result["rows"]) == _without_timing(compared["rows"]), phase
    assert resumed["again"]["results"]["adam"].params == {}  # Read from result.json.
    saved = report.read_csv(resumed["workdir"] / "results.csv")
    expected = report.read_csv(compared["workdir"] / "results.csv")
    assert _without_timing(saved) == _without_timing(expected)
    # summary.md's numbers too (its table holds no timing field).
    table = lambda d: [line for line in (d / "summary.md").read_text().splitlines() if "| " in line]
    assert table(resumed["workdir"]) == table(compared["workdir"])


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match="valid names|from: adam, adamw"):
        compare.parse_names("adam,adamx")
    with pytest.raises(ValueError, match="int >= 1"):
        groups.seeds_from(tiny_config(), 0)
    theirs = groups.with_members(tiny_config(), seeds=(0,), implementations=("theirs",))
    with pytest.raises(train.ConfigError, match="runs.implementations"):
        train.run(theirs, tmp_path / "theirs")
    with pytest.raises(train.ConfigError, match="runs.seeds"):
        train.run(groups.with_members(tiny_config(), seeds=(-1,)), tmp_path / "negative")
    # A group's bad config is refused before anything is written, naming the group.
    with pytest.raises(train.ConfigError, match="adamw: optimizer.warmup_steps=12 must be <"):
        compare.run_compare(
            groups.with_members(tiny_config(), **{"optimizer.warmup_steps": 12}),
            tmp_path / "compare",
            optimizers="adamw",
        )
    assert not list(tmp_path.iterdir())


def test_a_workdir_of_another_experiment_is_refused(compared, tmp_path):
    workdir = compared["workdir"]
    with pytest.raises(run_io.ConfigMismatchError, match="runs.seeds"):
        compare.run_compare(tiny_config(), workdir, optimizers="adam,nadam", num_seeds=3)
    with pytest.raises(run_io.ConfigMismatchError, match="holds a training run"):
        compare.run_compare(tiny_config(), workdir / "adam", optimizers="adam", num_seeds=SEEDS)


def test_cli_errors(capsys, tmp_path):
    code = cli.main(
        ["adamlab", "compare", "--optimizers", "adam,adamx", "--workdir", str(tmp_path)]
    )
    assert code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "adamx" in err and "adam, adamw, amsgrad" in err
    code = cli.main(["adamlab", "compare", "--seeds", "0"])
    assert code == cli.EXIT_USAGE and "seeds" in capsys.readouterr().err
    code = cli.main(["adamlab", "compare", "--config.optimizer.nope=1"])
    assert code == cli.EXIT_USAGE and "nope" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # Refused before anything was written.


def _mtimes(workdir):
    return {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}


def test_a_compare_of_other_optimizers_is_refused_and_the_saved_report_kept(
    compared, tmp_path, capsys
):
    """Issue 27 item 5: `compare --optimizers radam` in a workdir holding a finished adam,nadam
    compare replaced its results.csv, summary.md and curves.png with radam's rows alone. It is
    refused, before anything is written, in one line naming the workdir, what it holds, what
    was asked and what to do; nothing saved changes."""
    workdir = tmp_path / "compare"
    shutil.copytree(compared["workdir"], workdir)
    before = _mtimes(workdir)
    with pytest.raises(run_io.ConfigMismatchError, match="holds .*--optimizers=adam,nadam"):
        compare.run_compare(tiny_config(), workdir, optimizers="radam", num_seeds=SEEDS)
    with pytest.raises(run_io.ConfigMismatchError, match="--optimizers=adam"):
        compare.run_compare(tiny_config(), workdir, optimizers="adam", num_seeds=SEEDS)
    code = cli.main(["adamlab", "compare", "--optimizers", "radam", "--workdir", str(workdir)])
    assert code == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(workdir) in err and "--optimizers=radam" in err
    assert "adam,nadam" in err and "another --workdir" in err and "resume" in err
    assert _mtimes(workdir) == before
    rows = report.read_csv(workdir / "results.csv")
    assert {r["optimizer"] for r in rows} == {"adam", "nadam"}
    # Asking for what it holds and more extends it: the finished groups are reused as saved,
    # radam trains, and the report covers the three.
    extended = compare.run_compare(
        tiny_config(), workdir, optimizers="adam,nadam,radam", num_seeds=SEEDS
    )
    rows = report.read_csv(workdir / "results.csv")
    assert [r["optimizer"] for r in rows] == ["adam"] * 4 + ["nadam"] * 4 + ["radam"] * 4
    assert _without_timing(extended["rows"][:8]) == _without_timing(compared["rows"])
    assert extended["results"]["adam"].params == {}  # Read from result.json, not retrained.
