"""Tests of `adamlab sweep` (adamlab.experiments.sweep: a group of runs per optimizer on the one
loop) on the offline digits set.

One tiny sweep (2 learning rates x 1 seed, ours and optax in lockstep) is shared by the module
and checked against the same runs made one after another with the plain jitted train step, and
against the same sweep with a third, absurd learning rate whose members diverge.
"""

import logging
import pathlib
import re

import jax
import numpy as np
import optax
import pytest

from adamlab import cli, config_dict, data, models
from adamlab.experiments import groups, report, sweep
from adamlab.training import members, optimizers, train
from adamlab.training.steps import make_train_step
from adamlab.training.train_state import create_train_state

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_STEPS = 10
LEARNING_RATES = (3e-3, 3e-2)
SPEC = "optimizer.learning_rate=3e-3,3e-2"


def tiny_config():
    config = config_dict.load_config_file(ROOT / "configs" / "digits.py")
    config.model.features = (8,)
    config.model.dense_features = 16
    config.optimizer.warmup_steps = 3
    config.train.update(
        batch_size=32, eval_batch_size=128, num_steps=NUM_STEPS, log_every_steps=5,
        eval_every_steps=5, progress_bar=False,
    )  # fmt: skip
    return config


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sweep")
    return sweep.run_sweep(
        tiny_config(), workdir, sweep=SPEC, implementations=("ours", "optax"), num_seeds=1
    )


def sequential_params(config, learning_rate: float, seed: int):
    """The run made alone: make_optimizer's tx, the jitted train step, seed's data, one device."""
    config = config.copy_and_resolve_references()
    config.optimizer.learning_rate = learning_rate
    info = data.dataset_info(config.data)
    model = models.create_model(config.model, info.num_classes)
    tx, schedule = optimizers.make_optimizer(config.optimizer, NUM_STEPS)
    state = create_train_state(jax.random.key(seed), model, tx, info.image_shape)
    step = jax.jit(make_train_step(model, tx, schedule))
    batches = data.train_batches(config.data, global_batch_size=config.train.batch_size, seed=seed)
    for _ in range(NUM_STEPS):
        state, _ = step(state, next(batches))
    return jax.device_get(state.params)


def test_vmapped_sweep_equals_sequential_runs(swept):
    """Each (learning rate, seed) of the one program is the run made alone, up to rounding.

    The programs differ in how XLA orders float32 reductions once the runs are vmapped, and in
    nothing else (the schedule is the same ops, see
    test_schedule_with_a_traced_peak_is_optax_schedule). Measured difference ~1e-7 of each
    leaf's scale; 1e-5 leaves ~80 ulps, while the two learning rates
    differ from each other by > 1e-2.
    """
    params = swept["results"]["adam"].params
    alone = [sequential_params(tiny_config(), lr, seed=0) for lr in LEARNING_RATES]
    for v in range(len(LEARNING_RATES)):
        for impl in ("ours", "optax"):
            vmapped = jax.tree.map(lambda x, v=v: x[v, 0], params[impl])
            assert float(members.relative_difference(vmapped, alone[v])) < 1e-5
    other = jax.tree.map(lambda x: x[1, 0], params["ours"])
    assert float(members.relative_difference(other, alone[0])) > 1e-2


