"""`adamlab evaluate` / `evaluate_checkpoint` (restore a run's checkpoint, evaluate, write JSON)
and `restore` (a saved run's config, model and variables, for a notebook)."""

import errno
import json
import os
import pathlib
import shutil

import jax
import numpy as np
import pytest

from adamlab import cli, config_dict, data
from adamlab.training import checkpoint, evaluate, experiment, optimizers, restore, run_io, train

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run: checkpoints at steps 4 and 8, validation at both, test at 8."""
    config = config_dict.load_config_file(ROOT / "configs" / "digits.py")
    config.model.features = (8,)
    config.model.dense_features = 16
    config.optimizer.learning_rate = 1e-2
    config.optimizer.warmup_steps = 1
    config.train.update(
        batch_size=32,
        eval_batch_size=64,
        num_steps=8,
        log_every_steps=4,
        eval_every_steps=4,
        checkpoint_every_steps=4,
        progress_bar=False,
    )
    workdir = tmp_path_factory.mktemp("run")
    train.train_and_evaluate(config, workdir)
    lines = {(r["split"], r["step"]): r for r in run_io.read_metrics(workdir)}
    return workdir, lines


def test_latest_checkpoint_reproduces_the_final_test_metrics(run):
    workdir, lines = run
    result, path = evaluate.evaluate_checkpoint(workdir)
    assert path == workdir / "eval_test_8.json"
    assert json.loads(path.read_text()) == result
    assert result["step"] == 8 and result["split"] == "test"
    expected = lines[("test", 8)]
    # Counts and what derives from them are exact; the loss is a float32 sum, and evaluation
    # runs on one device (training's eval on 4 sums per device first): equal to rounding.
    for key in ("accuracy", "precision", "recall", "f1", "count", "confusion"):
        assert result[key] == expected[key], key
    assert result["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    confusion = np.array(result["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == 360
    assert result["accuracy"] == np.trace(confusion) / 360


def test_best_checkpoint_and_a_step_on_the_validation_split(run):
    workdir, lines = run
    best, _ = evaluate.evaluate_checkpoint(workdir, checkpoint="best", split="validation")
    validation = {step: lines[("validation", step)]["accuracy"] for step in (4, 8)}
    assert best["accuracy"] == validation[best["step"]] == max(validation.values())
    at_4, path = evaluate.evaluate_checkpoint(workdir, checkpoint=4, split="validation")
    assert path.name == "eval_validation_4.json"
    assert at_4["accuracy"] == lines[("validation", 4)]["accuracy"]
    assert at_4["loss"] == pytest.approx(lines[("validation", 4)]["loss"], rel=1e-6)
    assert at_4["count"] == 144  # 10% of digits' 1437 training images.


def test_best_is_the_best_ranked_checkpoint_not_the_latest(run, tmp_path):
    workdir, _ = run
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    config = run_io.read_config(copy)
    built = experiment.build_experiment(config)
    with experiment.make_checkpointer(copy, config) as checkpointer:
        carry, _ = checkpointer.restore(experiment.abstract_members(built))
        worse = {"validation_accuracy": 0.0}  # A later checkpoint that ranks last.
        checkpointer.save(12, carry, metrics=worse, extra={"data_start_step": 12}, force=True)
    latest, _ = evaluate.evaluate_checkpoint(copy, checkpoint="latest", split="validation")
    best, _ = evaluate.evaluate_checkpoint(copy, checkpoint="best", split="validation")
    assert (latest["step"], best["step"]) == (12, 8)


def test_unknown_step_and_split_are_refused(run):
    workdir, _ = run
    with pytest.raises(evaluate.NoCheckpointError, match=r"step 5 .*available steps: \[4, 8\]"):
        evaluate.evaluate_checkpoint(workdir, checkpoint=5)
    with pytest.raises(ValueError, match="test, validation, train"):
        evaluate.evaluate_checkpoint(workdir, split="dev")


def test_workdir_without_checkpoints_or_config_is_a_clear_error(run, tmp_path):
    workdir, _ = run
    (tmp_path / "config.json").write_text((workdir / "config.json").read_text())
    with pytest.raises(evaluate.NoCheckpointError, match="No checkpoint in .*steps: none"):
        evaluate.evaluate_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a run workdir"):
        evaluate.evaluate_checkpoint(tmp_path / "nothing")


def test_cli_evaluate_prints_metrics_and_writes_json(run, capsys, tmp_path):
    workdir, lines = run
    args = ["adamlab", "evaluate", f"--workdir={workdir}", "--checkpoint=4", "--split=validation"]
    assert cli.main(args) == cli.EXIT_OK
    out = capsys.readouterr().out
    expected = lines[("validation", 4)]
    assert f"accuracy   {expected['accuracy']:.4f}" in out
    assert "f1" in out and "confusion [true, predicted]" in out
    assert (workdir / "eval_validation_4.json").is_file()

    assert cli.main(["adamlab", "evaluate", f"--workdir={tmp_path}"]) == cli.EXIT_USAGE
    assert "is not a run workdir" in capsys.readouterr().err
    assert cli.main(["adamlab", "evaluate", f"--workdir={workdir}", "--checkpoint=x"]) == 2
    assert "latest, best or a step number" in capsys.readouterr().err


def _test_accuracy(restored) -> float:
    """Test accuracy of a restored run computed with its own model.apply, outside adamlab."""
    apply = jax.jit(lambda variables, x: restored.model.apply(variables, x, train=False))
    correct = count = 0
    batches = data.eval_batches(restored.config.data, split="test", global_batch_size=128)
    for batch in batches:
        predicted = np.argmax(apply(restored.variables, batch["image"]), axis=-1)
        correct += int(np.sum((predicted == batch["label"]) & batch["mask"]))
        count += int(np.sum(batch["mask"]))
    assert count == 360
    return correct / count


def test_restore_reproduces_the_runs_test_accuracy_with_model_apply(run):
    workdir, lines = run
    latest = restore.restore(workdir)
    assert latest.step == 8 and latest.implementation == "ours" and latest.opt_state is None
    assert latest.config.to_dict() == run_io.read_config(workdir).to_dict()
    assert set(latest.variables) == {"params"} and latest.variables["params"] is latest.params
    assert _test_accuracy(latest) == lines[("test", 8)]["accuracy"]  # The run's own number.

    best = restore.restore(workdir, "best")
    validation = {step: lines[("validation", step)]["accuracy"] for step in (4, 8)}
    assert validation[best.step] == max(validation.values())
    evaluated, _ = evaluate.evaluate_checkpoint(workdir, checkpoint="best")
    assert _test_accuracy(best) == evaluated["accuracy"]


def test_restore_returns_the_optimizer_state_when_asked(run):
    workdir, _ = run
    restored = restore.restore(workdir, 4, optimizer_state=True)
    assert restored.step == 4
    tx, _ = optimizers.make_optimizer(restored.config.optimizer, 8)
    expected = jax.eval_shape(tx.init, restored.params)
    assert jax.tree.structure(restored.opt_state) == jax.tree.structure(expected)
    for leaf, spec in zip(jax.tree.leaves(restored.opt_state), jax.tree.leaves(expected),
                          strict=True):  # fmt: skip
        assert np.shape(leaf) == spec.shape and np.asarray(leaf).dtype == spec.dtype
    # Four steps of Adam: the moments are no longer their zero initialisation.
    assert any(np.abs(np.asarray(x)).max() > 0 for x in jax.tree.leaves(restored.opt_state))
    with pytest.raises(ValueError, match="implementation='optax': the run trained ours"):
        restore.restore(workdir, implementation="optax")


def test_format_metrics_shows_scalars_and_confusion():
    text = evaluate.format_metrics(
        {
            "split": "test",
            "step": 3,
            "loss": 0.5,
            "accuracy": 0.75,
            "count": 4,
            "confusion": [[2, 0], [1, 1]],
        }
    )
    assert text.splitlines() == [
        "test @ step 3",
        "  loss       0.5000",
        "  accuracy   0.7500",
        "  count      4",
        "  confusion [true, predicted]:",
        "     2 0",
        "     1 1",
    ]


def test_sweep_and_compare_never_write_into_a_training_run(run, capsys):
    """Issue 15, item 6: a bad sweep spec or implementation, and even a valid sweep, pointed at
    a training run's workdir leave its config.json as it was (exit 2, nothing written)."""
    workdir, _ = run
    before = (workdir / run_io.CONFIG_FILE).read_bytes()
    for args in (
        ["--sweep", "optimizer.b1=0.9,1.5"],
        ["--sweep", "optimizer.learning_rate=1e-3,1e-2", "--implementations", "foo"],
        ["--sweep", "optimizer.learning_rate=1e-3,1e-2", "--config.train.num_steps=30"],
    ):
        code = cli.main(
            ["adamlab", "sweep", "--config", "digits", "--workdir", str(workdir)] + args
        )
        assert code == cli.EXIT_USAGE, args
    assert (workdir / run_io.CONFIG_FILE).read_bytes() == before
    assert "holds a training run" in capsys.readouterr().err


