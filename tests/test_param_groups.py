"""Parameter groups as config (`optimizer.groups`): each group equals optax.partition applied by
hand (no decay on biases and scales, a group's learning rate, Muon on the kernels with AdamW
elsewhere), frozen leaves as one label of the same partition, swept values reaching the groups
that inherit them, the errors, and a run from the command line resumed bitwise."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_train import final_state, tiny_config

from adamlab import cli, optim
from adamlab.training import experiment, optimizers, run_io, train, zero
from adamlab.training.optimizers import make_optimizer, make_schedule

from helpers import assert_trees_equal

STEPS = 10
# The CNN's parameter tree in miniature, with a LayerNorm's scale and bias beside it.
PARAMS = {
    "Conv_0": {"kernel": jnp.full((3, 3, 1, 4), 0.5), "bias": jnp.full((4,), 0.1)},
    "Dense_0": {"kernel": jnp.full((6, 5), -0.3), "bias": jnp.full((5,), 0.2)},
    "LayerNorm_0": {"scale": jnp.ones((5,)), "bias": jnp.zeros((5,))},
    "Dense_1": {"kernel": jnp.full((5, 3), 0.4), "bias": jnp.zeros((3,))},
}
BIASES_AND_SCALES = {  # The labels of {"params": "bias|scale"}, written by hand.
    "Conv_0": {"kernel": "rest", "bias": "group"},
    "Dense_0": {"kernel": "rest", "bias": "group"},
    "LayerNorm_0": {"scale": "group", "bias": "group"},
    "Dense_1": {"kernel": "rest", "bias": "group"},
}


def _config(**overrides):
    config = {
        "name": "adamw",
        "implementation": "ours",
        "learning_rate": 1e-2,
        "schedule": "warmup_cosine",
        "warmup_steps": 3,
        "weight_decay": 0.1,
    }
    return config | overrides


def _trajectories(*txs, steps=STEPS):
    """Each optimizer's updates over `steps` steps on gradients that differ per leaf and per
    step, in one jitted program (one compilation per test)."""

    def step(tx, carry, t):
        params, state = carry
        grads = jax.tree.map(
            lambda p: jnp.sin(p * (t + 1.0) + jnp.arange(p.size).reshape(p.shape)), params
        )
        updates, state = tx.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), updates

    def run(tx):
        carry = (PARAMS, tx.init(PARAMS))
        return jax.lax.scan(lambda c, t: step(tx, c, t), carry, jnp.arange(steps))[1]

    return jax.jit(lambda: tuple(run(tx) for tx in txs))()


def _by_hand(labels, **transforms):
    return optax.partition(transforms, labels)


def test_no_decay_on_biases_and_scales_is_partition_by_hand():
    groups = ({"params": "bias|scale", "weight_decay": 0.0},)
    tx, schedule = make_optimizer(_config(groups=groups), 50)
    expected = _by_hand(
        BIASES_AND_SCALES,
        rest=optim.adamw(schedule, weight_decay=0.1),
        group=optim.adamw(schedule, weight_decay=0.0),
    )
    # optax's own way to say it, one AdamW with a decay mask; and AdamW without decay.
    mask = jax.tree.map(lambda label: label == "rest", BIASES_AND_SCALES)
    masked = optax.adamw(schedule, weight_decay=0.1, mask=mask)
    actual, expected, masked, undecayed = _trajectories(
        tx, expected, masked, optim.adamw(schedule, weight_decay=0.0)
    )
    assert_trees_equal(actual, expected)  # The same transforms: bitwise.
    # optax's AdamW, ours in its convention: equal to float32 rounding (test_optim_parity's
    # bound for adamw over 500 steps is tighter than this over 10).
    jax.tree.map(
        lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-9), actual, masked
    )
    # The decay acted on the kernels and not on the biases.
    assert not np.allclose(actual["Dense_0"]["kernel"], undecayed["Dense_0"]["kernel"])
    np.testing.assert_array_equal(actual["Dense_0"]["bias"], undecayed["Dense_0"]["bias"])


def test_a_groups_learning_rate_has_the_top_levels_schedule_at_its_own_peak():
    """As a PyTorch scheduler scales every param group's own lr by one factor."""
    config = _config(name="adam", weight_decay=None)
    groups = ({"params": "^Dense_1/", "learning_rate": 0.1},)
    tx, schedule = make_optimizer(config | {"groups": groups}, 50)
    head_schedule = make_schedule(config | {"learning_rate": 0.1}, 50)
    for t in (0, 1, 3, 20, 49):  # 10x the top level's rate at every step (warmup, cosine).
        assert float(head_schedule(t)) == pytest.approx(10 * float(schedule(t)), rel=1e-6)
    labels = jax.tree.map(lambda _: "rest", PARAMS)
    labels["Dense_1"] = {"kernel": "head", "bias": "head"}
    expected = _by_hand(labels, rest=optim.adam(schedule), head=optim.adam(head_schedule))
    actual, expected = _trajectories(tx, expected)
    assert_trees_equal(actual, expected)


