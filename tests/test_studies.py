"""The studies: scaling rules, Adam+L2 vs AdamW, baselines, and tiny versions of each report.

The study configs are tested here through their studies (cut to one epoch of logistic
regression and one seed); each group is one `train.run`.
"""

import json
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adamlab import config_dict, optim
from adamlab.experiments import report, studies
from adamlab.training import optimizers, run_io, train

PNG = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------- pure pieces


@pytest.mark.parametrize(
    "rule, batch_size, expected",
    [
        ("none", 256, 1e-2),
        ("linear", 256, 4e-2),
        ("sqrt", 256, 2e-2),
        ("linear", 16, 2.5e-3),
        ("sqrt", 16, 5e-3),
        ("linear", 64, 1e-2),
    ],
)
def test_scaled_learning_rate(rule, batch_size, expected):
    assert studies.scaled_learning_rate(1e-2, 64, batch_size, rule) == pytest.approx(expected)


def test_scaled_learning_rate_rejects_bad_input():
    with pytest.raises(ValueError, match="rule='cubic' is unknown; allowed: none, linear, sqrt"):
        studies.scaled_learning_rate(1e-2, 64, 128, "cubic")
    with pytest.raises(ValueError, match="batch_size=0 must be an int >= 1"):
        studies.scaled_learning_rate(1e-2, 64, 0, "linear")


def _tx(name: str, learning_rate: float, **fields) -> optax.GradientTransformation:
    section = {"name": name, "learning_rate": learning_rate, "schedule": "constant", **fields}
    return optimizers.make_optimizer(section, total_steps=100)[0]


def _adam_l2(learning_rate, l2):  # The weight-decay study's "adam_l2": optimizer.l2.
    return _tx("adam", learning_rate, l2=l2)


def _adamw(learning_rate, weight_decay):  # Its "adamw": optimizer.weight_decay.
    return _tx("adamw", learning_rate, weight_decay=weight_decay)


def _last_update(tx, grads_sequence, params):
    """The update of the last step, with the parameters held fixed (decay sees the same theta)."""
    state, update = tx.init(params), jax.jit(tx.update)
    for grads in grads_sequence:
        updates, state = update(grads, state, params)
    return updates


def test_l2_decay_is_divided_by_sqrt_v_but_adamw_decay_is_not():
    # Zero-mean gradients of very different scales c per coordinate: v_hat ~ c^2, m_hat ~ 0.
    c = jnp.array([10.0, 1.0, 0.1])
    theta = jnp.ones(3)
    grads = [c * (-1.0) ** t for t in range(60)]
    lr, lam = 0.1, 1e-3
    decay = {}
    for name, build in (("adam_l2", _adam_l2), ("adamw", _adamw)):
        with_decay = _last_update(build(lr, lam), grads, theta)
        without = _last_update(build(lr, 0.0), grads, theta)
        # Effective decay of the step, in units of AdamW's nominal lr * lambda * theta.
        decay[name] = np.asarray((without - with_decay) / (lr * lam * theta))
    np.testing.assert_allclose(decay["adamw"], 1.0, rtol=1e-4)  # The same for every weight.
    np.testing.assert_allclose(decay["adam_l2"] * np.asarray(c), 1.0, rtol=1e-2)  # 1/sqrt(v).
    assert decay["adam_l2"][2] / decay["adam_l2"][0] == pytest.approx(100.0, rel=2e-2)


def test_adam_l2_is_adam_on_the_gradient_of_the_penalised_loss():
    lam, lr = 0.1, 1e-2
    penalty = jax.grad(lambda p: lam / 2 * jnp.sum(p["w"] ** 2))  # (lambda / 2) |w|^2
    grads = {"w": jnp.array([0.5, 0.5, -0.2])}
    l2, adam = _adam_l2(lr, lam), optim.adam(lr)
    ours = reference = {"w": jnp.array([2.0, -1.0, 0.3])}
    ours_state, reference_state = l2.init(ours), adam.init(reference)
    for _ in range(5):  # Adam's moments carry the penalty from step to step.
        updates, ours_state = l2.update(grads, ours_state, ours)
        ours = optax.apply_updates(ours, updates)
        penalised = jax.tree.map(jnp.add, grads, penalty(reference))
        updates, reference_state = adam.update(penalised, reference_state, reference)
        reference = optax.apply_updates(reference, updates)
        np.testing.assert_allclose(ours["w"], reference["w"], rtol=1e-6)


