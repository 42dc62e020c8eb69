"""Transfer as config: the study's pretrain run, loaded / re-initialised / frozen leaves, report.

The transfer study pretrains a tiny CNN on digits 0-4, then fine-tunes on 5-7 through the
`init` section: "frozen" (backbone frozen, new head) and "full" (new head). The MNIST ->
Fashion-MNIST config runs for 2 steps on TFDS mock data.
"""

import dataclasses
import logging

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from adamlab import config_dict
from adamlab.experiments import report, studies
from adamlab.training import checkpoint, experiment, restore, run_io, transfer

BACKBONE = ("Conv_0", "Dense_0")  # The tiny CNN below: one conv block, dense, then Dense_1.
TINY_CNN = {"features": (4,), "dense_features": 8}


def _tree_equal(a, b) -> bool:
    same = jax.tree.map(lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)), a, b)
    return all(jax.tree.leaves(same))


def _count(tree) -> int:
    return sum(np.size(x) for x in jax.tree.leaves(tree))


def _tiny(name: str):
    config = config_dict.load_config(name)
    config.model.update(TINY_CNN)
    config.train.progress_bar = False
    config.runs.seeds = (0,)
    return config


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The transfer study on digits: pretrain 4 epochs on 0-4, fine-tune 1 epoch on 5-7."""
    config = _tiny("transfer_digits")
    config.data.classes = (5, 6, 7)  # 3 target classes: the new head differs from the old (5).
    config.study.pretrain_epochs = 4.0
    config.train.num_epochs = 1.0
    config.study.modes = ("frozen", "full")
    directory = tmp_path_factory.mktemp("transfer")
    logs = []  # What the runs log about the init (loaded, re-initialised, frozen leaves).
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: logs.append(record.getMessage())
    root = logging.getLogger()
    level, _ = root.level, root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        summary = studies.run_study("transfer", config, directory)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    pretrained = restore.restore(directory / "pretrain", "latest").params  # A single run.
    return config, directory, summary, pretrained, logs


def _final(directory, mode: str):
    """A fine-tune group's final parameters (one seed: a single run)."""
    return restore.restore(directory / mode, "latest").params


def test_pretrain_run_learned_the_source_task(study):
    _, directory, summary, pretrained, _ = study
    (pretrain,) = [s for s in summary if s["mode"] == "pretrain"]
    assert pretrain["test_accuracy_mean"] > 0.6  # 5 classes (chance 0.2), 4 epochs.
    assert pretrained["Dense_1"]["kernel"].shape == (8, 5)  # One member: no grid axes.


def test_loaded_leaves_equal_the_pretrained_ones_at_step_0_and_the_head_is_new(study):
    _, directory, _, source, _ = study
    config = run_io.read_config(directory / "full")  # The group config as trained.
    assert tuple(config.init.dont_load) == ("^Dense_1/",)
    built = experiment.build_experiment(config)
    fresh = experiment.initial_members(built).states[0].params
    merge = lambda seed, params: transfer.merge_params(params, source, config.init)
    start = experiment.initial_members(built, merge).states[0].params
    assert _tree_equal({k: start[k] for k in BACKBONE}, {k: source[k] for k in BACKBONE})
    assert _tree_equal(start["Dense_1"], fresh["Dense_1"])  # The seed's fresh head...
    assert start["Dense_1"]["kernel"].shape == (8, 3)  # ...for the 3 target classes.
    assert source["Dense_1"]["kernel"].shape == (8, 5)


def test_frozen_backbone_is_bitwise_unchanged_and_full_changes_it(study):
    _, directory, _, source, _ = study
    frozen, full = _final(directory, "frozen"), _final(directory, "full")
    for name in BACKBONE:
        assert _tree_equal(frozen[name], source[name]), name
        assert not _tree_equal(full[name], source[name]), name
    assert not _tree_equal(frozen["Dense_1"], full["Dense_1"])  # The head trained in both.