def test_muon_on_the_kernels_adamw_elsewhere_is_optax_partition_by_hand():
    """A group may change the optimizer (here the optax twins: optax.contrib.muon, optax.adamw).
    The 4-D conv kernel is in the Muon group, where Muon itself gives it AdamW (optax's
    default: the 2-D leaves are its matrices)."""
    config = _config(implementation="optax")
    groups = ({"params": "kernel", "name": "muon"},)
    tx, schedule = make_optimizer(config | {"groups": groups}, 50)
    labels = jax.tree.map(lambda label: "adamw" if label == "group" else "muon", BIASES_AND_SCALES)
    expected = _by_hand(
        labels,
        muon=optax.contrib.muon(schedule, weight_decay=0.1),  # Inherits the top level's decay.
        adamw=optax.adamw(schedule, weight_decay=0.1),
    )
    actual, expected, plain = _trajectories(tx, expected, optax.adamw(schedule, weight_decay=0.1))
    assert_trees_equal(actual, expected)
    # Muon acted on the dense kernels (orthogonalised updates, not AdamW's), not on the biases.
    assert not np.allclose(actual["Dense_0"]["kernel"], plain["Dense_0"]["kernel"])
    np.testing.assert_array_equal(actual["Dense_0"]["bias"], plain["Dense_0"]["bias"])


def test_frozen_leaves_are_one_label_of_the_same_partition():
    groups = ({"params": "bias|scale", "weight_decay": 0.0},)
    labels = optimizers.param_labels(["bias|scale"], frozen=["^Conv_0/"])(PARAMS)
    assert labels == {
        "Conv_0": {"kernel": "frozen", "bias": "frozen"},  # Frozen wins over its group.
        "Dense_0": {"kernel": "trained", "bias": "group0"},
        "LayerNorm_0": {"scale": "group0", "bias": "group0"},
        "Dense_1": {"kernel": "trained", "bias": "group0"},
    }
    tx, schedule = make_optimizer(_config(groups=groups), 50, frozen=("^Conv_0/",))
    hand_labels = dict(BIASES_AND_SCALES, Conv_0={"kernel": "frozen", "bias": "frozen"})
    expected = _by_hand(
        hand_labels,
        rest=optim.adamw(schedule, weight_decay=0.1),
        group=optim.adamw(schedule, weight_decay=0.0),
        frozen=optax.set_to_zero(),
    )
    actual, expected = _trajectories(tx, expected)
    assert_trees_equal(actual, expected)
    assert not np.any(actual["Conv_0"]["kernel"]) and not np.any(actual["Conv_0"]["bias"])
    # No moments for the frozen leaves: no [3, 3, 1, 4] array in the state.
    assert (3, 3, 1, 4) not in {np.shape(x) for x in jax.tree.leaves(tx.init(PARAMS))}


def test_groups_and_frozen_leaves_keep_zero_1_shardings():
    """ZeRO-1 places the state by optax.tree_map_params, whose init sees a placeholder without
    leaves (nothing to label or check): each group's moments sharded, none for the frozen."""
    groups = ({"params": "bias|scale", "weight_decay": 0.0},)
    tx, _ = make_optimizer(_config(groups=groups), 50, frozen=("^Dense_1/",))
    mesh = jax.sharding.Mesh(jax.devices()[:4], ("data",))
    shardings = zero.opt_state_shardings(tx, jax.eval_shape(tx.init, PARAMS), mesh).inner_states
    trained, group = (shardings[k].inner_state[0].mu for k in ("trained", "group0"))
    P = jax.sharding.PartitionSpec
    assert trained["Conv_0"]["kernel"].spec == P(None, None, None, "data")  # 4 output channels
    assert group["Conv_0"]["bias"].spec == P("data")
    assert group["LayerNorm_0"]["scale"].spec == P()  # 5 is not divisible by 4: replicated
    assert trained["Conv_0"]["bias"] == group["Conv_0"]["kernel"] == optax.MaskedNode()
    assert trained["Dense_1"]["kernel"] == group["Dense_1"]["bias"] == optax.MaskedNode()


