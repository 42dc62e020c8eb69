"""Diagnostics: Lanczos against the exact Hessian, per-layer statistics against numpy on the
optimizer state, and the one loop with diagnostics on (logged every N steps, and bitwise the
same parameters as with them off)."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

from adamlab import config_dict, optim
from adamlab.diagnostics import figures, hessian, layer_stats
from adamlab.training import curvature, engines, experiment, train

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- Hessian


@pytest.fixture(scope="module")
def logreg():
    """Logistic regression on 512 digits: loss(params), params (650 numbers), exact Hessian."""
    x, y = load_digits(return_X_y=True)
    x, y = jnp.asarray(x[:512] / 16.0, jnp.float32), jnp.asarray(y[:512])
    w = jax.random.normal(jax.random.key(0), (64, 10)) * 0.1
    params = {"kernel": w, "bias": jnp.zeros(10)}

    def loss(p):
        logits = x @ p["kernel"] + p["bias"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return loss, params, hessian.exact_hessian(loss, params)


def test_hvp_is_the_hessian_times_v(logreg):
    loss, params, exact = logreg
    hvp, n = hessian.make_hvp(loss, params)
    v = jax.random.normal(jax.random.key(1), (n,))
    np.testing.assert_allclose(hvp(v), exact @ np.asarray(v), rtol=1e-4, atol=1e-6)


def test_lanczos_top_eigenvalues_match_eigh(logreg):
    loss, params, exact = logreg
    hvp, n = hessian.make_hvp(loss, params)
    assert n == 650
    top = jax.jit(lambda k: hessian.lanczos(hvp, n, k, num_steps=60))(jax.random.key(2))
    expected = np.linalg.eigvalsh(exact.astype(np.float64))[::-1]
    # float32 HVPs: the top 3 of 650 within 1e-3 relative after 60 iterations.
    np.testing.assert_allclose(top.eigenvalues[:3], expected[:3], rtol=1e-3)


def test_preconditioned_sharpness_is_the_top_eigenvalue_of_p_inverse_h(logreg):
    loss, params, exact = logreg
    hvp, n = hessian.make_hvp(loss, params)
    diagonal = jnp.linspace(0.05, 2.0, n)  # Any positive P; Adam's comes from its state.
    operator = hessian.preconditioned_hvp(hvp, diagonal)
    top = jax.jit(lambda k: hessian.lanczos(operator, n, k, num_steps=60))(jax.random.key(3))
    p_inverse_h = exact.astype(np.float64) / np.asarray(diagonal, np.float64)[:, None]
    expected = np.max(np.linalg.eigvals(p_inverse_h).real)  # Not symmetric, real spectrum.
    np.testing.assert_allclose(top.eigenvalues[0], expected, rtol=1e-3)


def test_adam_preconditioner_is_bias_corrected():
    nu = {"a": jnp.full(3, 4e-6)}
    adam_state = optax.ScaleByAdamState(count=jnp.asarray(10), mu=nu, nu=nu)
    spec = layer_stats.AdamSpec(name="adam", b2=0.999, eps=1e-8)
    diagonal = curvature.preconditioner(spec, adam_state, nu)
    np.testing.assert_allclose(diagonal, np.sqrt(4e-6 / (1 - 0.999**10)) + 1e-8, rtol=1e-5)


def test_spectral_density_is_a_quadrature_of_the_spectrum(logreg):
    loss, params, exact = logreg
    hvp, n = hessian.make_hvp(loss, params)
    run = jax.jit(lambda k: hessian.spectral_density(hvp, n, k, num_probes=8, num_steps=40))
    slq = run(jax.random.key(4))
    np.testing.assert_allclose(np.sum(slq.weights, axis=1), 1.0, rtol=1e-4)
    # sum_j tau_j^2 theta_j = v^T H v for a unit probe: its mean estimates tr(H) / n.
    estimate = np.mean(np.sum(slq.weights * slq.eigenvalues, axis=1))
    np.testing.assert_allclose(estimate, np.trace(exact) / n, rtol=0.25)
    grid, density = hessian.density(slq)
    assert abs(np.trapezoid(density, grid) - 1.0) < 0.02


# ---------------------------------------------------------------------------- layer stats


def _stepped(tx, steps=3):
    """params, grads, updates and state after `steps` updates on fixed random gradients."""
    keys = jax.random.split(jax.random.key(5), 3)
    params = {"dense": {"kernel": jax.random.normal(keys[0], (6, 4)), "bias": jnp.zeros(4)}}
    state = tx.init(params)
    for i in range(steps):
        grads = jax.tree.map(lambda p, i=i: jnp.sin(p + i) * 10.0 ** (-i - 3), params)
        grads["dense"]["bias"] = grads["dense"]["bias"].at[:2].set(0.0)  # eps dominates there.
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params, grads, updates, state


def _expected_adam(nu, count, lr, b2=0.999, eps=1e-8):
    root = np.sqrt(np.asarray(nu, np.float64) / (1 - b2**count)).ravel()
    step = lr / (root + eps)
    return np.quantile(step, [0.05, 0.5, 0.95]), np.mean(eps > root)


@pytest.mark.parametrize("wrap", ["plain", "injected", "frozen"])
def test_adam_layer_stats_match_numpy(wrap):
    lr = 1e-3
    if wrap == "injected":
        tx = optim.inject_hyperparams(lambda eps: optim.adam(lr, eps=eps))(eps=1e-8)
    elif wrap == "frozen":
        labels = {"dense": {"kernel": "trained", "bias": "frozen"}}
        tx = optax.multi_transform(
            {"trained": optim.adam(lr), "frozen": optax.set_to_zero()}, labels
        )
    else:
        tx = optim.adam(lr)
    params, grads, updates, state = _stepped(tx)
    stats = layer_stats.make_layer_stats(layer_stats.AdamSpec.from_hparams("adam", {}, lr))
    values = jax.jit(stats)(grads, updates, params, state, jnp.float32(lr))
    for leaf in ("kernel", "bias"):
        p, g, u = (np.asarray(t["dense"][leaf]) for t in (params, grads, updates))
        name = f"dense/{leaf}"
        np.testing.assert_allclose(values[f"{name}/param_norm"], np.linalg.norm(p), rtol=1e-6)
        np.testing.assert_allclose(values[f"{name}/grad_norm"], np.linalg.norm(g), rtol=1e-6)
        np.testing.assert_allclose(values[f"{name}/update_norm"], np.linalg.norm(u), rtol=1e-6)
        ratio = np.linalg.norm(u) / np.linalg.norm(p) if np.linalg.norm(p) else np.nan
        if np.isfinite(ratio):
            np.testing.assert_allclose(values[f"{name}/update_param_ratio"], ratio, rtol=1e-6)
    adam = layer_stats.find_state(state, ("count", "mu", "nu"))
    leaves = ("kernel",) if wrap == "frozen" else ("kernel", "bias")
    for leaf in leaves:
        quantiles, eps_fraction = _expected_adam(adam.nu["dense"][leaf], int(adam.count), lr)
        got = [values[f"dense/{leaf}/step_q{q}"] for q in ("05", "50", "95")]
        np.testing.assert_allclose(got, quantiles, rtol=1e-4)
        np.testing.assert_allclose(values[f"dense/{leaf}/eps_fraction"], eps_fraction)
    if wrap == "frozen":  # No moments for the frozen leaf: its norms only.
        assert "dense/bias/eps_fraction" not in values
    else:  # Two of the bias's four gradients are always 0: v_hat = 0 < eps there.
        assert values["dense/bias/eps_fraction"] == 0.5


def test_amsgrad_and_radam_statistics():
    lr = 1e-3
    params, grads, updates, state = _stepped(optim.amsgrad(lr), steps=4)
    spec = layer_stats.AdamSpec.from_hparams("amsgrad", {}, lr)
    values = layer_stats.make_layer_stats(spec)(grads, updates, params, state, jnp.float32(lr))
    s = layer_stats.find_state(state, ("nu_max",))
    nu_hat = np.asarray(s.nu["dense"]["kernel"]) / (1 - 0.999 ** int(s.count))
    expected = np.mean(np.asarray(s.nu_max["dense"]["kernel"]) > nu_hat)
    assert 0 < expected  # Gradients shrink 10x a step: the old maximum holds.
    np.testing.assert_allclose(values["dense/kernel/amsgrad_max_active"], expected)

    params, grads, updates, state = _stepped(optim.radam(lr), steps=6)
    spec = layer_stats.AdamSpec.from_hparams("radam", {}, lr)
    values = layer_stats.make_layer_stats(spec)(grads, updates, params, state, jnp.float32(lr))
    t, b2 = 6, 0.999
    rho = 2 / (1 - b2) - 1 - 2 * t * b2**t / (1 - b2**t)
    # float32, as the optimizer computes it: rho_inf - (~rho_inf - rho) loses 3 digits.
    np.testing.assert_allclose(values["radam/rho"], rho, rtol=2e-3)
    assert values["radam/rectified"] == float(rho >= 5)  # t = 6: rho ~ 5.99, rectified.


def test_baselines_get_norms_only():
    params, grads, updates, state = _stepped(optax.sgd(0.1))
    spec = layer_stats.AdamSpec.from_hparams("sgd", {}, 0.1)
    values = layer_stats.make_layer_stats(spec)(grads, updates, params, state, jnp.float32(0.1))
    assert {k.rpartition("/")[2] for k in values} == set(layer_stats.NORMS)


# ---------------------------------------------------------------------------- the loop


def _tiny(layers_every: int | None, curvature_every: int | None):
    config = config_dict.load_config_file(ROOT / "configs" / "digits.py")
    config.model.update(name="mlp", hidden=(16,), dropout_rate=0.0)
    config.optimizer.warmup_steps = 2
    config.train.update(
        batch_size=32,
        num_steps=8,
        log_every_steps=4,
        eval_every_steps=8,
        checkpoint_every_steps=8,
        progress_bar=False,
        steps_per_dispatch=4,
        best_metric=None,
    )
    config.diagnostics.layer_stats_every_steps = layers_every
    config.diagnostics.curvature_every_steps = curvature_every
    config.diagnostics.curvature_examples = 64
    return config


@pytest.mark.parametrize("padded_chunks", [True, False])
def test_loop_logs_diagnostics_every_n_steps_and_leaves_training_unchanged(
    tmp_path, monkeypatch, padded_chunks
):
    """Also with chunks of exact length, each a scan of known length (what a GPU engine runs;
    forced here on the CPU), whose diagnostics step is the scan's last row."""
    if not padded_chunks:
        monkeypatch.setattr(engines, "PADDED_CHUNK_PLATFORMS", ())
    on = train.run(_tiny(2, 4), tmp_path / "on")
    off = train.run(_tiny(None, None), tmp_path / "off")
    # Bitwise: the plain steps are the same program, the logged step computes the same update.
    jax.tree.map(np.testing.assert_array_equal, on.params, off.params)
    records = [json.loads(line) for line in (tmp_path / "on" / "metrics.jsonl").open()]
    layers = [r for r in records if r["split"] == "layers"]
    assert [r["step"] for r in layers] == [2, 4, 6, 8]
    for name in ("Dense_0/kernel", "Dense_1/bias"):
        for stat in (*layer_stats.NORMS, *layer_stats.ADAM_STATS):
            assert f"{name}/{stat}" in layers[0]
    curvature = [r for r in records if r["split"] == "curvature"]
    assert [r["step"] for r in curvature] == [4, 8]
    assert all(r["sharpness"] > 0 and r["preconditioned_sharpness"] > 0 for r in curvature)
    off_records = (tmp_path / "off" / "metrics.jsonl").read_text()
    assert '"layers"' not in off_records and '"curvature"' not in off_records