def test_inverse_sqrt_schedule():
    section = {"name": "adam", "learning_rate": 0.3, "schedule": "inverse_sqrt"}
    schedule = optimizers.make_schedule(section, total_steps=100)
    np.testing.assert_allclose([schedule(0), schedule(3), schedule(99)], [0.3, 0.15, 0.03])
    with pytest.raises(ValueError, match="schedule='cyclic' is unknown; allowed: constant"):
        optimizers.make_schedule(section | {"schedule": "cyclic"}, 10)


def test_baseline_optimizers():
    # (The Kingma & Ba models, logreg and mlp, are tested in test_models.py.)
    with pytest.raises(ValueError, match="optimizer.name='adamz' is unknown; allowed: adam"):
        _tx("adamz", 0.1)
    # Kingma & Ba's sgd_nesterov is optax's Nesterov SGD with momentum 0.9: identical updates.
    g, p = {"w": jnp.array([1.0, -2.0])}, {"w": jnp.zeros(2)}
    ours = _tx("sgd", 0.1, implementation="optax", momentum=0.9, nesterov=True)
    ref = optax.sgd(0.1, momentum=0.9, nesterov=True)
    s1, s2 = ours.init(p), ref.init(p)
    for _ in range(3):
        (u1, s1), (u2, s2) = ours.update(g, s1, p), ref.update(g, s2, p)
    np.testing.assert_array_equal(u1["w"], u2["w"])


def test_epoch_losses_are_found_by_their_recorded_step():
    """Issue 27: after a resume a study's per-epoch losses were shifted (entry 0 held epoch 4).
    A curve that starts late (here at epoch 2 of 3, with an extra record at step 6 after the
    restore) still puts each loss at its epoch; an epoch with no record is NaN."""
    group = types.SimpleNamespace(train=types.SimpleNamespace(log_every_steps=4))
    row = {"optimizer": "adam", "seed": 0, "finite": True}
    loss = np.array([[[0.6, 0.5, 0.4]]])  # [values, seeds, T] at steps 6, 8, 12.
    curves = {"ours": {"train": (np.array([6, 8, 12]), {"loss": loss})}}
    result = train.RunsResult([row], [{}], curves, {}, 12, False, 12, 1.0, 1.0)
    (member,) = studies._member_rows(group, result)
    assert member["diverged"] is False
    np.testing.assert_array_equal(member["epoch_loss"], [np.nan, 0.5, 0.4])


# ---------------------------------------------------------------------------- tiny studies


def _tiny(name: str, **study_fields):
    """The shipped study config, cut to one epoch of logistic regression with one seed."""
    config = config_dict.load_config(name)
    config.model.name = "logreg"  # Compiles in a fraction of the CNN's time.
    config.train.num_epochs = 1.0
    config.train.progress_bar = False
    config.runs.seeds = (0,)
    config.study.update(study_fields)
    return config


def _groups(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_dir())


def _check_report(directory, *, rows: int, plots: tuple[str, ...]):
    for name in ("config.json", "results.csv", "results.json", "summary.md", *plots):
        assert (directory / name).is_file(), name
    for plot in plots:
        assert (directory / plot).read_bytes()[:8] == PNG
    csv_rows = report.read_csv(directory / "results.csv")
    assert len(csv_rows) == rows
    json_rows = json.loads((directory / "results.json").read_text())
    assert [len(r["epoch_loss"]) for r in json_rows] == [len(json_rows[0]["epoch_loss"])] * rows
    return csv_rows, (directory / "summary.md").read_text()


def test_study_names_their_configs():
    for name, config in studies.STUDIES.items():
        assert "study" in config_dict.load_config(config), name
    with pytest.raises(ValueError, match="study 'lr' is unknown; allowed: batch_size"):
        studies.run_study("lr", _tiny("study_schedules"), "unused")


def test_batch_size_study_report(tmp_path):
    config = _tiny(
        "study_batch_size", batch_sizes=(32, 64), rules=("none", "linear"), base_learning_rate=1e-2
    )
    config.runs.seeds = (3,)
    summary = studies.run_study("batch_size", config, tmp_path)
    assert _groups(tmp_path) == ["batch32", "batch64"]  # One program per batch size.
    rows, text = _check_report(tmp_path, rows=4, plots=("batch_size.png",))
    lrs = {(r["rule"], int(r["batch_size"])): float(r["learning_rate"]) for r in rows}
    expected = {("none", 32): 1e-2, ("none", 64): 1e-2, ("linear", 32): 5e-3, ("linear", 64): 1e-2}
    assert lrs == expected
    # The base batch size is the same run under both rules (trained once, not twice).
    assert json.loads((tmp_path / "batch64" / "config.json").read_text())["runs"]["sweep"] == {
        "learning_rate": [1e-2]
    }
    base = [r for r in rows if r["batch_size"] == "64"]
    assert base[0]["test_accuracy"] == base[1]["test_accuracy"]
    assert all(s["test_accuracy_mean"] > 0.5 for s in summary)  # 1 epoch of logreg on digits.
    assert "| rule | batch_size | learning_rate | diverged | n | final train loss |" in text
    assert "(n=1, no interval)" in text
    assert json.loads((tmp_path / "config.json").read_text())["runs"]["seeds"] == [3]


