"""Every shipped config is valid and trains: digits for real, the others on TFDS mock data; and
the configs ship inside the package, selectable by name from any directory.

Users of mnist/fashion_mnist/cifar10 download their data on their machines; here
`tfds.testing.mock_data` stands in (random images, nothing touches the network), so a config
that refers to a missing field, a bad value or a model that does not fit its images fails in CI
rather than after a user's download. Each run is cut to 2 steps on small batches: the model,
optimizer, schedule and data settings are the config's own.

The default suite checks every config without training (validated, built, its model traced on
its images) and trains digits and mnist; `pytest -m slow` trains every config (CIFAR-10's
ResNet-20 alone takes a minute on 2 cores: mostly set-up and compilation). fashion_mnist's
pipeline and its CNN train in the default suite through tests/test_transfer.py's MNIST ->
Fashion-MNIST run on mock data, so its own 2-step run is in the slow set.
"""

import contextlib
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest
import tensorflow_datasets as tfds

from adamlab import cli, config_dict
from adamlab.training import experiment, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
# One config per dataset (`adamlab train --config ...`); they say how to run them.
DATASET_CONFIGS = ("digits", "mnist", "fashion_mnist", "cifar10")
TRAINED_BY_DEFAULT = ("digits", "mnist")
NEEDS_DOWNLOAD = {"mnist", "fashion_mnist", "cifar10"}
SHIPPED = config_dict.shipped_configs()


def shortened(config):
    """The same config, cut to 2 steps on batches of 16 and its first seed so that it runs in
    seconds."""
    config.train.num_steps = 2
    config.train.batch_size = 16
    config.train.eval_batch_size = 16
    config.train.log_every_steps = 1
    config.train.eval_every_steps = 2
    config.train.checkpoint_every_steps = 2
    config.train.progress_bar = False
    if config.optimizer.schedule == "warmup_cosine":
        config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, 1)
    if config.runs.seeds:
        config.runs.seeds = tuple(config.runs.seeds)[:1]
    return config


def test_shipped_configs_are_the_configs_directory():
    on_disk = sorted(p.stem for p in (ROOT / "configs").glob("*.py") if p.stem != "__init__")
    assert list(SHIPPED) == on_disk
    assert set(DATASET_CONFIGS) <= set(SHIPPED)


def test_every_dataset_has_its_config():
    names = [config_dict.load_config(name).data.name for name in DATASET_CONFIGS]
    assert names == list(DATASET_CONFIGS)


@pytest.mark.parametrize("name", DATASET_CONFIGS)
def test_dataset_config_says_how_to_run_it_and_what_to_expect(name):
    module_text = config_dict.resolve_config_path(name).read_text()
    assert "adamlab train --config configs/" in module_text
    assert "Expected:" in module_text


def _data(config):
    """Mock data for the datasets users download (nothing is fetched), else nothing."""
    if config.data.name not in NEEDS_DOWNLOAD:
        return contextlib.nullcontext()
    config.data.download = True  # As users pass it; under mock_data nothing is fetched.
    return tfds.testing.mock_data(num_examples=64)


@pytest.mark.parametrize("name", SHIPPED)
def test_config_is_valid_and_its_model_fits_its_images(name):
    """Every shipped config, the studies' included (a study is a config plus a report): valid,
    built, and every member's state traced on the dataset's images (no compile, no data)."""
    config = shortened(config_dict.load_config(name))
    with _data(config):
        assert train.validate_config(config) == 2
        built = experiment.build_experiment(config)
        carry = experiment.abstract_members(built)
    assert len(carry.states) == len(built.who.implementations)
    assert carry.alive.shape == (*built.who.grid, len(built.who.implementations))


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=() if n in TRAINED_BY_DEFAULT else pytest.mark.slow) for n in SHIPPED],
)
def test_config_trains(name, tmp_path):
    """Every shipped config trains 2 steps through the one loop (the studies' `study` sections
    are read by their studies only); see the module docstring for which run by default."""
    config = shortened(config_dict.load_config(name))
    with _data(config):
        result = train.run(config, tmp_path / "run")
    assert result.step == 2 and not result.interrupted
    for row in result.rows:
        assert row["finite"] and 0.0 <= row["test_accuracy"] <= 1.0


def test_a_config_is_found_by_name_from_any_directory(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    path = config_dict.resolve_config_path("digits")
    assert path.is_file() and path.samefile(ROOT / "configs" / "digits.py")
    assert config_dict.resolve_config_path("digits.py").samefile(path)
    fv = cli.parse_flags("train", ["--config", "digits", "--config.train.num_steps=3"])
    assert fv["config"].value.train.num_steps == 3
    assert fv["config"].value.data.name == "digits"
    with pytest.raises(
        FileNotFoundError, match="shipped: bench_cifar10_resnet, .* cifar10, compare_digits, digits"
    ):
        config_dict.resolve_config_path("digitz")


def test_the_wheel_ships_every_config(tmp_path):
    """`pip install adamlab` (not a clone) gets `adamlab/configs/*.py` and the kernel sources:
    built offline from a copy of the sources (the build writes build/ and *.egg-info next to
    them)."""
    pytest.importorskip(
        "setuptools",
        minversion="77",
        reason="the wheel build needs setuptools >= 77 (PEP 639 license) in the venv",
    )
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("adamlab", "configs"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("adamlab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"adamlab/configs/{p.name}" for p in (ROOT / "configs").glob("*.py")}
    assert "adamlab/configs/digits.py" in expected
    assert expected <= names, sorted(expected - names)
    assert "adamlab/cli.py" in names and "adamlab/training/train.py" in names
    # the C++ kernel source, which adamlab.optim.native builds on the user's machine
    assert "adamlab/optim/kernels/adam_one_pass.cc" in names
