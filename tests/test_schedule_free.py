"""Schedule-Free AdamW in the one loop: evaluated at its average x, resumed bitwise, swept.

Schedule-Free trains the params y (where gradients are taken) and is evaluated at x =
(y - (1 - b1) z) / b1, formed from y and its state (`Entry.eval_params`). The engine evaluates
there, BatchNorm's statistics are recomputed there (a tiny ResNet, on 1 device, pmap and jit
over 4), the loop says so (`result.json`'s `evaluated_at`) and exports x, `adamlab evaluate`
and `adamlab.restore` give x, and a run stopped and resumed from its orbax checkpoint ends
bitwise where the uninterrupted one does. The update rule itself is proven in
tests/test_optim_{parity,torch,paper,properties}.py.
"""

import json

import jax
import numpy as np
import optax
import pytest
from test_train import final_state, tiny_config

from adamlab import data, models, optim
from adamlab.training import engines, evaluate, members, optimizers, restore, steps, train

from helpers import assert_trees_equal, digits_batches

RESNET = {"name": "resnet", "stage_sizes": (1,), "num_filters": 4}
# Engines differ by the order of float32 reductions only (tests/test_engines.py's tolerance).
ATOL, RTOL = 1e-6, 1e-5


def _engine(name, devices, model, tx, eval_params):
    schedule = optax.constant_schedule(5e-2)
    return engines.Engine(name, model, [tx], schedule, 10, devices=devices, eval_params=eval_params)


@pytest.fixture(scope="module")
def resnet():
    """A tiny ResNet after 3 Schedule-Free AdamW steps on fixed random gradients (no train
    step to compile): (model, tx, host members, batches)."""
    model = models.create_model(RESNET, 10)
    tx = optim.schedule_free_adamw(5e-2)  # large steps: x and y apart after 3
    host = members.initial_members(model, [tx], (8, 8, 3), (0,), {}, [lambda _: tx])
    state, update = host.states[0], jax.jit(tx.update)
    params, opt_state = state.params, state.opt_state
    rng = np.random.default_rng(0)
    for _ in range(3):
        grads = jax.tree.map(lambda p: rng.standard_normal(p.shape).astype(p.dtype), params)
        updates, opt_state = update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    state = jax.device_get(state.replace(params=params, opt_state=opt_state))
    return model, tx, host.replace(states=(state,)), digits_batches(5, 32, channels=3)


def _manual(model, state, stats_batches, eval_batch):
    """x by the optimizer's function, BatchNorm's statistics run over `stats_batches` at x in
    train mode, then the summed loss at x: what the engine must compute."""
    x = optim.schedule_free_eval_params(state.opt_state, state.params)
    stats = state.batch_stats
    for batch in stats_batches:
        _, new = model.apply(
            {"params": x, "batch_stats": stats}, batch["image"], train=True, mutable=["batch_stats"]
        )
        stats = new["batch_stats"]
    logits = model.apply({"params": x, "batch_stats": stats}, eval_batch["image"], train=False)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, eval_batch["label"])
    return stats, float(np.sum(losses))


# 1 device in the default suite; pmap and jit over 4 compile a few seconds more each.
SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "engine_name,num_devices",
    [("jit", 1), pytest.param("pmap", 4, marks=SLOW), pytest.param("jit", 4, marks=SLOW)],
)
def test_engines_evaluate_at_x_with_batch_statistics_recomputed_there(
    resnet, engine_name, num_devices
):
    model, tx, host, batches = resnet
    point = optim.schedule_free_eval_params
    engine = _engine(engine_name, jax.devices()[:num_devices], model, tx, point)
    carry = engine.put_members(host)
    stats_batches, eval_batch = batches[3:5], dict(batches[0], mask=np.ones(32, bool))
    fresh = engine.recompute_batch_stats(carry, [engine.put_batch(b) for b in stats_batches])
    expected_stats, expected_loss = _manual(model, host.states[0], stats_batches, eval_batch)
    got = engine.get_members(fresh).states[0]
    jax.tree.map(
        lambda a, e: np.testing.assert_allclose(a, e, rtol=RTOL, atol=ATOL),
        got.batch_stats,
        expected_stats,
    )
    # The statistics at x are not y's (the check has teeth), and training's copy is unchanged.
    moved = jax.tree.map(
        lambda a, e: np.max(np.abs(a - e)), got.batch_stats, host.states[0].batch_stats
    )
    assert max(jax.tree.leaves(moved)) > 1e-3
    assert_trees_equal(engine.get_members(carry).states[0].batch_stats, host.states[0].batch_stats)
    sums = jax.device_get(engine.evaluate(fresh, engine.put_batch(eval_batch)))[0]
    assert float(sums["loss_sum"]) == pytest.approx(expected_loss, rel=RTOL)
    # At the params y (no evaluation point) the loss is far outside that tolerance: x is what
    # was evaluated.
    at_y = _engine(engine_name, jax.devices()[:num_devices], model, tx, None)
    y_sums = jax.device_get(at_y.evaluate(at_y.put_members(host), at_y.put_batch(eval_batch)))[0]
    assert abs(float(y_sums["loss_sum"]) - expected_loss) > 20 * RTOL * expected_loss