def test_schedules_study_report(tmp_path):
    config = _tiny("study_schedules", learning_rates=(1e-2,))
    config.lock()  # As the command line passes it.
    summary = studies.run_study("schedules", config, tmp_path)
    assert _groups(tmp_path) == ["constant", "warmup_cosine"]
    rows, text = _check_report(tmp_path, rows=2, plots=("schedules.png", "training_loss.png"))
    assert [r["schedule"] for r in rows] == ["constant", "warmup_cosine"]
    assert "| constant | 0.01 | 0 | 1 |" in text
    assert all(math.isfinite(s["final_train_loss_mean"]) for s in summary)


def test_weight_decay_study_report(tmp_path):
    config = _tiny("study_weight_decay", strengths=(0.0, 1.0))
    summary = studies.run_study("weight_decay", config, tmp_path)
    assert _groups(tmp_path) == ["adam", "adam_l2", "adamw"]
    _check_report(tmp_path, rows=4, plots=("weight_decay.png",))
    by = {(s["method"], s["strength"]): s for s in summary}
    # Strength 0 is plain Adam for both methods: one run.
    assert by["adam_l2", 0.0]["param_norm_mean"] == by["adamw", 0.0]["param_norm_mean"]
    # A strong L2 penalty through Adam shrinks the weights far more than AdamW's lr*lambda.
    assert by["adam_l2", 1.0]["param_norm_mean"] < by["adamw", 1.0]["param_norm_mean"]
    assert by["adamw", 1.0]["param_norm_mean"] < by["adamw", 0.0]["param_norm_mean"]
    with pytest.raises(ValueError, match="method 'sgdw' is unknown; allowed: adam_l2, adamw"):
        studies.run_study("weight_decay", _tiny("study_weight_decay", methods=("sgdw",)),
                          tmp_path)  # fmt: skip
    # Rerunning a finished study trains nothing: each group returns its saved result, and the
    # parameter norms come from the groups' last checkpoints.
    assert studies.run_study("weight_decay", config, tmp_path) == summary
    # Issue 27 item 5: a study asking for other settings (or another study) in its workdir is
    # refused before anything is written (config.json holds the whole study config).
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    with pytest.raises(run_io.ConfigMismatchError, match="study.strengths"):
        studies.run_study("weight_decay", _tiny("study_weight_decay", strengths=(1.0,)), tmp_path)
    with pytest.raises(run_io.ConfigMismatchError, match="study"):
        studies.run_study("schedules", _tiny("study_schedules", learning_rates=(1e-2,)), tmp_path)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def test_kingma_ba_study_tunes_then_runs_seeds(tmp_path):
    config = _tiny("kingma_ba_digits")
    config.runs.seeds = (0, 1)
    del config.study.models["mlp"]
    for name in ("sgd_nesterov", "adagrad", "rmsprop"):
        del config.study.optimizers[name]
    config.study.learning_rates.adam = (1e-3, 1e-1)
    summary = studies.run_study("kingma_ba", config, tmp_path)
    assert _groups(tmp_path) == ["logreg_adam", "tune_logreg_adam"]  # Tune, then every seed.
    rows, text = _check_report(tmp_path, rows=2 + 2, plots=("training_loss.png",))
    tune = [r for r in rows if r["phase"] == "tune"]
    final = [r for r in rows if r["phase"] == "final"]
    assert [(r["learning_rate"], r["seed"]) for r in tune] == [("0.001", "0"), ("0.1", "0")]
    best = min(tune, key=lambda r: float(r["validation_loss"]))
    assert best["learning_rate"] == "0.1"  # 1e-3 barely moves logistic regression in 1 epoch.
    assert [(r["learning_rate"], r["seed"]) for r in final] == [("0.1", "0"), ("0.1", "1")]
    # The final program repeats the chosen tuning run for the first seed.
    assert final[0]["test_accuracy"] == best["test_accuracy"]
    (group,) = [s for s in summary if s["phase"] == "final"]
    values = [float(r["test_accuracy"]) for r in final]
    mean, half = report.t_interval(values)
    assert (group["n"], group["test_accuracy_mean"], group["test_accuracy_half"]) == (2, mean, half)
    assert "| final | logreg | adam | 0.1 | 0 | 2 |" in text