def test_frozen_run_has_optimizer_state_for_the_head_only(study):
    _, directory, _, _, _ = study
    state = lambda mode: restore.restore(directory / mode, "latest", optimizer_state=True)
    frozen, full = state("frozen"), state("full")
    head = _count(frozen.params["Dense_1"])
    # Adam keeps two moments (+ counters and swept values) per trained parameter.
    assert 2 * head <= _count(frozen.opt_state) <= 2 * head + 8
    assert _count(full.opt_state) >= 2 * _count(full.params)


def test_the_runs_log_loaded_reinitialised_and_frozen_leaves(study):
    *_, logs = study
    (line,) = [m for m in logs if m.startswith("init from") and "frozen ['Conv_0" in m]
    assert "loaded ['Conv_0/bias', 'Conv_0/kernel', 'Dense_0/bias', 'Dense_0/kernel']" in line
    assert "re-initialised ['Dense_1/bias', 'Dense_1/kernel']" in line
    assert "frozen ['Conv_0/bias', 'Conv_0/kernel', 'Dense_0/bias', 'Dense_0/kernel']" in line


def test_transfer_study_report_and_rerun(study):
    config, directory, summary, _, _ = study
    assert [s["mode"] for s in summary] == ["pretrain", "frozen", "full"]
    rows = report.read_csv(directory / "results.csv")
    assert [(r["mode"], r["seed"]) for r in rows] == [("pretrain", "0"), ("frozen", "0"),
                                                      ("full", "0")]  # fmt: skip
    text = (directory / "summary.md").read_text()
    assert "| frozen | 0 | 1 |" in text and "optimizer state starts fresh" in text
    assert (directory / "training_loss.png").read_bytes()[:4] == b"\x89PNG"
    # A rerun reuses every finished group, the pretrained one included.
    assert studies.run_study("transfer", config, directory) == summary


def test_a_pretraining_with_other_settings_is_refused_and_kept(study):
    config, directory, _, _, _ = study
    before = sorted(p.name for p in (directory / "pretrain").iterdir())
    changed = config.copy_and_resolve_references()
    changed.study.pretrain_learning_rate = 3e-2  # Same step count, another network.
    with pytest.raises(run_io.ConfigMismatchError, match="learning_rate"):
        studies.run_study("transfer", changed, directory)
    assert sorted(p.name for p in (directory / "pretrain").iterdir()) == before
    with pytest.raises(ValueError, match="mode='linear_probe' is unknown; allowed: frozen, full"):
        changed.study.modes = ("linear_probe",)
        studies.run_study("transfer", changed, directory)


def test_mnist_to_fashion_mnist_config_on_mock_data(tmp_path, monkeypatch):
    # orbax removes unfinished saves in a background thread started with each checkpointer;
    # mock_data patches the file system (epath) globally while it builds a dataset, so that
    # thread can look for the checkpoints under the mock's fake root and fail. Off here.
    manager_options = checkpoint._manager_options
    monkeypatch.setattr(checkpoint, "_manager_options", lambda *args: dataclasses.replace(
        manager_options(*args), cleanup_tmp_directories=False))  # fmt: skip
    config = _tiny("transfer_mnist_fashion")
    assert (config.data.name, config.study.pretrain_data.name) == ("fashion_mnist", "mnist")
    config.runs.seeds = (0, 1)
    config.study.modes = ("frozen",)  # Pretrain, then the mode that uses all of `init`.
    config.data.download = True  # As users pass it; under mock_data nothing is fetched.
    config.train.update(num_steps=2, batch_size=16, eval_batch_size=16)
    with tfds.testing.mock_data(num_examples=64):  # Restoring reads the dataset's info too.
        summary = studies.run_study("transfer", config, tmp_path)
        pretrained = restore.restore(tmp_path / "pretrain", "latest").params
        frozen = restore.restore(tmp_path / "frozen", "latest").params  # [1, 2 seeds, ...]
    assert [(s["mode"], s["n"]) for s in summary] == [("pretrain", 1), ("frozen", 2)]
    rows = report.read_csv(tmp_path / "results.csv")
    assert {r["steps"] for r in rows} == {"2"}
    for name in ("Conv_0", "Dense_0"):  # Every seed starts from, and keeps, the backbone.
        for seed in range(2):
            layer = jax.tree.map(lambda x, s=seed: x[0, s], frozen[name])
            assert _tree_equal(layer, pretrained[name])
