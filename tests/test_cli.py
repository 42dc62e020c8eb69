"""The `adamlab` command line: parsing, overrides, errors, and SIGTERM in a real subprocess."""

import datetime
import importlib
import inspect
import json
import logging
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

from adamlab import cli, config_dict
from adamlab.training import run_io

ROOT = pathlib.Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs" / "digits.py")
# A tiny, fast model and frequent checkpoints for the subprocess runs.
TINY = [
    "--config.model.features=(8,)",
    "--config.model.dense_features=16",
    "--config.optimizer.schedule=constant",
    "--config.optimizer.warmup_steps=0",
    "--config.train.batch_size=32",
    "--config.train.eval_batch_size=128",
    "--config.train.log_every_steps=10",
    "--config.train.eval_every_steps=20",
    "--config.train.checkpoint_every_steps=20",
]


def test_overrides_are_applied_to_the_config_file():
    fv = cli.parse_flags(
        "train",
        [
            f"--config={DIGITS}",
            "--workdir=/tmp/x",
            "--config.optimizer.name=adamw",
            "--config.optimizer.learning_rate=3e-3",
            "--config.optimizer.weight_decay=1e-4",
            "--config.train.num_steps=7",
            "--config.model.features=(16, 32)",
        ],
    )
    config = fv["config"].value
    assert config.optimizer.name == "adamw"
    assert config.optimizer.learning_rate == 3e-3
    assert config.optimizer.weight_decay == 1e-4  # A None placeholder takes a float.
    assert config.train.num_steps == 7
    assert tuple(config.model.features) == (16, 32)
    assert config.optimizer.b1 is None  # Untouched fields keep the file's values.
    assert fv["workdir"].value == "/tmp/x"


def test_the_default_config_is_digits():
    config = cli.parse_flags("train", [])["config"].value
    assert config.to_dict() == config_dict.load_config_file(DIGITS).to_dict()


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--config.optimizer.nme=adamw"], 'Did you mean "name"'),
        (["train", "--config.train.batch_size=abc"], "batch_size"),
        (["train", "--config=missing.py"], "missing.py"),
        (["train", "--bogus=1"], "bogus"),
        (["evaluate"], "--workdir"),
        (["evaluate", "--workdir=/tmp", "--split=dev"], "<test|validation|train>"),
        (["fit"], "commands: train, evaluate"),
    ],
)
def test_bad_command_lines_exit_2_with_a_message(capsys, args, message):
    assert cli.main(["adamlab", *args]) == cli.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_invalid_config_value_exits_2_before_creating_the_workdir(capsys, tmp_path):
    workdir = tmp_path / "run"
    args = ["adamlab", "train", f"--workdir={workdir}", "--config.train.engine=tpu"]
    assert cli.main(args) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "train.engine='tpu'" in err and "jit, pmap" in err
    assert not workdir.exists()


_LOGS_INFO = """
import dataclasses, json, logging, sys
from adamlab import cli

def fake_run(fv):  # In place of the benchmark; its flags (defined first) import orbax.
    logging.info("a stage logged this")
    return cli.EXIT_OK

real = cli.COMMANDS["benchmark"]
cli.COMMANDS["benchmark"] = dataclasses.replace(real, run=fake_run)
code = cli.main(["adamlab", "benchmark", "--workloads=digits_cnn", "--workdir=" + sys.argv[1]])
root = logging.getLogger()
report = {"code": code, "level": root.level, "handlers": len(root.handlers)}
print(json.dumps({**report, "orbax imported": "orbax.checkpoint" in sys.modules}))
"""


def test_the_command_logs_at_info_whatever_its_flags_imported(tmp_path):
    """Logging is set up before the flags are defined: the benchmark command's imports (orbax)
    once left a WARNING-level root handler first, and every INFO line (progress, phases) of
    `adamlab benchmark` was dropped. A fresh process, since pytest owns this one's logging."""
    done = subprocess.run(
        [sys.executable, "-c", _LOGS_INFO, str(tmp_path / "bench")],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {
        "code": cli.EXIT_OK, "level": logging.INFO, "handlers": 1, "orbax imported": True
    }  # fmt: skip
    assert " INFO a stage logged this" in done.stderr


def test_commands_keep_freed_memory_before_they_run(capsys, tmp_path, monkeypatch):
    from adamlab import runtime

    calls = []
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: calls.append("kept") or True)
    args = ["adamlab", "evaluate", f"--workdir={tmp_path / 'none'}"]
    assert cli.main(args) == cli.EXIT_USAGE  # No run there: the command ran, and refused.
    assert calls == ["kept"]
    assert "none" in capsys.readouterr().err
    calls.clear()
    args = ["adamlab", "train", f"--workdir={tmp_path / 'run'}", "--config.train.engine=tpu"]
    assert cli.main(args) == cli.EXIT_USAGE  # Refused by the command's config validation.
    assert calls == ["kept"]
    assert cli.main(["adamlab", "--help"]) == cli.EXIT_OK  # Help and usage run nothing.
    assert calls == ["kept"]