def test_sweep_report(swept):
    workdir = swept["workdir"]
    # Changed: each optimizer's group is a run directory of its own, with a metrics directory
    # per member.
    member = workdir / "adam" / "members" / "optax" / "learning_rate=0.03_seed0"
    assert (member / "metrics.jsonl").is_file()
    assert (workdir / "adam" / train.RESULT_FILE).is_file()
    assert swept["name"] == "learning_rate" and swept["values"] == LEARNING_RATES
    rows = report.read_csv(workdir / "results.csv")
    assert [(r["implementation"], float(r["learning_rate"])) for r in rows] == [
        (impl, lr) for impl in ("ours", "optax") for lr in LEARNING_RATES
    ]
    assert all(float(r["parity"]) < 1e-5 and r["finite"] == "True" for r in rows)
    table = [line for line in (workdir / "summary.md").read_text().splitlines() if "| " in line]
    assert table[0].startswith("| optimizer | implementation | learning_rate | n |")
    assert len(table) == 1 + 4 and "n=1, no interval" in table[1]
    assert (workdir / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    curves = swept["results"]["adam"].curves["ours"]
    steps, train_curve = curves["train"]
    assert list(steps) == [5, 10] and train_curve["loss"].shape == (2, 1, 2)  # [values, seeds, T]
    assert curves["validation"][1]["accuracy"].shape == (2, 1, 2)


def test_swept_values_are_state_leaves():
    tx, _ = optimizers.make_optimizer(tiny_config().optimizer, 10, swept=("learning_rate", "b2"))
    state = tx(learning_rate=0.25, b2=0.5).init({"w": np.zeros(3, np.float32)})
    assert float(state.hyperparams["learning_rate"]) == 0.25
    assert float(state.hyperparams["b2"]) == 0.5


@pytest.mark.parametrize("schedule,warmup", [("warmup_cosine", 3), ("constant", 0)])
def test_schedule_with_a_traced_peak_is_optax_schedule(schedule, warmup):
    """With the peak traced (as in a sweep) make_schedule equals optax's own schedule bit for bit.

    Both are evaluated as the train step does: jitted, at a scalar int32 step. (Eager or
    vmapped evaluation may round the last bit differently, for both alike.)
    """
    config = tiny_config().optimizer
    config.update(schedule=schedule, warmup_steps=warmup, learning_rate=0.03)
    if schedule == "constant":
        reference = optax.constant_schedule(0.03)
    else:
        reference = optax.warmup_cosine_decay_schedule(0.0, 0.03, warmup, 10, end_value=0.0)
    expected = jax.jit(reference)
    traced = jax.jit(lambda peak, step: optimizers.make_schedule(config, 10, peak)(step))
    plain = jax.jit(optimizers.make_schedule(config, 10))
    for step in range(12):
        assert traced(np.float32(0.03), np.int32(step)) == expected(np.int32(step)), step
        assert plain(np.int32(step)) == expected(np.int32(step)), step


ABSURD = 1e30  # Adam's update is ~lr * sign(g): the parameters overflow within two steps.


class _Lines(logging.Handler):
    """Keeps the messages logged while it is attached."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def absurd_run(tmp_path_factory):
    """The sweep's adam group again through `train.run`, with the absurd rate between the two;
    (result, the lines it logged)."""
    config = groups.with_members(
        tiny_config(), seeds=(0,), implementations=("ours", "optax"),
        sweep={"learning_rate": (LEARNING_RATES[0], ABSURD, LEARNING_RATES[1])},
        **{"optimizer.name": "adam"},
    )  # fmt: skip
    root, handler = logging.getLogger(), _Lines()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        return train.run(config, tmp_path_factory.mktemp("absurd")), handler.lines
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture(scope="module")
def with_absurd(absurd_run):
    return absurd_run[0]


def test_a_group_logs_one_line_per_log_point(absurd_run):
    """No progress bar in a log file: a group's log shows each log and evaluation point as one
    line of medians and ranges over its members, the diverged ones counted apart."""
    lines = [line for line in absurd_run[1] if "over 6 members" in line]
    assert [line.split(",")[0] for line in lines] == [
        "step 5 train", "step 5 validation", "step 10 train", "step 10 validation",
        "step 10 test",
    ]  # fmt: skip
    # The absurd rate's two members diverge within the first 5 steps (see the next test).
    assert all("(2 not finite)" in line for line in lines)
    validation = re.search(r"accuracy=(\S+) \[(\S+), (\S+)\]", lines[-2])
    median, low, high = (float(x) for x in validation.groups())
    assert 0 <= low <= median <= high <= 1


def test_a_diverged_member_is_frozen_and_the_others_go_on(swept, with_absurd):
    """Per-member divergence: the absurd rate's members stop at their first non-finite step
    (frozen at their last finite state, `finite=False`, `diverged_at` that step); the run goes
    on and every other member ends with the values of the sweep without the absurd rate."""
    assert not with_absurd.interrupted and with_absurd.step == NUM_STEPS
    rows = {(r["implementation"], r["learning_rate"]): r for r in with_absurd.rows}
    for impl in ("ours", "optax"):
        diverged = rows[impl, ABSURD]
        assert diverged["finite"] is False and 0 < diverged["diverged_at"] <= NUM_STEPS
        frozen = jax.tree.leaves(jax.tree.map(lambda x: x[1, 0], with_absurd.params[impl]))
        assert all(np.all(np.isfinite(x)) for x in frozen)
    expected = {(r["implementation"], r["learning_rate"]): r for r in swept["rows"]}
    assert set(rows) - set(expected) == {("ours", ABSURD), ("optax", ABSURD)}
    # Equal up to float32 rounding: with 3 values instead of 2, XLA:CPU tiles the vmapped
    # matmuls differently (measured: parameters 1.3e-6 apart, every metric of the rows equal).
    timing = ("steps_per_sec", "wall_time_s", "runs_in_program")
    for key, row in expected.items():
        assert row["finite"] and row["diverged_at"] == 0
        assert rows[key].keys() == row.keys()
        for name in row.keys() - set(timing):
            if isinstance(row[name], float):
                assert rows[key][name] == pytest.approx(row[name], rel=1e-5, abs=1e-7), name
            else:
                assert rows[key][name] == row[name], name
    assert rows["ours", LEARNING_RATES[0]]["runs_in_program"] == 6
    for impl in ("ours", "optax"):
        for v, value in ((0, 0), (1, 2)):
            kept = jax.tree.map(lambda x, i=value: x[i, 0], with_absurd.params[impl])
            alone = jax.tree.map(lambda x, i=v: x[i, 0], swept["results"]["adam"].params[impl])
            assert float(members.relative_difference(kept, alone)) < 1e-5


def test_parse_sweep():
    config = tiny_config()
    name, values = sweep.parse_sweep("optimizer.learning_rate=1e-4:1e-1:4", config)
    assert name == "learning_rate"
    np.testing.assert_allclose(values, [1e-4, 1e-3, 1e-2, 1e-1], rtol=1e-12)
    assert sweep.parse_sweep("optimizer.b2 = 0.9,0.99", config) == ("b2", (0.9, 0.99))
    assert sweep.parse_sweep("optimizer.eps=1e-8:1e-8:1", config) == ("eps", (1e-8,))


@pytest.mark.parametrize(
    "spec,message",
    [
        ("optimizer.learning_rate", "does not parse; expected path=start:stop:num"),
        ("optimizer.learning_rate=1e-4:1e-1", "does not parse"),
        ("optimizer.learning_rate=0:1e-1:3", "does not parse"),
        ("optimizer.learning_rate=1e-4:1e-1:2.5", "does not parse"),
        ("optimizer.learning_rate=a,b", "does not parse"),
        ("optimizer.learning_rate=1e-3,1e-3", "distinct"),
        ("optimizer.lr=1e-3,1e-2", "no field 'optimizer.lr'"),
        ("trian.batch_size=1,2", "no field 'trian.batch_size'"),
        ("seed.x=1,2", "no field 'seed.x'"),
        ("train.batch_size=32,64", "cannot vary inside one compiled program; sweepable:"),
        ("optimizer.schedule=1,2", "cannot vary"),
    ],
)
def test_bad_sweep_specs(spec, message):
    with pytest.raises(sweep.SweepSpecError, match=message.replace("(", r"\(")):
        sweep.parse_sweep(spec, tiny_config())


def test_bad_values_are_refused_before_training(tmp_path):
    bad_b1 = groups.with_members(tiny_config(), seeds=(0,), sweep={"b1": (0.9, 1.5)})
    with pytest.raises(train.ConfigError, match="runs.sweep optimizer.b1=1.5"):
        train.run(bad_b1, tmp_path / "b1")
    decay = groups.with_members(tiny_config(), seeds=(0,), sweep={"weight_decay": (0.1, 0.2)})
    with pytest.raises(train.ConfigError, match="cannot be swept .* for adam"):
        train.run(decay, tmp_path / "decay")
    uneven = groups.with_members(tiny_config(), sweep={"b1": (0.9,), "b2": (0.9, 0.99)})
    with pytest.raises(train.ConfigError, match="equally long"):
        train.validate_config(uneven)
    assert not list(tmp_path.iterdir())


def test_cli(capsys, tmp_path):
    code = cli.main(["adamlab", "sweep", "--sweep", "optimizer.nope=1,2"])
    assert code == cli.EXIT_USAGE and "no field 'optimizer.nope'" in capsys.readouterr().err
    code = cli.main(["adamlab", "sweep", "--sweep", "optimizer.learning_rate=1:2"])
    assert code == cli.EXIT_USAGE and "path=start:stop:num" in capsys.readouterr().err
    code = cli.main(["adamlab", "sweep"])
    assert code == cli.EXIT_USAGE and "sweep" in capsys.readouterr().err
    code = cli.main(["adamlab", "sweep", "--sweep", "optimizer.learning_rate=1e-3,1e-2",
                     "--optimizers", "adamq", "--workdir", str(tmp_path)])  # fmt: skip
    assert code == cli.EXIT_USAGE and "adamq" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_chunks_end_at_every_log_and_eval_step():
    """The scans stop wherever metrics are fetched or runs evaluated, and at the end."""
    assert train.chunk_lengths(0, 10, (5, 5), 100) == [5, 5]
    assert train.chunk_lengths(0, 12, (5, 4), 100) == [4, 1, 3, 2, 2]  # ends 4, 5, 8, 10, 12
    assert train.chunk_lengths(0, 250, (1000,), 100) == [100, 100, 50]
    assert sum(train.chunk_lengths(0, 607, (20, 100), 100)) == 607


@pytest.mark.parametrize("every,max_length", [((1000,), 100), ((20, 100), 100), ((7, 9), 4)])
def test_a_run_resumed_at_any_chunk_end_continues_with_the_same_chunks(every, max_length):
    """What makes a resumed run bitwise equal: the same compiled calls on the same steps."""
    full = train.chunk_lengths(0, 607, every, max_length)
    assert max(full) <= max_length
    for i in range(1, len(full)):
        start = sum(full[:i])
        assert train.chunk_lengths(start, 607, every, max_length) == full[i:], start


def test_phases_are_reported(swept):
    phases = swept["results"]["adam"].phases
    assert tuple(phases) == train.PHASES
    assert all(v > 0 for v in phases.values())


def test_a_diverged_lockstep_run_keeps_the_parity_column():
    def row(impl, seed, parity, finite=True):
        metrics = dict(final_train_loss=0.1, validation_accuracy=0.9, test_accuracy=0.9)
        return dict(optimizer="adam", implementation=impl, learning_rate=1e-2, seed=seed,
                    steps=10, parity=parity, finite=finite, **metrics)  # fmt: skip

    rows = [row("ours", 0, 1e-7), row("optax", 0, 1e-7),
            row("ours", 1, float("nan"), False), row("optax", 1, float("nan"), False)]  # fmt: skip
    text = sweep._summary_markdown(tiny_config(), "learning_rate", rows, (0, 1), 1.0,
                                   {"adam": 100.0})  # fmt: skip
    assert "parity (max rel. param diff)" in text
    assert "Diverged (non-finite) runs: 2 of 4" in text
    table_rows = [line for line in text.splitlines() if line.startswith("| adam |")]
    assert len(table_rows) == 2 and all(line.endswith("| nan |") for line in table_rows)
