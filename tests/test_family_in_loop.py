"""Every optimizer of ours in the one loop (issue #29): selectable by name in configs and
`--optimizers`, swept, trained as vmapped members, on the jit and pmap engines, and resumed
bitwise from its orbax checkpoint.

The update rules are proven in tests/test_optim_*.py; here each optimizer goes through the
loop's own pieces (`experiment.build_experiment` from configs/digits.py, `engines.Engine`,
`train.train_and_evaluate`) on the tiny CNN of tests/test_train.py. Each optimizer compiles
train programs of its own, so the default suite builds every one but trains a handful that
stress the loop differently (HANDFUL), and the slow tests train all of `optim.names()`;
Schedule-Free's evaluation point and resume are tested in tests/test_schedule_free.py.
"""

import jax
import numpy as np
import pytest
from test_engines import NUM_CLASSES, _assert_trees_close, _chunk, _run_all
from test_train import final_state, tiny_config

from adamlab import models, optim
from adamlab.experiments import compare
from adamlab.training import experiment, members, optimizers, train
from adamlab.training.steps import make_train_step

from helpers import assert_trees_equal, digits_batches

SLOW = pytest.mark.slow
# The default suite trains Schedule-Free (an evaluation point formed from its state, the one
# optimizer the loop treats apart). The default suite is at its time budget: SOAP (per-axis
# bases from eigh, an integer refresh schedule under `lax.switch`), Muon (Newton-Schulz on
# matrices, Adam on the rest), LAMB and Adam-mini (couplings within a leaf or a block) and the
# elementwise variants of Adam and Lion are trained in the slow tests; all are built with a
# swept rate in the default suite.
HANDFUL = ("schedule_free_adamw",)
ALL = [n if n in HANDFUL else pytest.param(n, marks=SLOW) for n in optim.names()]
LEARNING_RATES = (1e-3, 1e-2)  # The swept values; member v trains with LEARNING_RATES[v].
NUM_STEPS = 2


def test_every_optimizer_is_selectable_by_name():
    """`--optimizers` of compare and sweep accepts every name of ours (in the registry's
    order), and refuses an unknown one naming the valid ones."""
    names = optim.names()
    assert set(names) <= set(optimizers.names())
    assert compare.parse_names(",".join(names)) == names
    with pytest.raises(ValueError, match=r"unknown \['adamx'\].*schedule_free_adamw"):
        compare.parse_names("adam,adamx")


def _config(name, learning_rates):
    """configs/digits.py with `optimizer.name=name`, a constant learning rate (so that the
    first step already moves every member) and `runs.sweep` over `learning_rates` (one value
    and no sweep: a single run)."""
    config = tiny_config(num_steps=NUM_STEPS)
    config.optimizer.update(
        name=name, learning_rate=learning_rates[0], schedule="constant", warmup_steps=0
    )
    if len(learning_rates) > 1:
        config.runs.sweep = {"learning_rate": learning_rates}
    return config


def _build(config):
    """The experiment the loop builds from `config` on 1 device, and its step-0 members."""
    built = experiment.build_experiment(config, devices=jax.devices()[:1])
    return built, experiment.initial_members(built)


@pytest.mark.parametrize("name", optim.names())
def test_every_optimizer_builds_from_the_config_with_a_swept_learning_rate(name):
    """configs/digits.py with `optimizer.name=name` and `runs.sweep` over 2 learning rates
    builds (validated, nothing compiled): one engine of a (2 values, 1 seed) grid whose members
    hold their own rate in their optimizer state (`optimizers.with_values`)."""
    built, initial = _build(_config(name, LEARNING_RATES))
    assert built.engine.grid == (2, 1) and initial.alive.shape == (2, 1, 1)
    rates = initial.states[0].opt_state.hyperparams["learning_rate"]
    np.testing.assert_array_equal(rates, np.float32(LEARNING_RATES)[:, None])


def _train(config, grid_axes):
    """The config's members (built as the loop builds them, on 1 device) after NUM_STEPS steps
    of the digits in one dispatch: (host members, metrics). `grid_axes`: the axes of the
    chunk's values and seeds (a single run has none)."""
    built, initial = _build(config)
    engine = built.engine
    batches = _chunk(*digits_batches(NUM_STEPS, config.train.batch_size))  # [K, B, ...]
    batches = jax.tree.map(lambda x: np.expand_dims(x, grid_axes), batches)
    carry, metrics = engine.train(engine.put_members(initial), engine.put_chunk(batches))
    return engine.get_members(carry), jax.device_get(metrics)


def _alone(config):
    """The config's single run: NUM_STEPS steps of the digits by the plain jitted train step
    (as tests/test_sweep.py's runs made alone)."""
    built, initial = _build(config)
    step = jax.jit(make_train_step(built.model, built.txs[0], built.schedule))
    state = initial.states[0]
    for batch in digits_batches(NUM_STEPS, config.train.batch_size):
        state, _ = step(state, batch)
    return state