def _schedule_free_config(**train_overrides):
    config = tiny_config(**train_overrides)
    config.optimizer.name = "schedule_free_adamw"
    return config


@pytest.fixture(scope="module")
def run(tmp_path_factory):  # ~10 s of CPU: the tests that train are slow
    """One uninterrupted tiny Schedule-Free run on digits: (workdir, returned metrics)."""
    workdir = tmp_path_factory.mktemp("schedule_free")
    return workdir, train.train_and_evaluate(_schedule_free_config(), workdir)


def _test_loss_at(params, config, model):
    """The test split's mean loss of `params` (the CNN keeps no batch statistics)."""
    total, count = 0.0, 0
    for batch in data.eval_batches(config.data, split="test", global_batch_size=128):
        logits = model.apply({"params": params}, batch["image"], train=False)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        total += float(np.sum(np.where(batch["mask"], losses, 0.0)))
        count += int(np.sum(batch["mask"]))
    return total / count


@SLOW
def test_the_loop_evaluates_and_exports_x_and_says_so(run):
    workdir, result = run
    saved = json.loads((workdir / train.RESULT_FILE).read_text())
    assert saved["evaluated_at"] == "schedule_free_eval_params"
    (carry, _), config = final_state(workdir, _schedule_free_config()), _schedule_free_config()
    state = carry.states[0]
    x = optim.schedule_free_eval_params(state.opt_state, state.params)
    model = models.create_model(config.model, 10)
    assert result["test_loss"] == pytest.approx(_test_loss_at(x, config, model), rel=1e-5)
    assert abs(_test_loss_at(state.params, config, model) - result["test_loss"]) > 1e-4
    # `adamlab evaluate` and `adamlab.restore` take the same point.
    evaluated, _ = evaluate.evaluate_checkpoint(workdir, split="test")
    assert evaluated["loss"] == pytest.approx(result["test_loss"], rel=1e-6)
    restored = restore.restore(workdir)  # x to an ulp (the same formula, compiled elsewhere)
    same = lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-9)
    jax.tree.map(same, restored.variables["params"], x)


@SLOW  # two more runs; the loop's resume is in the default suite for Adam (test_train.py)
def test_a_resumed_run_ends_bitwise_equal_to_the_uninterrupted_one(run, tmp_path):
    workdir, result = run
    config = _schedule_free_config()
    interrupted = train.train_and_evaluate(config, tmp_path, stop_after_step=5)
    assert interrupted["interrupted"] is True and interrupted["step"] == 5
    resumed = train.train_and_evaluate(_schedule_free_config(), tmp_path)
    (expected, _), (actual, _) = final_state(workdir, config), final_state(tmp_path, config)
    assert_trees_equal(actual, expected)  # params y, opt_state (z, v, weights), step, rng
    assert resumed["test_loss"] == result["test_loss"]


@SLOW  # a grid of 4 members (~14 s of CPU)
def test_a_vmapped_sweep_of_ours_and_the_twin_is_the_run_made_alone(run, tmp_path):
    """runs.sweep over the learning rate, ours and optax's twin in lockstep: one program of 4
    members whose exported x's are the twin's bitwise (the same XLA program) and, for the run's
    own rate, the single run's x up to vmap's reduction order (tests/test_sweep.py: 1e-5)."""
    workdir, _ = run
    config = _schedule_free_config()
    config.runs.sweep = {"learning_rate": [1e-2, 3e-2]}
    config.runs.implementations = ("ours", "optax")
    result = train.run(config, tmp_path)
    assert all(row["parity"] == 0.0 for row in result.rows)
    assert result.evaluated_at == "schedule_free_eval_params"
    ours, twin = result.params["ours"], result.params["optax"]
    jax.tree.map(np.testing.assert_array_equal, ours, twin)
    (carry, _) = final_state(workdir, _schedule_free_config())
    alone = steps.evaluation_params(carry.states[0], optim.schedule_free_eval_params)
    jax.tree.map(
        lambda a, e: np.testing.assert_allclose(a[0, 0], e, rtol=1e-5, atol=1e-6), ours, alone
    )