def test_bad_diagnostics_fields_are_config_errors():
    config = _tiny(0, None)
    with pytest.raises(experiment.ConfigError, match="diagnostics.layer_stats_every_steps=0"):
        experiment.validate_config(config)
    config = _tiny(None, None)
    config.train.loss = "hinge"
    with pytest.raises(experiment.ConfigError, match="train.loss='hinge'"):
        experiment.validate_config(config)


# ---------------------------------------------------------------------------- figures


def _fake_run(path: pathlib.Path, optimizer: dict, quantity: str, values: list[float]):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"optimizer": optimizer}))
    lines = []
    for i, value in enumerate(values):
        step = 10 * (i + 1)
        lines.append({"step": step, "split": "curvature", quantity: value, "sharpness": value})
        lines.append(
            {
                "step": step,
                "split": "layers",
                "a/kernel/update_param_ratio": 1e-3 * (i + 1),
                "a/kernel/step_q05": 1e-4,
                "a/kernel/step_q50": 1e-3,
                "a/kernel/step_q95": 1e-2,
                "a/kernel/eps_fraction": 0.0,
            }  # fmt: skip
        )
    (path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_thresholds_and_the_plateau_summary(tmp_path):
    assert figures.threshold({"name": "sgd"}, 0.1) == ("sharpness", pytest.approx(20.0))
    assert figures.threshold({"name": "sgd", "momentum": 0.9}, 0.1)[1] == pytest.approx(38.0)
    adam = figures.threshold({"name": "adam", "b1": None}, 1e-3)
    assert adam == ("preconditioned_sharpness", pytest.approx(38_000.0))
    assert figures.threshold({"name": "rmsprop"}, 1e-3) is None
    _fake_run(tmp_path / "gd", {"name": "sgd", "learning_rate": 0.1}, "sharpness",
              [5, 10, 15, 19, 21, 20, 19.5, 20.5])  # fmt: skip
    summary = figures.stability_summary(tmp_path / "gd")
    assert summary["plateau"] == pytest.approx(20.25)  # Median of the second half.
    assert summary["threshold"] == pytest.approx(20.0) and summary["steps"] == (50, 80)


def test_diagnostics_command_writes_the_figures(tmp_path, capsys):
    from adamlab import cli

    adam = {"name": "adam", "learning_rate": 1e-3, "b1": 0.9}
    _fake_run(tmp_path / "a", adam, "preconditioned_sharpness", [1e3, 2e4, 4e4, 3.8e4])
    overlay = tmp_path / "overlay.png"
    code = cli.main(
        ["adamlab", "diagnostics", f"--workdir={tmp_path / 'a'}", f"--overlay={overlay}"]
    )
    assert code == 0
    names = ("layer_ratio_heatmap.png", "effective_step.png", "sharpness.png")
    assert all((tmp_path / "a" / n).stat().st_size > 0 for n in names)
    assert overlay.stat().st_size > 0
    assert "vs threshold 3.8e+04" in capsys.readouterr().out


@pytest.mark.slow
def test_a_grid_of_members_logs_each_members_diagnostics(tmp_path):
    config = _tiny(4, 4)
    config.train.num_steps = 4
    config.runs.seeds = (0, 1)
    config.runs.sweep = {"learning_rate": (1e-2, 3e-3)}
    train.run(config, tmp_path)
    member_dirs = sorted((tmp_path / "members").glob("**/metrics.jsonl"))
    assert len(member_dirs) == 4
    sharpness = set()
    for path in member_dirs:
        records = [json.loads(line) for line in path.open()]
        assert [r["step"] for r in records if r["split"] == "layers"] == [4]
        (curvature,) = [r for r in records if r["split"] == "curvature"]
        sharpness.add(curvature["sharpness"])
    assert len(sharpness) == 4  # Each member's own parameters, not the first one's.