def _comparable(name, params):
    """The leaves whose values two programs that differ by float32 rounding must share. Not
    SOAP's matrices: their bases are eigenvectors of rank-deficient statistics (a batch's
    gradients), so within the null space eigh's basis is whatever rounding makes it, and Adam
    in that basis is not rotation-invariant (docs/conventions.md, SOAP's eigenbases). That is
    SOAP's early-step ambiguity (the authors' eigh has it too), not the loop's."""
    if name != "soap":
        return params
    return jax.tree.map(lambda x: x if x.ndim != 2 else np.float32(0), params)


@pytest.mark.parametrize("name", ALL)
def test_a_learning_rate_sweep_trains_vmapped_members_each_the_run_made_alone(name):
    """A 2-value learning-rate sweep is one program of 2 members: each holds its own rate in
    its optimizer state, both are finite and apart, and the larger rate's member is that rate's
    single run. They differ only in the order of float32 reductions (vmapped, and the grid's
    convolutions as matmuls, `cpu_conv`): tests/test_sweep.py's 1e-5 of each leaf's scale,
    while the two rates' members differ by far more (asserted)."""
    swept, metrics = _train(_config(name, LEARNING_RATES), grid_axes=1)  # [K, seeds, B, ...]
    assert swept.alive.shape == (len(LEARNING_RATES), 1, 1) and swept.alive.all()
    assert np.isfinite(metrics["loss"][:NUM_STEPS]).all()
    member = [jax.tree.map(lambda x, v=v: x[v, 0], swept.states[0]) for v in (0, 1)]
    for state, rate in zip(member, LEARNING_RATES, strict=True):
        assert int(state.step) == NUM_STEPS
        assert float(state.opt_state.hyperparams["learning_rate"]) == np.float32(rate)
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))
    assert float(members.relative_difference(member[0].params, member[1].params)) > 1e-3
    alone = _alone(_config(name, LEARNING_RATES[1:]))
    assert int(alone.step) == NUM_STEPS
    got, want = (_comparable(name, p) for p in (member[1].params, alone.params))
    assert float(members.relative_difference(got, want)) < 1e-5


# ---------------------------------------------------------------------------- slow: all of them

CNN = {"name": "cnn", "features": (8,), "dense_features": 16}


@SLOW
@pytest.mark.parametrize("name", optim.names())
def test_jit_and_pmap_over_4_devices_match_one_device(name):
    """3 steps of the optimizer (built by the config path, constant 1e-3) on the jit and pmap
    engines over 4 simulated devices equal the 1-device run up to the order of float32
    reductions: tests/test_engines.py's tolerance, with the same teeth (every tensor moved).
    SOAP: 2 steps (its first call only initialises the bases) and not its matrices
    (`_comparable`); after a third step their difference reaches every leaf."""
    model = models.create_model(CNN, NUM_CLASSES)
    section = {"name": name, "learning_rate": 1e-3, "schedule": "constant"}
    optimizer = optimizers.make_optimizer(section, 10)
    num_steps = NUM_STEPS if name == "soap" else 3
    runs = _run_all(model, digits_batches(num_steps, 32), (8, 8, 1), optimizer)
    one_engine, one_carry, _ = runs["one"]
    reference = one_engine.get_members(one_carry).states[0]
    initial = members.initial_members(model, [optimizer[0]], (8, 8, 1), (0,), {}, [None])
    moved = jax.tree.map(
        lambda a, b: np.max(np.abs(a - b)), reference.params, initial.states[0].params
    )
    assert min(jax.tree.leaves(moved)) > 1e-5  # 10 x ATOL
    for engine_name in ("jit", "pmap"):
        engine, carry, history = runs[engine_name]
        state = engine.get_members(carry).states[0]
        assert int(state.step) == num_steps and all(bool(h["finite"].all()) for h in history)
        for field in ("params", "opt_state"):
            got, want = (_comparable(name, getattr(s, field)) for s in (state, reference))
            _assert_trees_close(got, want, f"{engine_name} {field}")


# Schedule-Free's resume (with its evaluation point) is tests/test_schedule_free.py's.
RESUMED = [n for n in optim.names() if n != "schedule_free_adamw"]


@SLOW
@pytest.mark.parametrize("name", RESUMED)
def test_a_resumed_run_ends_bitwise_equal_to_the_uninterrupted_one(name, tmp_path):
    """tests/test_train.py's resume for each optimizer: stopped at step 5 (checkpoint), resumed
    from the orbax checkpoint to step 12, it ends with the uninterrupted run's params, optimizer
    state, step and rng bit for bit, and the same test accuracy."""
    config = tiny_config()
    config.optimizer.name = name
    result = train.train_and_evaluate(config, tmp_path / "uninterrupted")
    interrupted = train.train_and_evaluate(config, tmp_path / "resumed", stop_after_step=5)
    assert interrupted["interrupted"] is True and interrupted["step"] == 5
    resumed = train.train_and_evaluate(config, tmp_path / "resumed")
    (expected, _) = final_state(tmp_path / "uninterrupted", config)
    (actual, _) = final_state(tmp_path / "resumed", config)
    assert_trees_equal(actual, expected)
    assert resumed["test_accuracy"] == result["test_accuracy"]