def _train(capsys, tmp_path, *overrides):
    """`adamlab train` of 2 steps in this process; returns (exit code, stdout, stderr)."""
    args = ["adamlab", "train", "--config", "digits", f"--workdir={tmp_path / 'run'}", *TINY]
    args += ["--config.train.num_steps=2", "--config.train.progress_bar=False", *overrides]
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_an_mlp_with_sgd_momentum_trains_from_the_command_line(capsys, tmp_path):
    code, out, err = _train(
        capsys, tmp_path,
        "--config.model.name=mlp", "--config.model.hidden=(32,)",
        "--config.optimizer.name=sgd", "--config.optimizer.implementation=optax",
        "--config.optimizer.momentum=0.9",
    )  # fmt: skip
    assert code == cli.EXIT_OK, err
    result = json.loads(out)
    assert result["step"] == 2 and 0.0 <= result["test_accuracy"] <= 1.0
    saved = run_io.read_config(tmp_path / "run")
    assert (saved.model.name, saved.optimizer.name, saved.optimizer.momentum) == ("mlp", "sgd", 0.9)


def test_logreg_with_best_metric_none_trains_without_a_validation_split(capsys, tmp_path):
    """`--config.train.best_metric=None` sets None (not the string 'None'), which a run without
    validation split needs; and logistic regression trains from the command line."""
    fv = cli.parse_flags("train", ["--config=digits", "--config.train.best_metric=None"])
    assert cli._config(fv).train.best_metric is None
    code, out, err = _train(
        capsys, tmp_path, "--config.model.name=logreg", "--config.train.best_metric=None",
        "--config.data.validation_fraction=0",
    )  # fmt: skip
    assert code == cli.EXIT_OK, err
    result = json.loads(out)
    assert result["step"] == 2 and "validation_accuracy" not in result
    saved = run_io.read_config(tmp_path / "run")
    assert saved.train.best_metric is None and saved.model.name == "logreg"


@pytest.mark.parametrize(
    "override,message",
    [
        ("--config.optimizer.momentum=fast", "momentum"),  # Does not parse as a float.
        ("--config.model.hidden=(32,0)", "model.hidden="),  # Parses; refused by the check.
        ("--config.optimizer.name=sgd", "set optimizer.implementation='optax'"),
        ("--config.model.name=mlpx", "model.name='mlpx'"),
    ],
)
def test_a_bad_field_value_exits_2_naming_the_field(capsys, tmp_path, override, message):
    code, _, err = _train(capsys, tmp_path, override)
    assert code == cli.EXIT_USAGE
    assert message in err
    assert not (tmp_path / "run").exists()