def test_swept_values_reach_the_groups_that_inherit_them():
    """Sweeping a field sweeps the top level and every group that does not set it; a group's
    own value stays. vmapped over two members (as one program trains them), each equals the
    optimizer built with its values in the config."""
    groups = ({"params": "bias|scale", "weight_decay": 0.0}, {"params": "^Dense_1/kernel"})
    config = _config(groups=groups)
    swept = {"learning_rate": (2.0**-6, 2.0**-4), "weight_decay": (0.25, 0.5)}
    tx, _ = make_optimizer(config, 50, swept=tuple(swept))
    plain = [make_optimizer(config | {k: v[i] for k, v in swept.items()}, 50)[0] for i in (0, 1)]
    members = jax.vmap(lambda lr, wd: _trajectories(
        optimizers.with_values(tx, {"learning_rate": lr, "weight_decay": wd}))[0]
    )(*(jnp.asarray(v, jnp.float32) for v in swept.values()))  # fmt: skip
    for i, expected in enumerate(_trajectories(*plain)):
        # A traced hyperparameter vs a constant folded by XLA: float32 rounding, as
        # test_optimizers' swept-vs-plain test allows.
        jax.tree.map(
            lambda a, e, i=i: np.testing.assert_allclose(a[i], e, rtol=1e-6, atol=1e-9),
            members,
            expected,
        )
    # The no-decay group kept weight_decay=0: at step 1 (params still the initial ones after
    # the warmup's zero step) its update per unit of learning rate is the members' same Adam
    # direction, where a decay of 0.25 vs 0.5 would add 0.05 vs 0.1 (0.2 * wd).
    per_rate = [members["Dense_0"]["bias"][i, 1] / swept["learning_rate"][i] for i in (0, 1)]
    np.testing.assert_allclose(per_rate[0], per_rate[1], rtol=1e-5)
    assert np.all(per_rate[0] != 0)


def test_a_group_that_cannot_sweep_an_inherited_field_is_named():
    groups = ({"params": "kernel", "name": "muon"},)
    match = r"b2 cannot be swept in one program for muon \(optimizer.groups\[0\]\); sweepable: "
    with pytest.raises(ValueError, match=match + "optimizer.learning_rate"):
        make_optimizer(_config(groups=groups), 50, swept=("b2",))
    # A group that sets the field (None: its optimizer's default) does not take the swept one.
    groups = ({"params": "kernel", "name": "muon", "b2": None},)
    tx, _ = make_optimizer(_config(groups=groups), 50, swept=("b2",))
    assert optimizers.with_values(tx, {"b2": 0.9}).init(PARAMS) is not None


@pytest.mark.parametrize(
    "groups,frozen,match",
    [
        (({"params": "bias$|scales"}, {"params": "^Dense_9/"}), (),
         r"optimizer.groups\[1\].params='\^Dense_9/' matches no parameter; a group's regex must "
         r"match \(re.search\) one of the parameter paths: Conv_0/bias, Conv_0/kernel, "),
        (({"params": "bias"}, {"params": "^Dense_1/"}), (),
         r"optimizer.groups\[0\].params='bias' and optimizer.groups\[1\].params='\^Dense_1/' "
         r"both match the parameter 'Dense_1/bias'; a parameter belongs to one group at most"),
        ((), ("^Conv_9",), r"init.frozen pattern '\^Conv_9' matches no parameter"),
    ],
)  # fmt: skip
def test_a_regex_matching_nothing_or_two_groups_matching_one_parameter_is_refused(
    groups, frozen, match
):
    tx, _ = make_optimizer(_config(groups=groups), 50, frozen=frozen)
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(tx.init, PARAMS)


@pytest.mark.parametrize(
    "groups,match",
    [
        ("bias", r"optimizer.groups='bias' must be a tuple of groups, each a dict \{'params'"),
        (("bias",), r"optimizer.groups\[0\]='bias' must be a dict \{'params': regex"),
        (({"weight_decay": 0.0},), r"optimizer.groups\[0\].params=None must be a dict"),
        (({"params": "(bias"},), r"optimizer.groups\[0\].params='\(bias' is not a regex"),
        (({"params": "bias", "implementation": "optax"},),
         r"groups\[0\].implementation='optax' cannot be set in a group: it is the run's"),
        (({"params": "bias", "learning_rate": -1.0},),
         r"optimizer.groups\[0\].learning_rate=-1.0 must be in \(0, inf\)"),
        (({"params": "bias", "name": "sgdx"},), r"optimizer.groups\[0\].name='sgdx' is unknown"),
        (({"params": "bias", "b1": 1.0},),
         r"optimizer.groups\[0\] \(params='bias'; .*\): adamw: b1 must be in \[0, 1\), got 1.0"),
        (({"params": "kernel", "name": "muon", "b2": 0.9},),
         r"optimizer.groups\[0\] \(params='kernel'; it inherits every field it does not set, "
         r"None: its optimizer's default\): muon got unknown hyperparameter\(s\) b2"),
    ],
)  # fmt: skip
def test_a_bad_group_is_one_error_naming_it_before_anything_runs(groups, match):
    with pytest.raises(ValueError, match=match):
        make_optimizer(_config(groups=groups), 50)