def test_evaluate_names_what_the_run_lacks(tmp_path, capsys):
    """Issue 15, smaller items: --split validation on a run without a validation split, and
    --checkpoint best on a run that ranks no checkpoint, are one-line errors (exit 2)."""
    config = config_dict.load_config_file(ROOT / "configs" / "digits.py")
    config.model.features = (8,)
    config.model.dense_features = 16
    config.data.validation_fraction = 0.0
    config.train.update(best_metric=None, num_steps=2, batch_size=32, progress_bar=False)
    config.optimizer.update(schedule="constant", warmup_steps=0)
    train.train_and_evaluate(config, tmp_path)
    base = ["adamlab", "evaluate", "--workdir", str(tmp_path)]
    assert cli.main([*base, "--split", "validation"]) == cli.EXIT_USAGE
    assert "no validation split" in capsys.readouterr().err
    assert cli.main([*base, "--checkpoint", "best"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "best" in err and "Traceback" not in err
    assert cli.main(base) == cli.EXIT_OK


def _delete_once_resolved(monkeypatch, workdir):
    """The trainer's retention deleting the step a reader has just resolved (issue 27.6)."""
    resolve = checkpoint.Checkpointer.resolve_step
    deleted = []

    def resolve_then_delete(self, step):
        resolved = resolve(self, step)
        if not deleted:
            deleted.append(resolved)
            shutil.rmtree(workdir / run_io.CHECKPOINT_DIR / str(resolved))
        return resolved

    monkeypatch.setattr(checkpoint.Checkpointer, "resolve_step", resolve_then_delete)
    return deleted


def test_readers_racing_the_trainers_retention(run, tmp_path, monkeypatch, capsys):
    """Issue 27.6: `evaluate --checkpoint latest` and `adamlab.restore` take the newest step
    that still exists; a step asked for by number that vanishes is one line naming it."""
    workdir, lines = run
    for name in ("evaluate", "restore", "by_number"):
        shutil.copytree(workdir, tmp_path / name)
    deleted = _delete_once_resolved(monkeypatch, tmp_path / "evaluate")
    result, _ = evaluate.evaluate_checkpoint(tmp_path / "evaluate", split="validation")
    assert deleted == [8] and result["step"] == 4
    assert result["accuracy"] == lines[("validation", 4)]["accuracy"]

    deleted = _delete_once_resolved(monkeypatch, tmp_path / "restore")
    assert restore.restore(tmp_path / "restore").step == 4 and deleted == [8]

    deleted = _delete_once_resolved(monkeypatch, tmp_path / "by_number")
    args = ["adamlab", "evaluate", f"--workdir={tmp_path / 'by_number'}", "--checkpoint=8"]
    assert cli.main(args) == cli.EXIT_USAGE and deleted == [8]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checkpoint step 8 in" in err and "vanished" in err


def test_a_read_only_run_directory_is_evaluated_without_claiming_a_write(
    run, monkeypatch, capsys, caplog
):
    """Issue 27.8: the metrics are printed, the warning says the file was not written, and
    nothing claims "wrote"."""
    workdir, lines = run

    def read_only(path, data):
        raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(run_io, "write_json", read_only)
    args = ["adamlab", "evaluate", f"--workdir={workdir}", "--checkpoint=4", "--split=validation"]
    assert cli.main(args) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert f"accuracy   {lines[('validation', 4)]['accuracy']:.4f}" in out and "wrote" not in out
    assert any("could not write" in r.getMessage() for r in caplog.records)
    assert evaluate.evaluate_checkpoint(workdir, checkpoint=4)[1] is None
