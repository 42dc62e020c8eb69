"""Transfer learning: orbax round trip of the pretrained net, head surgery, freezing, the report."""

import pathlib

import jax
import ml_collections
import numpy as np
import pytest

from adamlab import baselines, data
from adamlab.config_dict import load_config_file
from adamlab.experiments import report, transfer

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"

BACKBONE = ("Conv_0", "Dense_0")  # The tiny CNN below: one conv block, dense, then Dense_1.


def _tree_equal(a, b) -> bool:
    same = jax.tree.map(lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)), a, b)
    return all(jax.tree.leaves(same))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Pretrains a tiny CNN on classes 0-4 (saved), then fine-tunes on 5-7 frozen and full."""
    config = load_config_file(CONFIGS / "transfer_digits.py")
    config.model = ml_collections.ConfigDict(
        {"name": "cnn", "features": (4,), "dense_features": 8, "dropout_rate": 0.0}
    )
    config.data.classes = (5, 6, 7)  # 3 target classes: the new head differs from the old (5).
    config.pretrain_epochs = 4
    config.num_epochs = 1
    config.seeds = (0,)
    directory = tmp_path_factory.mktemp("transfer")
    pretrained, source = transfer.pretrain(config, directory / "pretrain_checkpoint")
    runs = {
        mode: transfer.finetune(config, pretrained, mode, seed=0) for mode in ("frozen", "full")
    }
    return config, directory, pretrained, source, runs


def test_restored_backbone_equals_the_pretrained_one(setup):
    config, directory, pretrained, source, _ = setup
    assert source is not None and _tree_equal(pretrained, source.params)
    restored = transfer.restore_params(config, directory / "pretrain_checkpoint")
    assert _tree_equal(restored, pretrained)
    assert source.metrics["test_accuracy"] > 0.6  # 5 classes (chance 0.2), 4 epochs.


def test_new_head_has_the_target_classes_and_the_pretrained_backbone(setup):
    config, _, pretrained, _, _ = setup
    info = data.dataset_info(config.data)
    model = baselines.create_model(config.model, info.num_classes)
    params = transfer.transfer_params(pretrained, model, info.image_shape, seed=1)
    assert transfer.head_name(params) == "Dense_1"
    assert pretrained["Dense_1"]["kernel"].shape == (8, 5)
    assert params["Dense_1"]["kernel"].shape == (8, 3)
    assert params["Dense_1"]["bias"].shape == (3,)
    assert _tree_equal({k: params[k] for k in BACKBONE}, {k: pretrained[k] for k in BACKBONE})


def test_frozen_backbone_is_bitwise_unchanged_and_full_changes_it(setup):
    _, _, pretrained, _, runs = setup
    frozen, full = runs["frozen"].params, runs["full"].params
    for name in BACKBONE:
        assert _tree_equal(frozen[name], pretrained[name]), name
        assert not _tree_equal(full[name], pretrained[name]), name
    assert not _tree_equal(frozen["Dense_1"], full["Dense_1"])  # The head trained in both.


def test_frozen_optimizer_has_no_state_for_the_backbone(setup):
    _, _, pretrained, _, _ = setup
    params = dict(pretrained)
    frozen = transfer.finetune_tx(1e-2, params, "frozen")
    full = transfer.finetune_tx(1e-2, params, "full")
    count = lambda tree: sum(np.size(x) for x in jax.tree.leaves(tree))
    head = count(params["Dense_1"])
    # Adam keeps two moments (+ counters) per trained parameter: only the head's in "frozen".
    assert 2 * head <= count(frozen.init(params)) <= 2 * head + 4
    assert count(full.init(params)) >= 2 * count(params)
    with pytest.raises(ValueError, match="mode='linear_probe' is unknown; allowed: frozen, full"):
        transfer.finetune_tx(1e-2, params, "linear_probe")
    with pytest.raises(ValueError, match="no Dense layer among"):
        transfer.head_name({"Conv_0": {}})


def test_transfer_study_report_reuses_the_pretrained_checkpoint(setup):
    config, directory, _, _, _ = setup
    config = ml_collections.ConfigDict(config.to_dict())
    config.modes = ("frozen", "scratch")
    summary = transfer.transfer_study(config, directory)
    assert [s["mode"] for s in summary] == ["frozen", "scratch"]
    rows = report.read_csv(directory / "results.csv")
    assert [(r["mode"], r["seed"]) for r in rows] == [("frozen", "0"), ("scratch", "0")]
    text = (directory / "summary.md").read_text()
    assert "(reused from its checkpoint)" in text and "| frozen | 0 | 1 |" in text
    assert (directory / "training_loss.png").read_bytes()[:4] == b"\x89PNG"


def test_a_pretraining_with_other_settings_is_refused_and_kept(setup):
    config, directory, _, _, _ = setup
    checkpoint = directory / "pretrain_checkpoint"
    before = sorted(p.name for p in checkpoint.iterdir())
    changed = ml_collections.ConfigDict(config.to_dict())
    changed.pretrain_learning_rate = 3e-2  # Same step count, another network.
    with pytest.raises(ValueError, match=r"other settings \(pretrain_learning_rate differ\)"):
        transfer.pretrain(changed, checkpoint)
    assert sorted(p.name for p in checkpoint.iterdir()) == before