def test_a_run_refuses_groups_matching_nothing_before_training(tmp_path):
    """The regexes are checked on the model's abstract parameters when the config is."""
    config = tiny_config()
    config.optimizer.groups = ({"params": "^head/"},)
    with pytest.raises(experiment.ConfigError, match=r"matches no parameter; .* Conv_0/bias, "
                       r"Conv_0/kernel, Dense_0/bias, Dense_0/kernel, Dense_1/bias"):  # fmt: skip
        train.train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    config.optimizer.groups = ({"params": "bias"},)
    config.diagnostics.layer_stats_every_steps = 4
    with pytest.raises(experiment.ConfigError, match="layer_stats_every_steps=4 is invalid: rea"):
        experiment.validate_config(config)
    config.diagnostics.layer_stats_every_steps = None
    config.diagnostics.curvature_every_steps = 4
    with pytest.raises(experiment.ConfigError, match="preconditioned=True is invalid: needs one"):
        experiment.validate_config(config)
    config.diagnostics.preconditioned = False  # The plain Hessian needs no optimizer state.
    assert experiment.validate_config(config) == 12


GROUPS = (
    '({"params": "bias", "weight_decay": 0.0}, '
    '{"params": "^Dense_1/kernel", "learning_rate": 0.03})'
)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """`adamlab train --config.optimizer.groups=...` (a tuple of dicts as a Python literal) of
    6 steps: (workdir, its saved config, its stdout)."""
    workdir = tmp_path_factory.mktemp("groups") / "run"
    args = ["adamlab", "train", "--config=digits", f"--workdir={workdir}",
            "--config.model.features=(8,)", "--config.model.dense_features=16",
            "--config.optimizer.name=adamw", "--config.optimizer.weight_decay=0.1",
            "--config.optimizer.learning_rate=0.01", "--config.optimizer.warmup_steps=2",
            f"--config.optimizer.groups={GROUPS}", "--config.train.num_steps=6",
            "--config.train.batch_size=32", "--config.train.eval_batch_size=128",
            "--config.train.log_every_steps=3", "--config.train.eval_every_steps=3",
            "--config.train.checkpoint_every_steps=3",
            "--config.train.progress_bar=False"]  # fmt: skip
    assert cli.main(args) == cli.EXIT_OK
    return workdir, run_io.read_config(workdir)


def test_groups_from_the_command_line_train_each_group(cli_run):
    workdir, config = cli_run
    assert run_io.read_metrics(workdir, "test")[-1]["step"] == 6
    assert optimizers.groups_of(config.optimizer) == (  # config.json: a list of dicts
        {"params": "bias", "weight_decay": 0.0},
        {"params": "^Dense_1/kernel", "learning_rate": 0.03},
    )
    state = final_state(workdir, config)[0].states[0]
    inner = state.opt_state.inner_states
    assert sorted(inner) == ["group0", "group1", "trained"]
    # Each group holds Adam's moments of its own leaves only.
    moments = lambda label: {
        optimizers.path_of(p) for p, _ in jax.tree_util.tree_leaves_with_path(inner[label][0][0].mu)
    }  # fmt: skip
    assert moments("group0") == {"Conv_0/bias", "Dense_0/bias", "Dense_1/bias"}
    assert moments("group1") == {"Dense_1/kernel"}
    assert moments("trained") == {"Conv_0/kernel", "Dense_0/kernel"}


@pytest.mark.slow  # Two more tiny runs (~10 s on 2 cores).
def test_groups_resume_bitwise(cli_run, tmp_path):
    workdir, config = cli_run
    assert train.train_and_evaluate(config, tmp_path, stop_after_step=4)["interrupted"]
    assert train.train_and_evaluate(config, tmp_path)["step"] == 6
    (expected, _), (actual, _) = final_state(workdir, config), final_state(tmp_path, config)
    assert_trees_equal(actual, expected)  # params, opt_state of every group, step, rng
