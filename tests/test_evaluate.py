"""`adamlab evaluate` / `evaluate_checkpoint`: restore a run's checkpoint, evaluate, write JSON."""

import json
import pathlib
import shutil

import numpy as np
import pytest

from adamlab import cli, config_dict
from adamlab.training import evaluate, run_io, train

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
    for key in ("loss", "accuracy", "precision", "recall", "f1", "count", "confusion"):
        assert result[key] == expected[key], key
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
    assert at_4["loss"] == lines[("validation", 4)]["loss"]
    assert at_4["count"] == 144  # 10% of digits' 1437 training images.


def test_best_is_the_best_ranked_checkpoint_not_the_latest(run, tmp_path):
    workdir, _ = run
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    config = run_io.read_config(copy)
    experiment = train.build_experiment(config)
    with train.make_checkpointer(copy, config) as checkpointer:
        state, _ = checkpointer.restore(train.abstract_state(config, experiment))
        worse = {"validation_accuracy": 0.0}  # A later checkpoint that ranks last.
        checkpointer.save(12, state, metrics=worse, extra={"data_start_step": 12}, force=True)
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