def test_help_lists_commands_and_flags(capsys):
    assert cli.main(["adamlab", "--help"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "train" in out and "evaluate" in out
    assert cli.main(["adamlab", "evaluate", "--help"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "--checkpoint" in out and "--split" in out


def test_default_workdir_names_config_and_time():
    # Changed: default_workdir takes the config's name (the CLI passes the file's stem).
    now = datetime.datetime(2025, 1, 2, 3, 4, 5)
    assert cli.default_workdir("mnist", now) == "runs/mnist-20250102-030405"
    fv = cli.parse_flags("train", ["--config", "mnist"])
    assert cli._workdir(fv).startswith("runs/mnist-")
    fv = cli.parse_flags("compare", [])
    assert cli._workdir(fv, "compare-").startswith("runs/compare-compare_digits-")


def test_python_dash_m_adamlab_runs_the_cli():
    result = subprocess.run(
        [sys.executable, "-m", "adamlab", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0 and "evaluate" in result.stdout


@pytest.mark.parametrize(
    "script",
    # Each script is a thin wrapper of its command; one by default (each costs a Python start
    # with jax and TF, ~6 s), every one with `-m slow`.
    [
        s if s == "compare.py" else pytest.param(s, marks=pytest.mark.slow)
        for s in sorted(p.name for p in (ROOT / "experiments").glob("*.py"))
    ],
    ids=str,
)
def test_experiment_scripts_run_their_command_and_exit_with_its_code(script):
    result = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / script), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == cli.EXIT_OK, result.stderr
    assert result.stdout.startswith("usage: adamlab "), result.stdout[:200]


def test_every_command_names_the_library_module_its_run_imports():
    # main imports `module` before run (the command keeps the collector off those imports):
    # it must be what run works with, or the imports happen after the collector is back on.
    for name, command in cli.COMMANDS.items():
        package, _, module = command.module.rpartition(".")
        imported = [
            line.split(" import ", 1)[1].split("#")[0].replace(",", " ").split()
            for line in inspect.getsource(command.run).splitlines()
            if line.strip().startswith(f"from {package} import ")
        ]
        assert any(module in names for names in imported), (name, command.module)
        assert importlib.import_module(command.module).__name__ == command.module


def _wait_for(predicate, timeout, process):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            raise AssertionError(f"training exited early:\n{process.communicate()[1][-3000:]}")
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"timed out after {timeout}s")


def test_sigterm_saves_a_checkpoint_exits_75_and_the_run_resumes(tmp_path, capsys):
    """Preemption: SIGTERM after the first checkpoint; the run stops cleanly and resumes."""
    workdir = tmp_path / "run"
    args = [
        f"--config={DIGITS}",
        f"--workdir={workdir}",
        "--config.optimizer.name=adamw",
        "--config.train.num_steps=100000",
        *TINY,
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "adamlab", "train", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: (workdir / "checkpoints" / "20").is_dir(), 120, process)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == cli.EXIT_INTERRUPTED, stderr[-3000:]
    assert "SIGTERM received" in stderr

    # The override reached the run's config.json.
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["optimizer"]["name"] == "adamw"
    # A checkpoint at the step where training stopped; no record beyond the last log point
    # (the train metrics since then travel in the checkpoint, as an uninterrupted run has them).
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    stopped = int(re.search(r"stopped at step (\d+)/100000", stderr).group(1))
    assert steps[-1] == stopped >= 20
    logged = [r["step"] for r in run_io.read_metrics(workdir, "train")]
    assert logged[-1] == stopped - stopped % 10 and all(s % 10 == 0 for s in logged[1:])

    # Running the same command again resumes it (here shortened to end 4 steps later).
    resume = [a for a in args if "num_steps" not in a] + [f"--config.train.num_steps={stopped + 4}"]
    assert cli.main(["adamlab", "train", *resume]) == cli.EXIT_OK
    result = json.loads(capsys.readouterr().out)
    assert result["step"] == stopped + 4 and not result["interrupted"]
    train_steps = [r["step"] for r in run_io.read_metrics(workdir, "train")]
    # The resumed run logs at the log points (every 10) and at its end, as an uninterrupted one.
    assert train_steps[: len(logged)] == logged, train_steps
    resumed = train_steps[len(logged) :]
    assert resumed[-1] == stopped + 4 and all(s % 10 == 0 for s in resumed[:-1]), train_steps
    # A different optimizer in the same workdir is refused.
    other = [a.replace("adamw", "nadam") for a in resume]
    assert cli.main(["adamlab", "train", *other]) == cli.EXIT_USAGE
    assert "optimizer.name: 'adamw' (saved) != 'nadam' (given)" in capsys.readouterr().err


def test_every_optimizers_hyperparameters_are_settable_from_the_command_line():
    """The configs declare every numeric or boolean hyperparameter of the optimizer table (None:
    the optimizer's default), so a new optimizer needs no config edited to be tuned by flags."""
    from adamlab.optim import registry

    fields = registry.config_fields()
    assert {"b1", "b2", "eps", "weight_decay", "ns_steps", "beta", "b3", "b3_warmup"} <= set(fields)
    assert (fields["ns_steps"], fields["b3_warmup"], fields["use_clipping"]) == (int, int, bool)
    fv = cli.parse_flags(
        "train",
        ["--config=digits", "--config.optimizer.name=muon", "--config.optimizer.ns_steps=3",
         "--config.optimizer.beta=0.9"],
    )  # fmt: skip
    optimizer = fv["config"].value.optimizer
    assert (optimizer.name, optimizer.ns_steps, optimizer.beta) == ("muon", 3, 0.9)
    assert all(optimizer[f] is None for f in ("b1", "b2", "eps", "decay", "adam_b1"))