def test_pmap_with_sharded_optimizer_state_is_refused_before_training(tmp_path):
    config = _schedule_free_config(engine="pmap", shard_optimizer=True)
    with pytest.raises(ValueError, match=r"train.shard_optimizer.*engine='jit'"):
        train.train_and_evaluate(config, tmp_path)


def test_schedule_free_in_parameter_groups_is_evaluated_at_x_on_its_own_leaves():
    """Schedule-Free inside optax.partition (`optimizer.groups`): the config's evaluation point
    is Schedule-Free's, whichever level names it, and x = (y - (1 - b1) z) / b1 is formed on
    each Schedule-Free group's leaves with its own b1 (z there, optax's MaskedNode elsewhere);
    an AdamW group's leaves are evaluated at their params."""
    params = {"kernel": np.full((3, 2), 0.5, np.float32), "bias": np.zeros(2, np.float32)}
    groups = ({"params": "bias", "name": "adamw", "b1": 0.9},)
    config = {
        "name": "schedule_free_adamw",
        "learning_rate": 0.1,
        "b1": 0.5,
        "groups": groups,
    }
    twice = dict(config, groups=({"params": "bias", "b1": 0.8},))  # two SF states
    aside = dict(config, name="adamw", b1=0.9, groups=({"params": "bias", **config},))
    for cfg, b1 in ((config, {"kernel": 0.5}), (twice, {"kernel": 0.5, "bias": 0.8})):
        assert optimizers.eval_params(cfg) is optim.schedule_free_eval_params
        tx, _ = optimizers.make_optimizer(cfg, 10)
        y, state = params, tx.init(params)
        for g in (1.0, -2.0, 0.5):
            grads = jax.tree.map(lambda p, g=g: np.full(p.shape, g, np.float32), params)
            updates, state = tx.update(grads, state, y)
            y = optax.apply_updates(y, updates)
        x = optimizers.eval_params(cfg)(state, y)
        states = [s for s in jax.tree.leaves(state, is_leaf=_is_sf) if _is_sf(s)]
        zs = {round(float(s.b1), 6): s.z for s in states}  # by each state's b1
        assert len(states) == len(set(b1.values()))
        for leaf in params:
            if leaf in b1:
                z = zs[b1[leaf]][leaf]
                expected = (y[leaf] - (1 - b1[leaf]) * z) / b1[leaf]
                np.testing.assert_allclose(x[leaf], expected, rtol=1e-6)
                assert not np.allclose(x[leaf], y[leaf])  # x and y apart after 3 steps
            else:
                np.testing.assert_array_equal(x[leaf], y[leaf])
    assert optimizers.eval_params(aside) is optim.schedule_free_eval_params  # a group's SF
    assert optimizers.eval_params(dict(config, name="adamw", groups=())) is None


def _is_sf(s):
    return isinstance(s, optim.ScheduleFreeState)


def test_engines_share_an_evaluation_program_only_at_the_same_evaluation_point():
    """`_share` keys the evaluation by the model, its options and the evaluation point: an
    Adam engine and a Schedule-Free one of one command (same model, options) compile their
    own, two Adam engines one."""
    model = models.create_model(RESNET, 10)
    schedule = optax.constant_schedule(1e-2)
    devices = jax.devices()[:1]

    def engine(tx, point, key):
        return engines.Engine(
            "jit", model, [tx], schedule, 10, devices=devices, eval_params=point, program_key=key
        )

    adam = engine(optim.adam(1e-2), None, "adam")
    again = engine(optim.adam(1e-2), None, "adam, another seed")
    sf = engine(optim.schedule_free_adamw(1e-2), optim.schedule_free_eval_params, "sf")
    assert adam._evaluate is again._evaluate
    assert sf._evaluate is not adam._evaluate
    assert sf._batch_stats is not adam._batch_stats
